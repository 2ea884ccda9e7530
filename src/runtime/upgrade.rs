//! Binary upgrades without a refused connection: the running process starts the
//! binary at its own path with its own arguments and hands it every listening socket
//! (inherited descriptors, named in a document sent over a Unix socket pair whose
//! child end is inherited too), with what it knows of each backend's health. The new
//! process uses those sockets instead of binding, marks the backends the old one
//! knew were down as down until its own checks pass, and answers "ready" once it
//! serves. Only then does the old process stop accepting and drain; a new process
//! that fails first (it exits, or says nothing within a minute) changes nothing.
//!
//! The listening sockets stay open the whole time: between the two processes, a
//! connection waits in the kernel's accept queue, never refused.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;

use super::bind::BindKey;

/// The environment variable that names the inherited end of the socket pair.
pub const ENV: &str = "FULCRUM_UPGRADE_FD";
/// How long the new process may take to say it serves.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One listening socket handed over.
#[derive(Debug, Serialize, Deserialize)]
struct Socket {
    listener: String,
    /// Its position in the listener's `bind`.
    index: usize,
    /// The configured address (port 0 for a fresh port each start).
    addr: SocketAddr,
    fd: RawFd,
}

/// What the old process knew of one backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendHealth {
    pub upstream: String,
    pub address: String,
    pub healthy: bool,
    pub draining: bool,
}

/// The document the old process sends, one JSON line.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Handover {
    sockets: Vec<Socket>,
    admin: Option<RawFd>,
    backends: Vec<BackendHealth>,
}

/// What the old process hands over, gathered from its loops and its generation.
pub(crate) struct Outgoing {
    /// (key, listener, configured address, descriptor of the live socket).
    pub sockets: Vec<(BindKey, String, SocketAddr, RawFd)>,
    pub admin: Option<RawFd>,
    pub backends: Vec<BackendHealth>,
}

/// Descriptors duplicated for the child (without close-on-exec), closed in this
/// process once the child holds them.
struct Dups(Vec<RawFd>);

