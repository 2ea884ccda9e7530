//! The generic cell rate algorithm: one number per key (the theoretical arrival time,
//! TAT), exact at the boundary. Pure: times are nanoseconds on a clock the caller
//! keeps, never read here.
//!
//! With an emission interval `T` (the period divided by the rate) and a burst `B`, a
//! request at `now` passes when `max(TAT, now) - now <= T * (B - 1)`, and moves TAT
//! one `T` further. A fresh key (TAT 0) lets `B` requests pass at once and refuses
//! the next; afterwards one more passes every `T`.

/// One rule's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Nanoseconds between two requests at the sustained rate.
    pub interval: u64,
    /// How many requests may pass at once.
    pub burst: u64,
}

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Passed: `remaining` more may pass now; the bucket is full again after `reset`
    /// nanoseconds.
    Allow { remaining: u64, reset: u64 },
    /// Refused: the next request may pass after `retry_after` nanoseconds.
    Deny { retry_after: u64, reset: u64 },
}

impl Gcra {
    /// `count` requests per `period_ns`, `burst` at once (at least 1).
    pub(crate) fn new(count: u64, period_ns: u64, burst: u64) -> Gcra {
        Gcra {
            interval: (period_ns / count.max(1)).max(1),
            burst: burst.max(1),
        }
    }

    fn tolerance(&self) -> u64 {
        self.interval.saturating_mul(self.burst - 1)
    }

    /// Decides one request at `now`, updating `tat` when it passes.
    pub(crate) fn decide(&self, tat: &mut u64, now: u64) -> Decision {
        let start = (*tat).max(now);
        let ahead = start - now;
        if ahead > self.tolerance() {
            return Decision::Deny {
                retry_after: ahead - self.tolerance(),
                reset: ahead,
            };
        }
        let next = start.saturating_add(self.interval);
        *tat = next;
        let reset = next - now;
        Decision::Allow {
            remaining: (self.tolerance() + self.interval - reset) / self.interval,
            reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn passes(d: Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    #[test]
    fn a_burst_passes_whole_and_the_next_is_refused() {
        let g = Gcra::new(10, SECOND, 5);
        let mut tat = 0;
        let now = SECOND;
        for i in 0..5 {
            match g.decide(&mut tat, now) {
                Decision::Allow { remaining, .. } => assert_eq!(remaining, 4 - i),
                d => panic!("request {i}: {d:?}"),
            }
        }
        match g.decide(&mut tat, now) {
            Decision::Deny { retry_after, reset } => {
                assert_eq!(retry_after, SECOND / 10, "one interval until the next");
                assert_eq!(reset, SECOND / 2, "five intervals until full");
            }
            d => panic!("sixth: {d:?}"),
        }
    }

    #[test]
    fn the_sustained_rate_passes_one_per_interval() {
        let g = Gcra::new(100, 60 * SECOND, 1);
        let mut tat = 0;
        let mut now = SECOND;
        assert!(passes(g.decide(&mut tat, now)));
        assert!(!passes(g.decide(&mut tat, now + g.interval - 1)));
        now += g.interval;
        assert!(passes(g.decide(&mut tat, now)));
        // Long idle: the burst is back, never more.
        now += 3600 * SECOND;
        assert!(passes(g.decide(&mut tat, now)));
        assert!(!passes(g.decide(&mut tat, now)));
    }

    #[test]
    fn refusals_do_not_push_the_next_pass_further() {
        let g = Gcra::new(1, SECOND, 1);
        let mut tat = 0;
        assert!(passes(g.decide(&mut tat, SECOND)));
        for _ in 0..1000 {
            assert!(!passes(g.decide(&mut tat, SECOND + 1)));
        }
        assert!(passes(g.decide(&mut tat, 2 * SECOND)));
    }
}
