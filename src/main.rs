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

const DEFAULT_CONFIG: &str = "/etc/fulcrum/fulcrum.toml";

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
    match Cli::parse().command {
        Command::Check { config } => check(config_path(config)),
        Command::Run { config } => match run(config_path(config)) {
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

fn run(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    init_logging(config.global.log_format);
    // One worker: a single-threaded scheduler does the same work without the
    // cross-thread bookkeeping of work stealing.
    let mut builder = if config.global.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all();
    if config.global.workers > 1 {
        builder.worker_threads(config.global.workers);
    }
    let rt = builder.build().context("cannot start the runtime")?;
    let code = rt.block_on(async {
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fulcrum: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("fulcrum: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(reload_on_sighup(signals.hup, server.handle()));
        let period = watchdog_period(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        if let Some(period) = period {
            tokio::spawn(watchdog(period / 2));
        }
        let report = server.run(shutdown_signal(signals.term, signals.int)).await;
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
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
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