impl Dups {
    fn dup(&mut self, fd: RawFd) -> Result<RawFd, String> {
        // SAFETY: dup(2) on a descriptor this process holds open (the caller keeps
        // the socket alive); the duplicate has close-on-exec cleared, so the child
        // inherits it, and is closed by Drop.
        let new = unsafe { libc::dup(fd) };
        if new < 0 {
            return Err(format!(
                "cannot duplicate a socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        self.0.push(new);
        Ok(new)
    }
}

impl Drop for Dups {
    fn drop(&mut self) {
        for fd in &self.0 {
            // SAFETY: each was returned by dup(2) above and is closed once.
            unsafe { libc::close(*fd) };
        }
    }
}

/// Starts `exe args...` with the sockets of `out`, and waits until it says it serves.
/// Returns its process id; on failure the child is gone (or killed) and nothing here
/// has changed.
pub(crate) async fn hand_over(exe: &Path, args: &[OsString], out: Outgoing) -> Result<u32, String> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot make a socket pair: {e}"))?;
    let mut dups = Dups(Vec::new());
    let mut doc = Handover {
        backends: out.backends,
        ..Handover::default()
    };
    for (key, listener, addr, fd) in &out.sockets {
        let index = match key {
            BindKey::Ephemeral(_, i) => *i,
            BindKey::Addr(_) => 0,
        };
        doc.sockets.push(Socket {
            listener: listener.clone(),
            index,
            addr: *addr,
            fd: dups.dup(*fd)?,
        });
    }
    if let Some(fd) = out.admin {
        doc.admin = Some(dups.dup(fd)?);
    }
    let channel = dups.dup(theirs.as_raw_fd())?;
    drop(theirs);
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .env(ENV, channel.to_string())
        // The child is not systemd's main process yet: by libsystemd's rule it pings
        // the watchdog once it is (without WATCHDOG_PID, the variable is its own).
        .env_remove("WATCHDOG_PID")
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(dups);
    let pid = child.id().unwrap_or(0);

    let mut line = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
    line.push(b'\n');
    ours.set_nonblocking(true)
        .map_err(|e| format!("socket pair: {e}"))?;
    let mut ours =
        tokio::net::UnixStream::from_std(ours).map_err(|e| format!("socket pair: {e}"))?;
    // Not blocking this thread: the document waits in the socket until the child reads.
    let sent = tokio::time::timeout(READY_TIMEOUT, ours.write_all(&line)).await;
    if !matches!(sent, Ok(Ok(()))) {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err("cannot send the sockets to the new process".into());
    }
    let mut lines = tokio::io::BufReader::new(ours).lines();
    let outcome = tokio::select! {
        l = lines.next_line() => match l {
            Ok(Some(l)) if l.starts_with("ready") => Ok(pid),
            Ok(Some(l)) => Err(format!("the new process said {l:?}")),
            Ok(None) | Err(_) => Err("the new process closed its side before it was ready".to_string()),
        },
        status = child.wait() => Err(match status {
            Ok(s) => format!("the new process exited ({s}) before it was ready"),
            Err(e) => format!("the new process: {e}"),
        }),
        _ = tokio::time::sleep(READY_TIMEOUT) => Err(format!("the new process was not ready within {READY_TIMEOUT:?}")),
    };
    if outcome.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    outcome
}

/// The sockets and backend states a new process was handed, and the way to say it
/// serves.
pub struct Incoming {
    channel: UnixStream,
    sockets: HashMap<BindKey, std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
    backends: Vec<BackendHealth>,
}

/// A listening TCP socket from an inherited descriptor (made a tokio socket when a
/// listener takes it, inside the runtime).
fn listener_from(fd: RawFd) -> Result<std::net::TcpListener, String> {
    // SAFETY: the descriptor was handed over for this process to own; nothing else
    // here refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let std = std::net::TcpListener::from(owned);
    std.set_nonblocking(true)
        .map_err(|e| format!("inherited socket {fd}: {e}"))?;
    std.local_addr()
        .map_err(|e| format!("inherited descriptor {fd} is not a listening socket: {e}"))?;
    Ok(std)
}

fn into_tokio(socket: std::net::TcpListener) -> Option<TcpListener> {
    TcpListener::from_std(socket).ok()
}

impl Incoming {
    /// Reads what the old process sent, when this process was started by an upgrade
    /// (`FULCRUM_UPGRADE_FD` is set; it is removed from the environment).
    pub fn from_env() -> Result<Option<Incoming>, String> {
        let Some(fd) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        std::env::remove_var(ENV);
        let fd: RawFd = fd
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{ENV} is not a descriptor"))?;
        // SAFETY: the old process made this descriptor for this process alone.
        let channel = unsafe { UnixStream::from_raw_fd(fd) };
        channel
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&channel)
            .read_line(&mut line)
            .map_err(|e| format!("cannot read what the old process sent: {e}"))?;
        let doc: Handover = serde_json::from_str(&line)
            .map_err(|e| format!("what the old process sent is not a handover: {e}"))?;
        let mut sockets = HashMap::new();
        for s in doc.sockets {
            let key = if s.addr.port() == 0 {
                BindKey::Ephemeral(s.listener.clone(), s.index)
            } else {
                BindKey::Addr(s.addr)
            };
            sockets.insert(key, listener_from(s.fd)?);
        }
        let admin = doc.admin.map(listener_from).transpose()?;
        Ok(Some(Incoming {
            channel,
            sockets,
            admin,
            backends: doc.backends,
        }))
    }

    /// The socket handed over for `key`, if any.
    pub(crate) fn take(&mut self, key: &BindKey) -> Option<TcpListener> {
        self.sockets.remove(key).and_then(into_tokio)
    }

    /// The admin API's socket, if it listens on `addr`.
    pub(crate) fn take_admin(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let matches = self
            .admin
            .as_ref()
            .and_then(|a| a.local_addr().ok())
            .is_some_and(|local| addr.port() == 0 || local == addr);
        if matches {
            self.admin.take().and_then(into_tokio)
        } else {
            None
        }
    }

    pub(crate) fn backends(&self) -> &[BackendHealth] {
        &self.backends
    }

    /// Tells the old process this one serves, and closes the sockets it did not use.
    pub fn ready(self) {
        let pid = std::process::id();
        let mut channel = self.channel;
        let _ = writeln!(channel, "ready {pid}");
        // The channel, and the inherited sockets no listener took, close here.
    }
}
