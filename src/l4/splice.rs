//! Zero-copy relay for plaintext TCP: bytes move socket → pipe → socket with
//! splice(2) and never enter user space. A pipe is taken from a per-thread pool for
//! each chunk and given back once drained, so an idle connection holds none and a busy
//! one holds at most one per direction. When no pipe can be had (descriptor limits) or
//! the kernel refuses to splice, the chunk goes through a small user-space buffer.
//!
//! Splicing pays for bulk transfers only: for a few hundred bytes, two splices through
//! a pipe cost the kernel more than a `recv` and a `send`. So each direction starts by
//! copying: a chunk is read into a buffer on the stack and sent at once, and only
//! once a read fills that buffer (more is waiting: a bulk transfer) does the direction
//! switch to splicing. A request and its answer never touch a pipe.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;

/// Most bytes moved per chunk: a pipe's default capacity (16 pages).
const CHUNK: usize = 64 * 1024;
/// Pipes kept per thread between chunks.
const POOL_MAX: usize = 64;
/// The user-space buffer of the fallback.
const FALLBACK_BUF: usize = 16 * 1024;
/// The stack buffer a direction copies through before it splices: a read that fills
/// it switches the direction to splicing.
const SMALL: usize = 16 * 1024;

/// Both ends of a pipe, non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [-1; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and owned by nothing else.
        Ok(unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

fn take_pipe() -> io::Result<Pipe> {
    match POOL.with(|p| p.borrow_mut().pop()) {
        Some(p) => Ok(p),
        None => Pipe::new(),
    }
}

/// Only an empty pipe goes back.
fn give_back(pipe: Pipe) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(pipe);
        }
    });
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: two open descriptors; sockets and pipes take no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The kernel cannot splice these descriptors: copy instead.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS))
}

/// Moves bytes from `reading`'s socket (`src` below) to `dst` until `src` ends, then
/// shuts down the writing side of `dst` (the half-close passed on), unless the other
/// direction (which shares `ended`) has ended already: both sockets are closed next,
/// and the close says the same. `read(n)` is told of every chunk read, `wrote()` of
/// every write. Returns the bytes moved.
pub(super) async fn one_way(
    mut reading: ReadHalf<'_>,
    dst: &TcpStream,
    read: &(dyn Fn(usize) + Sync),
    wrote: &(dyn Fn() + Sync),
    ended: &AtomicBool,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut copying = false;
    // Small chunks so far: copied through the stack, not spliced.
    let mut small = true;
    loop {
        let n = if small {
            let (n, filled) = small_chunk(&mut reading, dst, read, wrote).await?;
            small = !filled;
            n
        } else if copying {
            copy_chunk(reading.as_ref(), dst, read, wrote).await?
        } else {
            match fill(reading.as_ref()).await? {
                Filled::Spliced(pipe, n) => {
                    read(n);
                    // A pipe left with bytes in it (the write failed) is closed.
                    drain(&pipe, dst, n, wrote).await?;
                    give_back(pipe);
                    n
                }
                Filled::End => 0,
                // No pipe this time (descriptor limits): this chunk is copied.
                Filled::NoPipe => copy_chunk(reading.as_ref(), dst, read, wrote).await?,
                Filled::Unsupported => {
                    copying = true;
                    continue;
                }
            }
        };
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if ended.swap(true, Ordering::Relaxed) {
        return Ok(total);
    }
    match socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(total),
    }
}

/// What a wait for `src`'s next bytes found.
enum Filled {
    /// This many bytes are in the pipe.
    Spliced(Pipe, usize),
    /// `src` ended.
    End,
    /// No pipe could be had.
    NoPipe,
    /// The kernel cannot splice from `src`.
    Unsupported,
}

/// Waits until `src` is readable, and only then takes a pipe and moves what `src`
/// has into it: a direction waiting for bytes holds no pipe, so the pool serves the
/// transfers under way, not the connections open.
async fn fill(src: &TcpStream) -> io::Result<Filled> {
    loop {
        src.readable().await?;
        let Ok(pipe) = take_pipe() else {
            return Ok(Filled::NoPipe);
        };
        let to = pipe.write.as_raw_fd();
        // The pipe is empty: a WouldBlock can only be the socket's.
        match src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), to, CHUNK)) {
            Ok(0) => {
                give_back(pipe);
                return Ok(Filled::End);
            }
            Ok(n) => return Ok(Filled::Spliced(pipe, n)),
            Err(e) => {
                give_back(pipe);
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                if unsupported(&e) {
                    return Ok(Filled::Unsupported);
                }
                return Err(e);
            }
        }
    }
}

