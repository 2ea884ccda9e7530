//! Thread per core (`global.work_stealing = false`): worker threads that each run their
//! own single-threaded scheduler.
//!
//! The thread that runs the server is worker 0: it runs the control paths (reloads,
//! health checks, the admin API, HTTP/3) and accepts on its own sockets. Workers 1 to
//! n-1 are started here. Each accepts on its own `SO_REUSEPORT` socket of every
//! listener address (the kernel spreads new connections across them by a hash of the
//! addresses), and every task a connection starts stays on its worker: no task moves
//! between threads and no scheduler is shared.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The workers beyond the server's own thread; none with work stealing.
pub(super) struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    pub(super) fn none() -> Workers {
        Workers {
            handles: Vec::new(),
            threads: Vec::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Starts `count` more workers, numbered from 1.
    pub(super) fn start(count: usize) -> io::Result<Workers> {
        crate::worker::started(count + 1);
        let mut workers = Workers::none();
        for index in 1..=count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            workers.handles.push(runtime.handle().clone());
            let stop = workers.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("fulcrum-w{index}"))
                .spawn(move || {
                    crate::worker::set_index(index);
                    crate::aligned::cache_this_thread();
                    runtime.block_on(crate::worker::keep_timers_near(stop));
                    // A blocking task (a name lookup) still running is left behind.
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// The schedulers of workers 1 to n-1, in order.
    pub(super) fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops the workers and waits for their threads: the tasks still on them (pooled
    /// backend connections) are dropped. Called once every connection has ended.
    pub(super) fn stop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                warn!("a worker thread panicked");
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Never joined here: the last reference may be dropped on a worker itself.
        self.stop.cancel();
    }
}
