//! Passive checks: the failures of real requests decide too. A backend whose proxied
//! attempts fail `passive_failures` times in a row is ejected for `eject_for` (a
//! passing active check, or the time running out, brings it back). The lease of each
//! attempt reports its outcome; this decides what the failures mean.

use std::time::Duration;

use crate::config::Health;

/// An upstream's passive-check rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Passive {
    failures: u32,
    eject_for: Duration,
}

impl Passive {
    /// The rule of `[upstream.NAME.health]`; `None` when `eject_for` is zero.
    pub(crate) fn of(health: &Health) -> Option<Passive> {
        (!health.eject_for.is_zero()).then_some(Passive {
            failures: health.passive_failures,
            eject_for: health.eject_for,
        })
    }

    /// What the `in_a_row`th failure in a row means for a backend: how long to eject
    /// it for, or `None` (not enough failures yet, or already out).
    pub(crate) fn after_failure(&self, in_a_row: u32, ejected: bool) -> Option<Duration> {
        (in_a_row >= self.failures && !ejected).then_some(self.eject_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_failure_in_a_row_ejects_once() {
        let p = Passive {
            failures: 3,
            eject_for: Duration::from_secs(30),
        };
        assert_eq!(p.after_failure(1, false), None);
        assert_eq!(p.after_failure(2, false), None);
        assert_eq!(p.after_failure(3, false), Some(Duration::from_secs(30)));
        assert_eq!(p.after_failure(4, false), Some(Duration::from_secs(30)));
        assert_eq!(
            p.after_failure(4, true),
            None,
            "already out: not ejected again"
        );
    }
}
