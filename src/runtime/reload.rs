//! Reloading: the new file is read and validated whole, new listeners are bound, and
//! the next generation is built beside the current one, then swapped in with one
//! store. In-flight work finishes on the generation it started with; sockets whose
//! address stays are kept; backends that stay keep their live state and pools. A bad
//! file, a certificate that does not load or a port that cannot be bound changes
//! nothing. `[failover]` settings that can change under a running pair (priority,
//! preempt, interval, dead_after, peers, hooks) are handed to the failover driver; a
//! reload that changes one that cannot (node, bind, key, addresses), or adds or
//! removes the section, is refused whole, naming the key.
//! Also: watching the file.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::bind::{bind_keys, BindKey};
use super::listener;
use super::shared::{notify, Handle, RunningLoop, Shared};
use crate::config::Config;

/// Changes to the file closer together than this make one reload.
const DEBOUNCE: Duration = Duration::from_millis(300);

pub(crate) async fn reload(shared: &Arc<Shared>) -> Result<u64, String> {
    let _one_at_a_time = shared.reload_lock.lock().await;
    if shared.stop_accepting.is_cancelled() {
        return Err("shutting down: no reload".into());
    }
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        notify(&[sd_notify::NotifyState::Reloading, now]);
    }
    let result = apply(shared).await;
    let label = if result.is_ok() { "success" } else { "failure" };
    shared
        .metrics
        .config_reloads_total
        .with_label_values(&[label])
        .inc();
    notify(&[sd_notify::NotifyState::Ready]);
    result
}

async fn apply(shared: &Arc<Shared>) -> Result<u64, String> {
    let old = shared.current.load_full();
    let path = old.config.file.clone();
    // Reading files and resolving names blocks: not on a thread that serves traffic.
    let load = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || Config::load(&path))
    };
    let config = match load.await.map_err(|e| e.to_string()) {
        Ok(Ok(c)) => c,
        Err(e) => {
            error!("reload refused, the configuration in use stays: {e}");
            return Err(e);
        }
        Ok(Err(e)) => {
            error!(file = %path.display(), "reload refused, the configuration in use stays:\n{e}");
            return Err(e.to_string());
        }
    };
    if let Err(e) = failover_change(&old.config, &config) {
        error!("reload refused, the configuration in use stays: {e}");
        return Err(e);
    }
    // Bind what is new before anything changes: a port in use refuses the whole reload.
    let running: HashSet<BindKey> = shared
        .loops
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    let mut new_sockets: Vec<(BindKey, String, std::net::SocketAddr, TcpListener)> = Vec::new();
    for l in &config.listeners {
        for (key, addr) in bind_keys(l) {
            if running.contains(&key) {
                continue;
            }
            match listener::bind(addr) {
                Ok(s) => new_sockets.push((key, l.name.clone(), addr, s)),
                Err(e) => {
                    let msg = format!("listener {:?}: cannot bind {addr}: {e}", l.name);
                    error!("reload refused, the configuration in use stays: {msg}");
                    return Err(msg);
                }
            }
        }
    }
    let admin_changed =
        old.config.admin.as_ref().map(|a| a.bind) != config.admin.as_ref().map(|a| a.bind);
    let new_admin = match (&config.admin, admin_changed) {
        (Some(a), true) => match listener::bind(a.bind) {
            Ok(s) => Some(s),
            Err(e) => {
                let msg = format!("admin: cannot bind {}: {e}", a.bind);
                error!("reload refused, the configuration in use stays: {msg}");
                return Err(msg);
            }
        },
        _ => None,
    };

    let generation = old.generation + 1;
    let file_config = Arc::new(config);
    // Backends from DNS: names new to this file are looked up before it serves.
    if shared.dns.missing(&file_config) {
        shared.dns.lookup_now(&file_config).await;
    }
    let config = super::dns::effective(shared, &file_config);
    let next = match shared.build(config.clone(), generation) {
        Ok(n) => n,
        Err(e) => {
            error!("reload refused, the configuration in use stays: {e}");
            return Err(e);
        }
    };
    // HTTP/3's UDP sockets, on the ports of the TCP sockets (new or kept).
    let udp = {
        let loops = shared.loops.lock().unwrap_or_else(|p| p.into_inner());
        let tcp_local = |k: &BindKey| {
            loops.get(k).map(|l| l.local).or_else(|| {
                new_sockets
                    .iter()
                    .find(|(key, ..)| key == k)
                    .and_then(|(.., s)| s.local_addr().ok())
            })
        };
        super::quic::bind_new(shared, &config, &tcp_local)
    };
    let udp = match udp {
        Ok(u) => u,
        Err(e) => {
            error!("reload refused, the configuration in use stays: {e}");
            return Err(e);
        }
    };
    shared.current.store(Arc::new(next));
    if let Err(e) = super::quic::apply(shared, udp, true) {
        error!("HTTP/3 not serving on every address: {e}");
    }
    super::certificates::configure_certificates(shared);
    super::certificates::publish_certificates(shared, &config);
    shared.metrics.config_generation.set(generation as i64);
    if old.config.failover != config.failover {
        if let (Some(control), Some(f)) = (shared.failover.get(), &config.failover) {
            control.update(f.clone());
        }
    }
    if old.config.bgp != config.bgp {
        let running = shared.bgp();
        match (running, &config.bgp) {
            (Some(r), Some(b)) => r.update(b.clone()),
            (None, Some(b)) => {
                info!("[bgp] added: sessions starting");
                super::peers::start_bgp(shared, b.clone());
            }
            (Some(r), None) => {
                info!("[bgp] removed: routes withdrawn, sessions closing");
                shared.bgp.lock().unwrap_or_else(|p| p.into_inner()).take();
                tokio::spawn(async move {
                    r.withdraw_all().await;
                    r.stop().await;
                });
            }
            (None, None) => {}
        }
    }

    let wanted: HashSet<BindKey> = config
        .listeners
        .iter()
        .flat_map(|l| bind_keys(l).into_iter().map(|(k, _)| k))
        .collect();
    let removed: Vec<RunningLoop> = {
        let mut loops = shared.loops.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<BindKey> = loops
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        gone.iter().filter_map(|k| loops.remove(k)).collect()
    };
    for l in removed {
        info!(listener = %l.listener, addr = %l.local, "listener removed: no longer accepting");
        l.stop.cancel();
    }
    for (key, name, addr, socket) in new_sockets {
        shared.add_loop(key, name, addr, socket, true);
    }
    crate::admin::status::forget_removed_series(&shared.metrics, &old.config, &config);
    shared.registry.retain(&config);
    shared.pools.retain(&config);
    shared.health.sync(&config, &shared.registry);
    *shared.file_config.lock().unwrap_or_else(|p| p.into_inner()) = file_config.clone();
    shared.dns.sync(&file_config);
    if config.admin.is_none() {
        if shared.stop_admin() {
            info!("[admin] removed: the admin API is closed");
        }
    } else if let Some(socket) = new_admin {
        Handle {
            shared: shared.clone(),
        }
        .serve_admin(socket);
    }
    let (was, now) = (&old.config.global, &config.global);
    if (was.workers, was.work_stealing) != (now.workers, now.work_stealing) {
        warn!("global.workers and global.work_stealing take effect at a restart or binary upgrade: the running workers stay");
    }
    info!(generation, changes = %summary(&old.config, &config), "configuration reloaded");
    Ok(generation)
}

