//! A client connection as the accept loop hands it on: registered with the event loop
//! only once something on it would block.
//!
//! Most short connections never wait on their client: the request is there when the
//! connection is accepted, the response fits the socket buffer, and the connection
//! closes. Registering such a socket with epoll, and removing it at the close, would
//! be two system calls (and a readiness event) for nothing. Until a read, peek or
//! write finds the socket not ready, each one is a plain non-blocking system call;
//! the first that would block registers the socket, and from then on it is an
//! ordinary `tokio::net::TcpStream`.
//!
//! The wait for a connection's first bytes reads them ([`ClientSocket::poll_first`])
//! rather than peeking: they are kept, and handed out again by the next reads before
//! the socket is read. Peeking and then reading would be two system calls for them.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::activity::{ReadReady, Readable};

/// See the module's documentation.
pub(crate) struct ClientSocket(State, Option<Box<Ahead>>);

/// Bytes read from the socket ahead of its reader, handed out before the socket is
/// read again.
struct Ahead {
    at: usize,
    bytes: Box<[u8]>,
}

/// The most a connection's first read takes: what the HTTP/1 engine reads at once.
const FIRST_READ: usize = 4096;

enum State {
    /// Not registered: non-blocking system calls on the socket.
    Raw(std::net::TcpStream),
    /// Registered with the event loop.
    Polled(TcpStream),
    /// Registering failed; every operation fails.
    Failed,
}

/// The operation would block, or a signal interrupted it: the socket must be waited
/// on.
fn must_wait(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn failed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "socket could not be registered",
    )
}

