//! Copying both ways between client and backend, with byte counts, half-close passed
//! on (the write side is shut down when the other side's read ends), an idle timeout
//! over both directions, and a cut for shutdown. Plaintext on both sides is spliced
//! (`splice`); anything else goes through user-space buffers.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::splice;
use crate::activity::{Activity, Watched};

/// Per-direction buffer: big enough for bulk transfers, small enough that many idle
/// connections stay cheap (2 x 32 KiB each).
const BUF_SIZE: usize = 32 * 1024;

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Copied {
    pub from_client: u64,
    pub to_client: u64,
}

#[derive(Debug)]
pub(super) enum End {
    /// Both directions finished.
    Closed,
    IdleTimeout,
    /// Shutdown's drain time ran out.
    Cut,
    NoBackend,
    Error(io::Error),
}

impl End {
    pub(super) fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::Cut => "shutdown",
            End::NoBackend => "no_backend",
            End::Error(_) => "error",
        }
    }
}

/// Runs `copy` until it ends, nothing moves for `idle_timeout`, or `cut` fires.
async fn until_done<T>(
    copy: impl std::future::Future<Output = io::Result<T>>,
    activity: &Activity,
    idle_timeout: Duration,
    cut: &CancellationToken,
) -> End {
    tokio::select! {
        r = copy => match r {
            Ok(_) => End::Closed,
            Err(e) => End::Error(e),
        },
        _ = activity.idle_for(idle_timeout) => End::IdleTimeout,
        _ = cut.cancelled() => End::Cut,
    }
}

pub(super) async fn both_ways<C, B>(
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
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut b, BUF_SIZE, BUF_SIZE);
    let end = until_done(copy, &activity, idle_timeout, cut).await;
    (
        Copied {
            from_client: c.bytes_read(),
            to_client: b.bytes_read(),
        },
        end,
    )
}

/// Both ways between two plaintext sockets, spliced: the bytes stay in the kernel.
pub(super) async fn spliced(
    mut client: TcpStream,
    mut backend: TcpStream,
    idle_timeout: Duration,
    cut: &CancellationToken,
) -> (Copied, End) {
    let activity = Activity::new();
    let (from_client, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let counted = |total: &AtomicU64, n: usize| {
        total.fetch_add(n as u64, Ordering::Relaxed);
        activity.moved_bytes(n);
    };
    let up = |n| counted(&from_client, n);
    let down = |n| counted(&to_client, n);
    let wrote = || activity.touch();
    let ended = std::sync::atomic::AtomicBool::new(false);
    let (client_read, client_write) = client.split();
    let (backend_read, backend_write) = backend.split();
    let copy = async {
        tokio::try_join!(
            splice::one_way(client_read, backend_write.as_ref(), &up, &wrote, &ended),
            splice::one_way(backend_read, client_write.as_ref(), &down, &wrote, &ended),
        )
    };
    let end = until_done(copy, &activity, idle_timeout, cut).await;
    (
        Copied {
            from_client: from_client.load(Ordering::Relaxed),
            to_client: to_client.load(Ordering::Relaxed),
        },
        end,
    )
}
