//! Certificates that change while the process runs: expiry published and warned
//! about, the ACME manager and the OCSP stapler handed each generation, and the TLS
//! session ticket keys rotated (shared through Redis when it is configured).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::shared::Shared;
use crate::config::Config;
use crate::failover;

/// A certificate that expires within this is warned about.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 86_400);
/// How often the expiry warnings are looked at again while nothing reloads.
const EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// `fulcrum_tls_certificate_expiry_seconds` for every certificate `config` serves, and
/// a warning for each that expires within 14 days (or has expired).
/// Certificates from `[acme]` renew themselves: they are published, not warned about.
pub(crate) fn publish_certificates(shared: &Shared, config: &Config) {
    let gauge = &shared.metrics.tls_certificate_expiry_seconds;
    gauge.reset();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for l in &config.listeners {
        let Some(tls) = &l.tls else { continue };
        if !tls.acme.is_empty() {
            let managed = shared.acme.current(&tls.acme);
            if let Some((name, not_after)) =
                managed.and_then(|k| crate::tls::certificate_expiry(&k))
            {
                gauge.with_label_values(&[&l.name, &name]).set(not_after);
            }
        }
        for key in &tls.certificates {
            let Some((name, not_after)) = crate::tls::certificate_expiry(key) else {
                continue;
            };
            gauge.with_label_values(&[&l.name, &name]).set(not_after);
            let left = not_after - now;
            if left < EXPIRY_WARNING.as_secs() as i64 {
                warn!(
                    listener = %l.name,
                    name = %name,
                    days_left = left / 86_400,
                    "TLS certificate expires soon: replace it and reload"
                );
            }
        }
    }
}

/// Looks at the certificates' expiry again every few hours.
pub(super) async fn watch_certificates(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EXPIRY_CHECK) => {}
        }
        publish_certificates(&shared, &shared.current.load().config);
    }
}

/// Rotates the TLS session ticket keys: a new key each `global.tls_ticket_rotation`
/// period, the previous still accepted; with `[redis]`, each period's key is the one
/// the first instance stored there, so every instance shares it. A Redis that does
/// not answer leaves this process rotating keys of its own until it does.
pub(super) async fn rotate_tickets(shared: Arc<Shared>, stop: CancellationToken) {
    use crate::tls::tickets::{local_material, period};
    let tickets = shared.tickets.clone();
    loop {
        let snapshot = shared.current.load_full();
        let interval = snapshot.config.global.tls_ticket_rotation;
        tickets.set_interval(interval);
        let mut wait = Duration::from_secs(60);
        if !interval.is_zero() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let current = period(now.as_secs(), interval);
            let mut shared_key = false;
            if let Some(redis) = &snapshot.redis {
                match redis.ticket_key(interval, current, true).await {
                    Ok(Some(material)) => {
                        shared_key = true;
                        if !tickets.has(&material, current) {
                            tickets.install(&material, current);
                            info!("TLS ticket key of this period taken from redis");
                        }
                        // Tickets the others sealed under the previous period's key.
                        if let Ok(Some(previous)) = redis
                            .ticket_key(interval, current.saturating_sub(1), false)
                            .await
                        {
                            if !tickets.has(&previous, current.saturating_sub(1)) {
                                tickets.install(&previous, current.saturating_sub(1));
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "TLS ticket keys: redis does not answer; this instance rotates its own")
                    }
                }
                // Keys other instances stored show up within this.
                wait = Duration::from_secs(10);
            }
            if !shared_key && tickets.current_period().is_none_or(|p| p < current) {
                tickets.install(&local_material(), current);
            }
            let next = (current + 1) * interval.as_secs();
            let until_next = Duration::from_secs(next.saturating_sub(now.as_secs()));
            wait = wait.min(until_next + Duration::from_millis(fastrand::u64(0..1000)));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Hands the generation serving now to the managers of live certificates: the ACME
/// manager its settings and every listener's names, the OCSP stapler the
/// certificates still served with `ocsp = "auto"`.
pub(crate) fn configure_certificates(shared: &Shared) {
    let config = shared.current.load().config.clone();
    let wanted: Vec<Vec<String>> = config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .filter(|t| !t.acme.is_empty())
        .map(|t| t.acme.clone())
        .collect();
    shared.acme.configure(config.acme.as_ref(), &wanted);
    shared.stapler.retain(
        config
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| t.certificates.iter().zip(&t.ocsp_auto))
            .filter(|(_, auto)| **auto)
            .map(|(k, _)| k),
    );
}

/// Starts the ACME manager's task with what it asks of the process: whether this
/// node may order (in a failover pair, only the active one) and a hook to publish
/// certificate expiry when one is swapped.
pub(super) fn start_acme(shared: &Arc<Shared>, stop: CancellationToken) {
    let weak = Arc::downgrade(shared);
    let changed_weak = weak.clone();
    let redis_weak = weak.clone();
    shared.acme.set_hooks(crate::acme::Hooks {
        may_order: Box::new(move || {
            weak.upgrade().is_none_or(|s| {
                s.failover
                    .get()
                    .is_none_or(|c| c.status().borrow().role == failover::machine::Role::Active)
            })
        }),
        changed: Box::new(move || {
            if let Some(s) = changed_weak.upgrade() {
                publish_certificates(&s, &s.current.load().config);
            }
        }),
        redis: Box::new(move || redis_weak.upgrade()?.current.load().redis.clone()),
    });
    tokio::spawn(shared.acme.clone().run(stop));
}