/// Whether the `[failover]` section may go from `old` to `new` at reload.
fn failover_change(old: &Config, new: &Config) -> Result<(), String> {
    match (&old.failover, &new.failover) {
        (None, None) => Ok(()),
        (Some(a), Some(b)) => crate::failover::control::reloadable(a, b),
        (None, Some(_)) => Err("[failover] cannot be added at reload: restart to add it".into()),
        (Some(_), None) => {
            Err("[failover] cannot be removed at reload: restart to remove it".into())
        }
    }
}

/// One line: what a reload changed.
fn summary(old: &Config, new: &Config) -> String {
    fn diff(what: &str, old: BTreeSet<String>, new: BTreeSet<String>, out: &mut Vec<String>) {
        let added: Vec<&String> = new.difference(&old).collect();
        let removed: Vec<&String> = old.difference(&new).collect();
        if !added.is_empty() {
            out.push(format!("{what} added: {}", join(&added)));
        }
        if !removed.is_empty() {
            out.push(format!("{what} removed: {}", join(&removed)));
        }
    }
    fn join(v: &[&String]) -> String {
        v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    }
    let mut out = Vec::new();
    let listeners = |c: &Config| c.listeners.iter().map(|l| l.name.clone()).collect();
    diff("listeners", listeners(old), listeners(new), &mut out);
    let changed: Vec<String> = new
        .listeners
        .iter()
        .filter(|l| old.listeners.iter().any(|o| o.name == l.name && o != *l))
        .map(|l| l.name.clone())
        .collect();
    if !changed.is_empty() {
        out.push(format!("listeners changed: {}", changed.join(", ")));
    }
    let upstreams = |c: &Config| c.upstreams.iter().map(|u| u.name.clone()).collect();
    diff("upstreams", upstreams(old), upstreams(new), &mut out);
    let backends = |c: &Config| {
        c.upstreams
            .iter()
            .flat_map(|u| {
                u.backends
                    .iter()
                    .map(move |b| format!("{}/{}", u.name, b.name))
            })
            .collect()
    };
    diff("backends", backends(old), backends(new), &mut out);
    let routes = |c: &Config| c.listeners.iter().map(|l| l.routes.len()).sum::<usize>();
    if routes(old) != routes(new) {
        out.push(format!("routes: {} -> {}", routes(old), routes(new)));
    }
    if out.is_empty() {
        "no listener, upstream or backend added or removed".into()
    } else {
        out.join("; ")
    }
}