/// Writes the `n` bytes in the pipe to `dst`.
async fn drain(
    pipe: &Pipe,
    dst: &TcpStream,
    mut n: usize,
    wrote: &(dyn Fn() + Sync),
) -> io::Result<()> {
    let from = pipe.read.as_raw_fd();
    while n > 0 {
        dst.writable().await?;
        // The pipe holds `n` bytes: a WouldBlock can only be the socket's.
        match dst.try_io(Interest::WRITABLE, || splice(from, dst.as_raw_fd(), n)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                n -= m;
                wrote();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What one read into the stack buffer, and the sends that followed at once, did.
enum Sent {
    /// This many bytes were read and all were sent; whether they filled the buffer.
    All(usize, bool),
    /// This many bytes were read (filling the buffer or not); the rest, which `dst`
    /// did not take yet, is to be sent.
    Rest(usize, bool, Vec<u8>),
}

/// Reads what `src` has (at most [`SMALL`] bytes) into a buffer on the stack, and
/// sends it to `dst` at once: no wait, so the buffer is not kept in the future. The
/// read is `AsyncRead`'s, which takes a short read as the socket drained: the next
/// waits for readiness instead of trying (and failing) first.
fn poll_read_and_send(
    src: &mut ReadHalf<'_>,
    dst: &TcpStream,
    wrote: &(dyn Fn() + Sync),
    cx: &mut Context<'_>,
) -> Poll<io::Result<Sent>> {
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); SMALL];
    let mut buf = ReadBuf::uninit(&mut stack);
    std::task::ready!(Pin::new(src).poll_read(cx, &mut buf))?;
    let data = buf.filled();
    let (n, filled) = (data.len(), data.len() == SMALL);
    let mut sent = 0;
    while sent < n {
        match dst.try_write(&data[sent..]) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(m) => {
                sent += m;
                wrote();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Poll::Ready(Ok(Sent::Rest(n, filled, data[sent..].to_vec())));
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(Sent::All(n, filled)))
}

/// One chunk through the stack buffer: its size (0 at the end of `src`) and whether
/// it filled the buffer.
async fn small_chunk(
    src: &mut ReadHalf<'_>,
    dst: &TcpStream,
    read: &(dyn Fn(usize) + Sync),
    wrote: &(dyn Fn() + Sync),
) -> io::Result<(usize, bool)> {
    let (n, filled, rest) =
        match std::future::poll_fn(|cx| poll_read_and_send(src, dst, wrote, cx)).await? {
            Sent::All(n, filled) => (n, filled, Vec::new()),
            Sent::Rest(n, filled, rest) => (n, filled, rest),
        };
    if n > 0 {
        read(n);
    }
    send_all(dst, &rest, wrote).await?;
    Ok((n, filled))
}

/// Writes all of `left` to `dst`, waiting whenever it takes no more.
async fn send_all(dst: &TcpStream, mut left: &[u8], wrote: &(dyn Fn() + Sync)) -> io::Result<()> {
    while !left.is_empty() {
        dst.writable().await?;
        match dst.try_write(left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                left = &left[m..];
                wrote();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One chunk through user space: 0 at the end of `src`.
async fn copy_chunk(
    src: &TcpStream,
    dst: &TcpStream,
    read: &(dyn Fn(usize) + Sync),
    wrote: &(dyn Fn() + Sync),
) -> io::Result<usize> {
    let mut buf = vec![0u8; FALLBACK_BUF];
    let n = loop {
        src.readable().await?;
        match src.try_read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => break r?,
        }
    };
    if n > 0 {
        read(n);
    }
    send_all(dst, &buf[..n], wrote).await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of sockets on 127.0.0.1.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_and_the_end_is_passed_on() {
        // writer -> (a_in | a_out) -> reader, relayed by one_way.
        let (mut writer, mut a_in) = pair().await;
        let (a_out, mut reader) = pair().await;
        let data: Vec<u8> = (0..3 * 1024 * 1024u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let expected = data.clone();
        let send = tokio::spawn(async move {
            writer.write_all(&data).await.unwrap();
            writer.shutdown().await.unwrap();
            writer
        });
        let counted = std::sync::atomic::AtomicU64::new(0);
        let count = |n: usize| {
            counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        };
        let ended = AtomicBool::new(false);
        let relay = one_way(a_in.split().0, &a_out, &count, &|| {}, &ended);
        let mut got = Vec::new();
        let (moved, read) = tokio::join!(relay, reader.read_to_end(&mut got));
        assert_eq!(moved.unwrap(), expected.len() as u64);
        assert_eq!(read.unwrap(), expected.len());
        assert!(got == expected, "the bytes differ");
        assert_eq!(counted.into_inner(), expected.len() as u64);
        send.await.unwrap();
    }

    #[tokio::test]
    async fn a_direction_waiting_for_bytes_holds_no_pipe() {
        let (mut writer, mut a_in) = pair().await;
        let (a_out, mut reader) = pair().await;
        POOL.with(|p| p.borrow_mut().clear());
        give_back(Pipe::new().unwrap());
        let pooled = || POOL.with(|p| p.borrow().len());
        let ended = AtomicBool::new(false);
        let relay = one_way(a_in.split().0, &a_out, &|_| {}, &|| {}, &ended);
        tokio::pin!(relay);
        // Nothing sent yet: the relay waits, and the pipe stays in the pool.
        assert!(futures_util::poll!(relay.as_mut()).is_pending());
        assert_eq!(pooled(), 1);
        writer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::select! {
            r = &mut relay => panic!("the relay ended early: {r:?}"),
            r = reader.read_exact(&mut got) => r.unwrap(),
        };
        assert_eq!(&got, b"ping");
        // Relayed, and waiting again: the one pipe is back.
        assert_eq!(pooled(), 1);
        writer.shutdown().await.unwrap();
        assert_eq!(relay.await.unwrap(), 4);
    }

    #[tokio::test]
    async fn the_last_direction_to_end_leaves_the_shutdown_to_the_close() {
        let (mut writer, mut a_in) = pair().await;
        let (a_out, mut reader) = pair().await;
        writer.write_all(b"hello").await.unwrap();
        writer.shutdown().await.unwrap();
        // The other direction has ended already.
        let ended = AtomicBool::new(true);
        let moved = one_way(a_in.split().0, &a_out, &|_| {}, &|| {}, &ended).await;
        assert_eq!(moved.unwrap(), 5);
        // Not shut down: it still writes (after a shutdown the write would fail).
        a_out.writable().await.unwrap();
        assert_eq!(a_out.try_write(b" more").unwrap(), 5);
        drop(a_out);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello more");
    }

    #[tokio::test]
    async fn small_chunks_are_copied_and_a_full_read_switches_to_splicing() {
        let (mut writer, mut a_in) = pair().await;
        let (a_out, mut reader) = pair().await;
        POOL.with(|p| p.borrow_mut().clear());
        let pooled = || POOL.with(|p| p.borrow().len());
        let ended = AtomicBool::new(false);
        let relay = one_way(a_in.split().0, &a_out, &|_| {}, &|| {}, &ended);
        tokio::pin!(relay);
        writer.write_all(b"a request").await.unwrap();
        let mut got = [0u8; 9];
        tokio::select! {
            r = &mut relay => panic!("the relay ended early: {r:?}"),
            r = reader.read_exact(&mut got) => r.unwrap(),
        };
        assert_eq!(&got, b"a request");
        // Copied through the stack: no pipe was made.
        assert_eq!(pooled(), 0);
        // A bulk transfer: after the first full read, chunks go through a pipe.
        let bulk = vec![7u8; 8 * SMALL];
        writer.write_all(&bulk).await.unwrap();
        writer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let (moved, read) = tokio::join!(relay, reader.read_to_end(&mut rest));
        assert_eq!(moved.unwrap(), 9 + bulk.len() as u64);
        read.unwrap();
        assert!(rest == bulk, "the bulk bytes differ");
        assert!(pooled() > 0, "no chunk was spliced");
    }

    #[tokio::test]
    async fn a_copied_chunk_the_backend_cannot_take_at_once_is_sent_whole() {
        let (mut writer, mut a_in) = pair().await;
        let (a_out, mut reader) = pair().await;
        // Fill what `a_out` can take while nobody reads its other end.
        let filler = vec![1u8; 64 * 1024];
        let mut queued = 0usize;
        loop {
            match a_out.try_write(&filler) {
                Ok(n) => queued += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        writer.write_all(b"after the filler").await.unwrap();
        writer.shutdown().await.unwrap();
        let ended = AtomicBool::new(false);
        let relay = one_way(a_in.split().0, &a_out, &|_| {}, &|| {}, &ended);
        let mut got = Vec::new();
        let (moved, read) = tokio::join!(relay, reader.read_to_end(&mut got));
        assert_eq!(moved.unwrap(), 16);
        read.unwrap();
        assert_eq!(got.len(), queued + 16);
        assert_eq!(&got[queued..], b"after the filler");
    }

    #[tokio::test]
    async fn pipes_go_back_to_the_pool_empty() {
        let (mut writer, mut a_in) = pair().await;
        let (a_out, mut reader) = pair().await;
        // More than a copied chunk: the rest is spliced.
        let data = vec![5u8; 4 * SMALL];
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
        let ended = AtomicBool::new(false);
        let relay = one_way(a_in.split().0, &a_out, &|_| {}, &|| {}, &ended);
        let mut got = Vec::new();
        let (moved, read) = tokio::join!(relay, reader.read_to_end(&mut got));
        moved.unwrap();
        read.unwrap();
        assert!(got == data, "the bytes differ");
        let pipe = POOL
            .with(|p| p.borrow_mut().pop())
            .expect("a pipe in the pool");
        // Empty: a read finds nothing.
        let mut byte = [0u8; 1];
        // SAFETY: an open descriptor and a one-byte buffer.
        let n = unsafe { libc::read(pipe.read.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        assert_eq!(n, -1);
        assert_eq!(io::Error::last_os_error().kind(), io::ErrorKind::WouldBlock);
    }
}
