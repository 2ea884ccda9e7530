//! `[upstream.NAME.health]`: active health checks.

use super::defaults::DEFAULT_EJECT_FOR;
use super::defaults::DEFAULT_EXPECT_STATUS;
use super::defaults::DEFAULT_FALL;
use super::defaults::DEFAULT_HEALTH_INTERVAL;
use super::defaults::DEFAULT_HEALTH_PATH;
use super::defaults::DEFAULT_HEALTH_TIMEOUT;
use super::defaults::DEFAULT_PASSIVE_FAILURES;
use super::defaults::DEFAULT_RISE;
use super::raw::RawHealth;
use super::units::parse_duration;
use super::validate::Validator;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http,
    /// `grpc.health.v1.Health/Check` over HTTP/2.
    Grpc,
}

/// `[upstream.NAME.health]`: active checks, and passive ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub check: CheckKind,
    pub path: String,
    /// Inclusive range of statuses that pass.
    pub expect_status: (u16, u16),
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Consecutive failed proxied attempts that eject a backend; with `eject_for`.
    pub passive_failures: u32,
    /// Zero: no passive ejection.
    pub eject_for: Duration,
    /// `check = "grpc"`: the service asked about (empty: the server as a whole).
    pub grpc_service: String,
}

/// `"200"` or `"200-399"`, within 100..=599.
pub(super) fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = s.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

impl Validator<'_> {
    pub(super) fn health(&mut self, upstream: &str, h: &RawHealth) -> Health {
        let key = |k: &str| format!("upstream.{upstream}.health.{k}");
        let check = self.one_of(
            &h.check,
            key("check"),
            &[
                ("tcp", CheckKind::Tcp),
                ("http", CheckKind::Http),
                ("grpc", CheckKind::Grpc),
            ],
            CheckKind::Tcp,
        );
        let path = match &h.path {
            None => DEFAULT_HEALTH_PATH.to_string(),
            Some(p) => {
                if check != CheckKind::Http {
                    self.err(
                        Some(p.span()),
                        key("path"),
                        "only applies to check = \"http\"",
                    );
                }
                if !p.get_ref().starts_with('/')
                    || http::uri::PathAndQuery::try_from(p.get_ref().as_str()).is_err()
                {
                    self.err(
                        Some(p.span()),
                        key("path"),
                        format!("must be a path starting with '/', got {:?}", p.get_ref()),
                    );
                }
                p.get_ref().clone()
            }
        };
        let expect_status = match &h.expect_status {
            None => DEFAULT_EXPECT_STATUS,
            Some(e) => {
                match parse_status_range(e.get_ref()) {
                    Some(r) => r,
                    None => {
                        self.err(
                        Some(e.span()),
                        key("expect_status"),
                        format!("must be a status or a range like \"200-399\" within 100-599, got {:?}", e.get_ref()),
                    );
                        DEFAULT_EXPECT_STATUS
                    }
                }
            }
        };
        let grpc_service = match &h.grpc_service {
            None => String::new(),
            Some(g) => {
                if check != CheckKind::Grpc {
                    self.err(
                        Some(g.span()),
                        key("grpc_service"),
                        "only applies to check = \"grpc\"",
                    );
                }
                if g.get_ref().len() > 1024 {
                    self.err(Some(g.span()), key("grpc_service"), "is over 1024 bytes");
                }
                g.get_ref().clone()
            }
        };
        let interval = self.duration(&h.interval, &key("interval"), DEFAULT_HEALTH_INTERVAL);
        let timeout = self.duration(&h.timeout, &key("timeout"), DEFAULT_HEALTH_TIMEOUT);
        let rise = self.int(&h.rise, &key("rise"), 1, 100, i64::from(DEFAULT_RISE)) as u32;
        let fall = self.int(&h.fall, &key("fall"), 1, 100, i64::from(DEFAULT_FALL)) as u32;
        let passive_failures = self.int(
            &h.passive_failures,
            &key("passive_failures"),
            1,
            1000,
            i64::from(DEFAULT_PASSIVE_FAILURES),
        ) as u32;
        let eject_for = match &h.eject_for {
            None => DEFAULT_EJECT_FOR,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.err(Some(v.span()), key("eject_for"), e);
                    DEFAULT_EJECT_FOR
                }
            },
        };
        Health {
            check,
            path,
            expect_status,
            interval,
            timeout,
            rise,
            fall,
            passive_failures,
            eject_for,
            grpc_service,
        }
    }
}