/// What is watched in the file's directory: writes, attributes, and names coming and
/// going (editors that write a new file and rename it over the old one, and the
/// symlink swaps of Kubernetes' ConfigMap volumes).
const WATCHED: inotify::WatchMask = inotify::WatchMask::MODIFY
    .union(inotify::WatchMask::ATTRIB)
    .union(inotify::WatchMask::CLOSE_WRITE)
    .union(inotify::WatchMask::CREATE)
    .union(inotify::WatchMask::DELETE)
    .union(inotify::WatchMask::MOVED_FROM)
    .union(inotify::WatchMask::MOVED_TO);

/// What the configuration path leads to, through any symlinks: the file, its size and
/// when it was last written; `None` while nothing is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

fn seen(file: &Path) -> Option<Seen> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).ok()?;
    Some(Seen {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

/// Reloads when the file changes, debounced: editors write files in several steps.
///
/// The file's directory is watched, and the directory of the file a symlink leads to
/// when it is elsewhere; after any event there, the path is looked up again, and
/// only a different file, size or write time reloads. So a file written in place, a
/// new one renamed over it and a swapped symlink (a Kubernetes ConfigMap's `..data`)
/// all reload, and other files of the directory do not.
///
/// The inotify descriptor is read by a task on the runtime, not by a thread of its
/// own: a process of one thread makes each system call's look-up of its file
/// descriptor cheaper (the kernel takes no reference while no other thread shares
/// the table).
pub(crate) fn watch(handle: Handle, file: &Path, stop: CancellationToken) {
    use futures_util::StreamExt;
    let dir_of = |f: &Path| {
        f.parent().map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".").to_path_buf()
            } else {
                d.to_path_buf()
            }
        })
    };
    let (mut last @ Some(_), Some(dir)) = (seen(file), dir_of(file)) else {
        return;
    };
    let inotify = match inotify::Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP or POST /reload");
            return;
        }
    };
    if let Err(e) = inotify.watches().add(&dir, WATCHED) {
        warn!(error = %e, dir = %dir.display(), "cannot watch the configuration file's directory");
        return;
    }
    let target_dir = std::fs::canonicalize(file).ok().and_then(|t| dir_of(&t));
    if let Some(target_dir) =
        target_dir.filter(|t| std::fs::canonicalize(&dir).ok().as_ref() != Some(t))
    {
        if let Err(e) = inotify.watches().add(&target_dir, WATCHED) {
            warn!(error = %e, dir = %target_dir.display(), "cannot watch the directory the configuration file's symlink leads to");
        }
    }
    // Room for several events at once: each is 16 bytes and the name.
    let mut events = match inotify.into_event_stream([0u8; 2048]) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP or POST /reload");
            return;
        }
    };
    let file = file.to_path_buf();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = events.next() => match event {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "configuration file watch ended; reload with SIGHUP or POST /reload");
                        return;
                    }
                    None => return,
                },
            }
            // Whatever else arrives within DEBOUNCE of the first event is part of the
            // same change.
            let quiet = tokio::time::sleep(DEBOUNCE);
            tokio::pin!(quiet);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = &mut quiet => break,
                    event = events.next() => if event.is_none() { break },
                }
            }
            let now = seen(&file);
            if now == last {
                continue;
            }
            last = now;
            info!("configuration file changed: reloading");
            let _ = handle.reload().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_path_leads_to_changes_with_writes_renames_and_symlink_swaps() {
        let dir = std::env::temp_dir().join(format!("fulcrum-seen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        std::fs::create_dir_all(dir.join("v2")).unwrap();
        let file = dir.join("fulcrum.toml");
        assert_eq!(seen(&file), None);

        std::fs::write(&file, "a").unwrap();
        let first = seen(&file).unwrap();
        // Another file of the directory changes nothing.
        std::fs::write(dir.join("other.toml"), "b").unwrap();
        assert_eq!(seen(&file), Some(first));
        // Written in place, longer.
        std::fs::write(&file, "ab").unwrap();
        let second = seen(&file).unwrap();
        assert_ne!(second, first);
        // A new file renamed over it, the same length.
        std::fs::write(dir.join(".tmp"), "cd").unwrap();
        std::fs::rename(dir.join(".tmp"), &file).unwrap();
        let third = seen(&file).unwrap();
        assert_ne!(third, second);

        // A ConfigMap's layout: the file is a symlink through `..data`, which is
        // swapped for a symlink to the new version.
        std::fs::remove_file(&file).unwrap();
        std::fs::write(dir.join("v1/fulcrum.toml"), "a").unwrap();
        std::fs::write(dir.join("v2/fulcrum.toml"), "a").unwrap();
        std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/fulcrum.toml", &file).unwrap();
        let v1 = seen(&file).unwrap();
        std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_ne!(seen(&file).unwrap(), v1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
