//! A client's request body on HTTP/1.1: the connection reads and decodes it when the
//! request's consumer asks for more, and hands each piece over through a one-frame
//! slot. The consumer may live in another task (a pump to an HTTP/2 backend), so the
//! slot is shared; nothing is read ahead of what the consumer asked for.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::l7::h1::{decode, Framing};
use crate::l7::request_body::BoxError;

type Item = Result<Frame<Bytes>, BoxError>;

#[derive(Default)]
struct State {
    /// The next piece, waiting for the consumer.
    frame: Option<Item>,
    /// No piece follows `frame`.
    end: bool,
    /// The consumer waits for a piece.
    want: bool,
    /// The consumer dropped its end.
    gone: bool,
    consumer: Option<Waker>,
    server: Option<Waker>,
}

#[derive(Default)]
struct Slot(Mutex<State>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

fn register(at: &mut Option<Waker>, cx: &Context<'_>) {
    match at {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *at = Some(cx.waker().clone()),
    }
}

/// The consumer's end: the request's body.
pub struct H1Body {
    slot: Option<Arc<Slot>>,
    /// Bytes still to come when the length is known.
    left: Option<u64>,
}

impl H1Body {
    /// A request without a body.
    pub(super) fn empty() -> H1Body {
        H1Body {
            slot: None,
            left: Some(0),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            let mut s = slot.lock();
            s.gone = true;
            wake(&mut s.server);
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = &mut *self;
        let Some(slot) = &this.slot else {
            return Poll::Ready(None);
        };
        let mut s = slot.lock();
        if let Some(item) = s.frame.take() {
            wake(&mut s.server);
            if let (Ok(frame), Some(left)) = (&item, this.left.as_mut()) {
                if let Some(d) = frame.data_ref() {
                    *left = left.saturating_sub(d.len() as u64);
                }
            }
            return Poll::Ready(Some(item));
        }
        if s.end {
            drop(s);
            this.slot = None;
            this.left = Some(0);
            return Poll::Ready(None);
        }
        s.want = true;
        register(&mut s.consumer, cx);
        wake(&mut s.server);
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The connection's end: reads and decodes the body as the consumer asks.
pub(super) struct Feeder {
    slot: Option<Arc<Slot>>,
    framing: Framing,
    /// What is still to be sent of `100 Continue` before the body is first read
    /// (empty once sent, or when the client expects nothing).
    continuing: &'static [u8],
    /// The body failed (malformed, cut short): the connection cannot carry another
    /// request.
    pub(super) failed: bool,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Feeder {
    /// The two ends of a body framed by `framing`.
    pub(super) fn new(framing: Framing, expect: bool) -> (Feeder, H1Body) {
        if framing == Framing::Done {
            let feeder = Feeder {
                slot: None,
                framing,
                continuing: b"",
                failed: false,
            };
            return (feeder, H1Body::empty());
        }
        let slot = Arc::new(Slot::default());
        let left = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        let body = H1Body {
            slot: Some(slot.clone()),
            left,
        };
        let feeder = Feeder {
            slot: Some(slot),
            framing,
            continuing: if expect { CONTINUE } else { b"" },
            failed: false,
        };
        (feeder, body)
    }

    /// The whole body has been read from the connection.
    pub(super) fn complete(&self) -> bool {
        self.framing == Framing::Done && !self.failed
    }

    /// Before the response's head: when the request's consumer has already let go of
    /// a body it did not read whole, settles it as [`Feeder::finish`] does; false
    /// when the connection cannot carry another request. True while the consumer
    /// still reads (a backend may answer before it has the whole upload).
    pub(super) fn settle_abandoned(&mut self, buf: &mut BytesMut) -> bool {
        match &self.slot {
            Some(slot) if Arc::strong_count(slot) == 1 => self.finish(buf),
            _ => !self.failed,
        }
    }

    /// After the response: what is left of an unread body is discarded if it is
    /// already in `buf` whole; true when the connection can carry another request.
    pub(super) fn finish(&mut self, buf: &mut BytesMut) -> bool {
        self.slot = None;
        if self.failed || !self.continuing.is_empty() {
            // A client told to wait for `100 Continue` that never came may send its
            // body anyway, or not: the connection's next bytes are unknown.
            return self.framing == Framing::Done && !self.failed;
        }
        while self.framing != Framing::Done {
            match decode(&mut self.framing, buf) {
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
        true
    }

    /// Hands the consumer its next piece if it waits for one: reads from `io` as
    /// needed. Ready(true): a piece (or the end) was handed over.
    pub(super) fn poll<S>(
        &mut self,
        io: &mut S,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<bool>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(slot) = self.slot.clone() else {
            return Poll::Pending;
        };
        let mut s = slot.lock();
        register(&mut s.server, cx);
        if s.gone {
            drop(s);
            self.slot = None;
            return Poll::Pending;
        }
        if !s.want || s.frame.is_some() || s.end {
            return Poll::Pending;
        }
        if !self.continuing.is_empty() {
            // Sent once, when the body is first asked for (and only then: a request
            // answered without its body never makes the client send it).
            match super::poll_write_all(io, &mut self.continuing, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return self.fail(&mut s, Box::new(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        loop {
            match decode(&mut self.framing, buf) {
                Some(Ok(Some(frame))) => {
                    s.frame = Some(Ok(frame));
                    if self.framing == Framing::Done {
                        s.end = true;
                    }
                    s.want = false;
                    wake(&mut s.consumer);
                    return Poll::Ready(true);
                }
                Some(Ok(None)) => {
                    s.end = true;
                    s.want = false;
                    wake(&mut s.consumer);
                    return Poll::Ready(true);
                }
                Some(Err(why)) => return self.fail(&mut s, why.into()),
                None => {}
            }
            if buf.len() >= crate::l7::h1::MAX_HEAD {
                return self.fail(&mut s, "request body framing too long".into());
            }
            match crate::l7::h1::poll_fill(io, buf, crate::l7::h1::READ_SIZE, cx) {
                Poll::Ready(Ok(0)) => {
                    return self.fail(&mut s, "client closed the connection mid-body".into())
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return self.fail(&mut s, Box::new(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn fail(&mut self, s: &mut State, e: BoxError) -> Poll<bool> {
        self.failed = true;
        self.framing = Framing::Done;
        s.frame = Some(Err(e));
        s.end = true;
        s.want = false;
        wake(&mut s.consumer);
        Poll::Ready(true)
    }
}
