//! The admin API's metrics, scraped and read by series.

use std::net::SocketAddr;

/// The `/metrics` text of the admin API at `admin`.
pub async fn scrape(admin: SocketAddr) -> String {
    let (_, _, body) = super::http::get(admin, "/metrics").await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of `series` (its name and labels as printed, e.g.
/// `fulcrum_acme_orders_total{result="issued"}`) in a scrape.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `series`' value at `admin` now; 0 when it is not there (yet).
pub async fn current(admin: SocketAddr, series: &str) -> f64 {
    value(&scrape(admin).await, series).unwrap_or(0.0)
}
