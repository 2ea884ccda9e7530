//! The `fulcrum` binary: command line, logging, the tokio runtime and signals.
//! Everything else is in the library.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fulcrum::config::{Config, LogFormat};
use fulcrum::runtime::Server;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// With the `mimalloc` feature: a request's allocations (task cells aligned to 128
/// bytes among them) cost a fraction of glibc's, for more memory held per connection.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Otherwise the system's, with the aligned blocks of tasks and sockets kept for
/// reuse on each worker ([`fulcrum::aligned`]).
#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static ALLOCATOR: fulcrum::aligned::Allocator = fulcrum::aligned::Allocator;

const DEFAULT_CONFIG: &str = "/etc/fulcrum/fulcrum.toml";
const DEFAULT_PID_FILE: &str = "/run/fulcrum/fulcrum.pid";

#[derive(Parser)]
#[command(
    name = "fulcrum",
    version,
    about = "A layer-4/layer-7 load balancer and reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the configuration file.
    Run {
        /// Defaults to $FULCRUM_CONFIG, then /etc/fulcrum/fulcrum.toml.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Write the process id here once serving (for `fulcrum upgrade`); removed at
        /// exit.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Upgrade the running fulcrum of PID_FILE to the binary now at its path: SIGUSR2,
    /// then wait until the new process serves (exit 0) or the upgrade failed (exit 1;
    /// the old process keeps serving).
    Upgrade {
        #[arg(long, default_value = DEFAULT_PID_FILE)]
        pid_file: PathBuf,
        /// How long to wait for the new process, e.g. "90s".
        #[arg(long, default_value = "90s")]
        timeout: humantime::Duration,
    },
    /// Validate everything `run` would load, print a summary, and exit.
    Check {
        /// Defaults to $FULCRUM_CONFIG, then /etc/fulcrum/fulcrum.toml.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("FULCRUM_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

fn main() -> ExitCode {
    // The path of this binary now, before an upgrade replaces the file: the new
    // process is started from the same path.
    let exe = std::env::current_exe().ok();
    match Cli::parse().command {
        Command::Check { config } => check(config_path(config)),
        Command::Upgrade { pid_file, timeout } => upgrade(&pid_file, timeout.into()),
        Command::Run { config, pid_file } => match run(config_path(config), pid_file, exe) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("fulcrum: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: PathBuf) -> ExitCode {
    match Config::load(&path) {
        Ok(config) => {
            print!("{}", config.summary());
            for warning in warnings(&config) {
                eprintln!("warning: {warning}");
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

/// What is valid but will not work on this machine as it is.
fn warnings(config: &Config) -> Vec<String> {
    let needs_roots: Vec<&str> = config
        .upstreams
        .iter()
        .filter(|u| u.tls.as_ref().is_some_and(|t| t.ca.is_none()))
        .map(|u| u.name.as_str())
        .collect();
    if needs_roots.is_empty() || fulcrum::tls::system_roots_found() {
        return Vec::new();
    }
    needs_roots
        .iter()
        .map(|name| {
            format!(
                "`upstream.{name}.tls` has no `ca`, and no system root certificates were found \
                 (install ca-certificates, or set SSL_CERT_FILE or `tls.ca`): `fulcrum run` will refuse it"
            )
        })
        .collect()
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The file beside the pid file where a failed upgrade says why.
fn failure_file(pid_file: &std::path::Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".upgrade-failed");
    PathBuf::from(name)
}

fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn upgrade(pid_file: &std::path::Path, timeout: std::time::Duration) -> ExitCode {
    let Some(old) = read_pid(pid_file) else {
        eprintln!("fulcrum: no process id in {}", pid_file.display());
        return ExitCode::FAILURE;
    };
    let failed = failure_file(pid_file);
    let _ = std::fs::remove_file(&failed);
    // SAFETY: kill(2) with a process id read from fulcrum's own pid file.
    if unsafe { libc::kill(old, libc::SIGUSR2) } != 0 {
        eprintln!(
            "fulcrum: cannot signal process {old}: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(new) = read_pid(pid_file).filter(|p| *p != old) {
            println!("upgraded: process {old} drains, process {new} serves");
            return ExitCode::SUCCESS;
        }
        if let Ok(why) = std::fs::read_to_string(&failed) {
            eprintln!(
                "fulcrum: upgrade failed, process {old} keeps serving: {}",
                why.trim()
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("fulcrum: no new process took over within {timeout:?}: see process {old}'s log");
    ExitCode::FAILURE
}

fn run(path: PathBuf, pid_file: Option<PathBuf>, exe: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Started by an upgrade: take what the old process handed over (before anything
    // else can inherit the descriptors).
    let mut incoming = match fulcrum::runtime::upgrade::Incoming::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("fulcrum: upgrade: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    init_logging(config.global.log_format);
    // One worker: a single-threaded scheduler does the same work without the
    // cross-thread bookkeeping of work stealing. Thread per core: this thread is
    // worker 0, the server starts the others, each with a scheduler of its own.
    let single = config.global.workers == 1 || config.global.thread_per_core();
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all();
    if !single && config.global.workers > 1 {
        builder.worker_threads(config.global.workers);
    }
    // The threads that run connections keep aligned blocks for reuse: this one (which
    // runs them with a single scheduler, and the server's own future otherwise) and
    // the scheduler's workers, the threads that park (the blocking pool's never do).
    fulcrum::aligned::cache_this_thread();
    builder.on_thread_park(fulcrum::aligned::cache_this_thread);
    let rt = builder.build().context("cannot start the runtime")?;
    let code = rt.block_on(async {
        #[cfg(not(feature = "mimalloc"))]
        tokio::spawn(fulcrum::aligned::trim_periodically());
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fulcrum: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let server = match Server::bind_inheriting(config, incoming.as_mut()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("fulcrum: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(reload_on_sighup(signals.hup, server.handle()));
        tokio::spawn(upgrade_on_sigusr2(
            signals.usr2,
            server.handle(),
            exe,
            pid_file.clone(),
        ));
        let ready_pid_file = pid_file.clone();
        let server = server.when_ready(move || {
            if let Some(incoming) = incoming {
                incoming.ready();
            }
            if let Some(path) = ready_pid_file {
                if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the pid file");
                }
            }
        });
        let period = watchdog_period(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        if let Some(period) = period {
            tokio::spawn(watchdog(period / 2));
        }
        let report = server.run(shutdown_signal(signals.term, signals.int)).await;
        if let Some(path) = &pid_file {
            // A new process may have written its own id there.
            if read_pid(path) == i32::try_from(std::process::id()).ok() {
                let _ = std::fs::remove_file(path);
            }
        }
        tracing::info!(cut = report.cut, "exiting");
        ExitCode::SUCCESS
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(code)
}

/// Reloads the configuration on every SIGHUP; a failed reload is logged and counted by
/// the library, and the old configuration keeps serving.
async fn reload_on_sighup(mut hup: Signal, handle: fulcrum::runtime::Handle) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading");
        let _ = handle.reload().await;
    }
}

/// systemd's watchdog period, by libsystemd's rule (`sd_watchdog_enabled`): set when
/// `WATCHDOG_USEC` is a positive number and `WATCHDOG_PID` is either absent or this
/// process.
fn watchdog_period(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<std::time::Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid {
        None => {}
        Some(p) if p.trim().parse::<u32>().ok() == Some(me) => {}
        Some(_) => return None,
    }
    Some(std::time::Duration::from_micros(usec))
}

/// Upgrades on every SIGUSR2: the binary at this process's path, with its arguments.
/// A failure is logged (and written beside the pid file for `fulcrum upgrade`); the
/// process keeps serving.
async fn upgrade_on_sigusr2(
    mut usr2: Signal,
    handle: fulcrum::runtime::Handle,
    exe: Option<PathBuf>,
    pid_file: Option<PathBuf>,
) {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    while usr2.recv().await.is_some() {
        tracing::info!("SIGUSR2 received: upgrading");
        // A task per signal, so that a signal during an upgrade is seen (and refused).
        let (handle, exe, args, pid_file) =
            (handle.clone(), exe.clone(), args.clone(), pid_file.clone());
        tokio::spawn(async move {
            let result = match &exe {
                Some(exe) => handle.upgrade(exe, &args).await,
                None => Err("the path of this binary is not known".to_string()),
            };
            let Err(e) = result else { return };
            if e.contains("already under way") {
                tracing::info!("an upgrade is already under way: SIGUSR2 ignored");
                return;
            }
            tracing::warn!(error = %e, "upgrade refused or failed: this process keeps serving");
            if let Some(pid_file) = pid_file {
                let _ = std::fs::write(failure_file(&pid_file), format!("{e}\n"));
            }
        });
    }
}

/// Tells systemd every half `WatchdogSec` that the runtime still runs tasks.
async fn watchdog(every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
    }
}

/// The signals fulcrum handles, installed before any listener is bound so that none
/// arriving early falls to its default action (which would end the process).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal(mut term: Signal, mut int: Signal) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::watchdog_period;
    use std::time::Duration;

    #[test]
    fn the_watchdog_follows_libsystemds_rule() {
        let period = Some(Duration::from_secs(30));
        assert_eq!(watchdog_period(Some("30000000"), None, 7), period);
        assert_eq!(watchdog_period(Some("30000000"), Some("7"), 7), period);
        assert_eq!(watchdog_period(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("30000000"), Some("x"), 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("soon"), None, 7), None);
        assert_eq!(watchdog_period(None, Some("7"), 7), None);
    }
}
