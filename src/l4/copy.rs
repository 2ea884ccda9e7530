//! Copying both ways between client and backend, with byte counts, half-close passed
//! on (tokio's bidirectional copy shuts down the write side when the other side's
//! read ends), an idle timeout over both directions, and a cut for shutdown.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::activity::{Activity, Watched};

/// Per-direction buffer: big enough for bulk transfers, small enough that many idle
/// connections stay cheap (2 x 32 KiB each).
const BUF_SIZE: usize = 32 * 1024;

#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    pub from_client: u64,
    pub to_client: u64,
}

#[derive(Debug)]
pub enum End {
    /// Both directions finished.
    Closed,
    IdleTimeout,
    /// Shutdown's drain time ran out.
    Cut,
    NoBackend,
    Error(io::Error),
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::Cut => "shutdown",
            End::NoBackend => "no_backend",
            End::Error(_) => "error",
        }
    }
}

pub async fn both_ways<C, B>(
    client: C,
    backend: B,
    idle_timeout: Duration,
    cut: &CancellationToken,
) -> (Copied, End)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity::new());
    let mut c = Watched::new(client, activity.clone());
    let mut b = Watched::new(backend, activity.clone());
    let end = {
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut b, BUF_SIZE, BUF_SIZE);
        tokio::select! {
            r = copy => match r {
                Ok(_) => End::Closed,
                Err(e) => End::Error(e),
            },
            _ = activity.idle_for(idle_timeout) => End::IdleTimeout,
            _ = cut.cancelled() => End::Cut,
        }
    };
    (
        Copied {
            from_client: c.bytes_read(),
            to_client: b.bytes_read(),
        },
        end,
    )
}
