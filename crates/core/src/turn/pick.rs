//! Which relays to hold allocations on: the control plane's order, minus relays that
//! failed recently, with the failed ones as the last resort.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A relay that has held no allocation for this long (its requests time out, or it
/// refuses us) has failed.
pub const FAIL_AFTER: Duration = Duration::from_secs(8);
/// A failed relay is passed over for this long while others are offered.
pub const FAILED_MEMORY: Duration = Duration::from_secs(300);

/// Remembers which relays failed and picks the ones to use (sans-IO).
#[derive(Debug, Default)]
pub struct RelayPicker {
    /// Relays in use without an allocation, since when.
    down_since: HashMap<SocketAddr, Instant>,
    /// Relays that failed, and when they last did.
    failed: HashMap<SocketAddr, Instant>,
}

impl RelayPicker {
    /// Reports whether the client for `relay` holds an allocation now. Returns true when
    /// this makes the relay count as failed (just now).
    pub fn observe(&mut self, relay: SocketAddr, allocated: bool, now: Instant) -> bool {
        if allocated {
            self.down_since.remove(&relay);
            self.failed.remove(&relay);
            return false;
        }
        let since = *self.down_since.entry(relay).or_insert(now);
        if now.saturating_duration_since(since) < FAIL_AFTER {
            return false;
        }
        let first = !self.failed_recently(relay, now);
        self.failed.insert(relay, now);
        first
    }

    /// Failed within [`FAILED_MEMORY`].
    pub fn failed_recently(&self, relay: SocketAddr, now: Instant) -> bool {
        self.failed
            .get(&relay)
            .is_some_and(|at| now.saturating_duration_since(*at) < FAILED_MEMORY)
    }

    /// Up to `n` relays out of `offered` (best first, as the control plane ranks them):
    /// relays in `held` that work stay (no churn of relayed addresses), then the others
    /// that have not failed recently in offered order, then recently failed ones, the
    /// longest ago first, so something is always tried.
    pub fn choose(
        &mut self,
        offered: &[SocketAddr],
        held: &[SocketAddr],
        n: usize,
        now: Instant,
    ) -> Vec<SocketAddr> {
        self.failed
            .retain(|_, at| now.saturating_duration_since(*at) < FAILED_MEMORY);
        self.down_since.retain(|r, _| held.contains(r));
        let healthy = |r: &SocketAddr| !self.failed.contains_key(r);
        let mut out: Vec<SocketAddr> = offered
            .iter()
            .filter(|r| held.contains(r) && healthy(r))
            .copied()
            .collect();
        out.extend(
            offered
                .iter()
                .filter(|r| !held.contains(r) && healthy(r))
                .copied(),
        );
        let mut failed: Vec<(Instant, SocketAddr)> = offered
            .iter()
            .filter_map(|r| self.failed.get(r).map(|at| (*at, *r)))
            .collect();
        failed.sort();
        out.extend(failed.into_iter().map(|(_, r)| r));
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(i: u8) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, i], 3478))
    }

    fn start() -> Instant {
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    #[test]
    fn a_relay_that_fails_is_replaced_by_the_next_and_retried_later() {
        let t0 = start();
        let mut p = RelayPicker::default();
        let offered = [r(1), r(2), r(3)];
        let held = p.choose(&offered, &[], 2, t0);
        assert_eq!(held, [r(1), r(2)]);
        // r1 never allocates; r2 does.
        assert!(!p.observe(r(1), false, t0));
        p.observe(r(2), true, t0);
        assert!(!p.observe(r(1), false, t0 + FAIL_AFTER / 2));
        assert_eq!(
            p.choose(&offered, &held, 2, t0 + FAIL_AFTER / 2),
            [r(1), r(2)]
        );
        let t1 = t0 + FAIL_AFTER;
        assert!(p.observe(r(1), false, t1), "failed now");
        assert!(!p.observe(r(1), false, t1), "reported once");
        assert!(p.failed_recently(r(1), t1));
        // The working one stays, the next in line replaces the failed one.
        let held = p.choose(&offered, &held, 2, t1);
        assert_eq!(held, [r(2), r(3)]);
        // Five minutes on, r1 is a candidate again, after the ones that work.
        let later = t1 + FAILED_MEMORY;
        p.observe(r(2), true, later);
        p.observe(r(3), true, later);
        assert_eq!(p.choose(&offered, &held, 3, later), [r(2), r(3), r(1)]);
    }

    #[test]
    fn failed_relays_are_the_fallback_when_nothing_else_is_offered() {
        let t0 = start();
        let mut p = RelayPicker::default();
        let offered = [r(1), r(2)];
        let held = p.choose(&offered, &[], 2, t0);
        for relay in offered {
            p.observe(relay, false, t0);
        }
        p.observe(r(2), false, t0 + FAIL_AFTER);
        p.observe(r(1), false, t0 + FAIL_AFTER + Duration::from_secs(1));
        let t = t0 + FAIL_AFTER + Duration::from_secs(2);
        // Both failed: both are kept, the one that failed longest ago first.
        assert_eq!(p.choose(&offered, &held, 2, t), [r(2), r(1)]);
        assert_eq!(p.choose(&offered, &held, 1, t), [r(2)]);
        // One that allocates again is healthy at once.
        p.observe(r(1), true, t);
        assert_eq!(p.choose(&offered, &held, 1, t), [r(1)]);
    }
}