/// `recv` into the unfilled part of `buf`, with `flags`.
fn recv(
    socket: &std::net::TcpStream,
    buf: &mut ReadBuf<'_>,
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: recv only writes to the bytes (it never de-initializes them).
    let unfilled = unsafe { buf.unfilled_mut() };
    // SAFETY: an open socket, and a buffer of `unfilled.len()` writable bytes; recv
    // writes at most that many and says how many.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            unfilled.as_mut_ptr().cast(),
            unfilled.len(),
            flags,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: recv wrote the first `n` bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

impl ClientSocket {
    /// A socket accepted non-blocking, not registered.
    pub(crate) fn new(socket: std::net::TcpStream) -> ClientSocket {
        ClientSocket(State::Raw(socket), None)
    }

    /// The registered socket, registering it first if it is not: for what needs one
    /// (the PROXY header reader), and for every operation that would block.
    pub(crate) fn polled(&mut self) -> io::Result<&mut TcpStream> {
        self.0 = match std::mem::replace(&mut self.0, State::Failed) {
            State::Raw(raw) => State::Polled(TcpStream::from_std(raw)?),
            other => other,
        };
        match &mut self.0 {
            State::Polled(s) => Ok(s),
            _ => Err(failed()),
        }
    }

    /// As [`ClientSocket::polled`], owned (layer 4: nothing was read ahead).
    pub(crate) fn into_polled(mut self) -> io::Result<TcpStream> {
        debug_assert!(self.1.is_none(), "bytes read ahead would be lost");
        self.polled()?;
        match self.0 {
            State::Polled(s) => Ok(s),
            _ => Err(failed()),
        }
    }

    /// Tries `raw` on an unregistered socket; when it would block (or the socket is
    /// registered already), `polled` on the registered socket.
    fn poll_either<T>(
        &mut self,
        raw: impl FnOnce(&std::net::TcpStream) -> io::Result<T>,
        polled: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let State::Raw(s) = &self.0 {
            match raw(s) {
                Err(e) if must_wait(&e) => {}
                r => return Poll::Ready(r),
            }
        }
        match self.polled() {
            Ok(s) => polled(Pin::new(s)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    pub(crate) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match &self.0 {
            State::Raw(s) => s.set_nodelay(on),
            State::Polled(s) => s.set_nodelay(on),
            State::Failed => Err(failed()),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.0 {
            State::Raw(s) => s.local_addr(),
            State::Polled(s) => s.local_addr(),
            State::Failed => Err(failed()),
        }
    }

    /// One write, never a wait.
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match &self.0 {
            State::Raw(s) => {
                let mut s: &std::net::TcpStream = s;
                s.write(buf)
            }
            State::Polled(s) => s.try_write(buf),
            State::Failed => Err(failed()),
        }
    }

    /// Waits for the client's first bytes and reads them (at most [`FIRST_READ`]):
    /// kept, and handed out again by the next reads. Empty at the client's end.
    pub(crate) fn poll_first(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        if self.1.is_none() {
            // On the stack only while the read runs: a waiting connection's future
            // keeps no room for it.
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
            let mut buf = ReadBuf::uninit(&mut stack);
            std::task::ready!(self.poll_read_socket(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(&[]));
            }
            self.1 = Some(Box::new(Ahead {
                at: 0,
                bytes: buf.filled().into(),
            }));
        }
        Poll::Ready(Ok(self.ahead()))
    }

    /// The bytes read ahead and not handed out yet.
    pub(crate) fn ahead(&self) -> &[u8] {
        match &self.1 {
            Some(a) => &a.bytes[a.at..],
            None => &[],
        }
    }

    /// A read from the socket itself.
    fn poll_read_socket(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let State::Raw(s) = &self.0 {
            match recv(s, buf, 0) {
                Err(e) if must_wait(&e) => {}
                r => return Poll::Ready(r.map(drop)),
            }
        }
        match self.polled() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(ahead) = &mut this.1 {
            let rest = &ahead.bytes[ahead.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            ahead.at += n;
            if ahead.at == ahead.bytes.len() {
                this.1 = None;
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_read_socket(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_either(|mut s| s.write(buf), |s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_either(
            |mut s| s.write_vectored(bufs),
            |s| s.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            State::Raw(s) => Poll::Ready(s.shutdown(Shutdown::Write)),
            State::Polled(s) => Pin::new(s).poll_shutdown(cx),
            State::Failed => Poll::Ready(Err(failed())),
        }
    }
}

impl ReadReady for ClientSocket {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<Readable> {
        if self.1.is_some() {
            return Poll::Ready(Readable::Bytes);
        }
        if let State::Raw(s) = &self.0 {
            let mut byte = [std::mem::MaybeUninit::uninit(); 1];
            match recv(s, &mut ReadBuf::uninit(&mut byte), libc::MSG_PEEK) {
                Ok(0) => return Poll::Ready(Readable::End),
                Ok(_) => return Poll::Ready(Readable::Bytes),
                Err(e) if must_wait(&e) => {}
                Err(_) => return Poll::Ready(Readable::End),
            }
        }
        match self.polled() {
            Ok(s) => s.poll_readable(cx),
            Err(_) => Poll::Ready(Readable::End),
        }
    }
}

impl crate::l4::ClientStream for ClientSocket {
    fn into_plain(self) -> Result<TcpStream, Self> {
        // A socket that cannot be registered has nothing to relay: an error to come.
        self.into_polled()
            .map_err(|_| ClientSocket(State::Failed, None))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client and the server's end of its connection, accepted non-blocking.
    pub(in crate::runtime) async fn pair() -> (TcpStream, ClientSocket) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, ClientSocket::new(server))
    }

    fn registered(a: &ClientSocket) -> bool {
        matches!(a.0, State::Polled(_))
    }

    #[tokio::test]
    async fn a_request_there_and_an_answer_that_fits_never_register() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"ping").await.unwrap();
        // Wait until the bytes are there (read ahead, through a socket of our own).
        let first = std::future::poll_fn(|cx| server.poll_first(cx).map_ok(<[u8]>::len));
        assert!(first.await.unwrap() > 0);
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong");
        assert!(!registered(&server), "nothing waited: never registered");
    }

    #[tokio::test]
    async fn a_read_that_would_block_registers_and_then_waits() {
        let (mut client, mut server) = pair().await;
        let mut got = [0u8; 5];
        {
            let read = server.read_exact(&mut got);
            tokio::pin!(read);
            // Nothing there yet: the read registers the socket and waits.
            assert!(futures_util::poll!(read.as_mut()).is_pending());
            client.write_all(b"later").await.unwrap();
            read.await.unwrap();
        }
        assert_eq!(&got, b"later");
        assert!(registered(&server));
    }

    #[tokio::test]
    async fn bytes_read_ahead_come_first_then_the_socket() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"first").await.unwrap();
        let first = std::future::poll_fn(|cx| server.poll_first(cx).map_ok(<[u8]>::to_vec));
        assert_eq!(first.await.unwrap(), b"first");
        // Bytes read ahead count as readable, without a look at the socket.
        let seen = std::future::poll_fn(|cx| server.poll_readable(cx)).await;
        assert_eq!(seen, Readable::Bytes);
        // A small read takes part of them; the next the rest, and only then the socket.
        let mut two = [0u8; 2];
        server.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"fi");
        assert_eq!(server.ahead(), b"rst");
        client.write_all(b" then").await.unwrap();
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"rst then");
    }

    #[tokio::test]
    async fn a_first_read_at_the_end_is_empty() {
        let (client, mut server) = pair().await;
        drop(client);
        let first = std::future::poll_fn(|cx| server.poll_first(cx).map_ok(<[u8]>::len));
        assert_eq!(first.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn readiness_tells_bytes_from_the_end() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"x").await.unwrap();
        let seen = std::future::poll_fn(|cx| server.poll_readable(cx)).await;
        assert_eq!(seen, Readable::Bytes);
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
        client.shutdown().await.unwrap();
        let seen = std::future::poll_fn(|cx| server.poll_readable(cx)).await;
        assert_eq!(seen, Readable::End);
    }
}
