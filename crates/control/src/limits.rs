//! Quotas against one client taking the control plane for itself: token buckets keyed by
//! who asks (a device, an IP address, a party and an IP), and the connection limits the
//! accept loop enforces (`server`).
//!
//! Written here rather than taken from a crate: the buckets take `now` as an argument (the
//! tests drive them without a clock), must stay bounded in memory under a flood of new keys,
//! and answer how long to wait (`Retry-After`), which is all this needs.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `burst` at once, then one more every `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub every: Duration,
}

impl Quota {
    pub const fn new(burst: u32, every: Duration) -> Self {
        Self { burst, every }
    }
}

/// The control plane's limits; [`Limits::default`] is the product's.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's head must arrive within this; it is also how long a kept-alive
    /// connection may sit idle between requests (hyper's header-read timer covers both).
    pub header_read_timeout: Duration,
    /// A whole request (body and handler) must finish within this; WebSockets are exempt
    /// once upgraded.
    pub request_timeout: Duration,
    /// Open TCP connections from one client address (an IPv6 /64 counts as one); more are
    /// closed as soon as they are accepted.
    pub connections_per_ip: usize,
    /// Open WebSockets of one device; a new one closes the oldest.
    pub websockets_per_device: usize,
    /// Challenge and token requests from one address (a sign-in is two).
    pub sign_ins_per_ip: Quota,
    /// Tokens issued to one device (successful sign-ins).
    pub sign_ins_per_device: Quota,
    /// Parties created by one device, and from one address.
    pub parties_per_device: Quota,
    pub parties_per_ip: Quota,
    /// Refused joins (wrong secret or unknown party) from one address to one party id, and
    /// from one address overall.
    pub invite_tries_per_party_ip: Quota,
    pub invite_tries_per_ip: Quota,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            // A LAN party of 20 behind one NAT holds about two each (a WebSocket and a
            // pooled HTTP connection).
            connections_per_ip: 64,
            // One per daemon session; a few more for a reconnect racing the old socket's
            // death and a web page.
            websockets_per_device: 4,
            // 30 players behind one NAT all signing in at once, then one a second.
            sign_ins_per_ip: Quota::new(60, Duration::from_secs(1)),
            // A daemon signs in once per start and renews without signing in.
            sign_ins_per_device: Quota::new(10, Duration::from_secs(30)),
            parties_per_device: Quota::new(5, Duration::from_secs(60)),
            parties_per_ip: Quota::new(20, Duration::from_secs(10)),
            // 10 a minute: plenty for typos, nothing for guessing a 128-bit secret.
            invite_tries_per_party_ip: Quota::new(10, Duration::from_secs(6)),
            invite_tries_per_ip: Quota::new(30, Duration::from_secs(2)),
        }
    }
}

/// Most keys one limiter remembers; past it, full buckets are forgotten first.
const MAX_KEYS: usize = 100_000;

/// Token buckets, one per key.
pub struct Limiter<K> {
    quota: Quota,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long until one is back.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        self.check(key, now)?;
        self.spend(key, now);
        Ok(())
    }

    /// Whether `key` has a token, without taking it.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let buckets = self.lock();
        let tokens = buckets
            .get(key)
            .map_or(f64::from(self.quota.burst), |b| self.refilled(b, now));
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(self.quota.every.mul_f64((1.0 - tokens).max(0.0)))
        }
    }

    /// Takes one token for `key` (down to zero).
    pub fn spend(&self, key: &K, now: Instant) {
        let mut buckets = self.lock();
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            self.make_room(&mut buckets, now);
        }
        let full = f64::from(self.quota.burst);
        let tokens = buckets.get(key).map_or(full, |b| self.refilled(b, now));
        buckets.insert(
            key.clone(),
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            },
        );
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let every = self.quota.every.as_secs_f64();
        let gained = if every > 0.0 {
            now.saturating_duration_since(b.at).as_secs_f64() / every
        } else {
            f64::INFINITY
        };
        (b.tokens + gained).min(f64::from(self.quota.burst))
    }

    /// Forgets full buckets (they hold nothing a fresh one would not); if every bucket is
    /// in use, forgets an arbitrary one rather than refusing everyone.
    fn make_room(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        let full = f64::from(self.quota.burst);
        buckets.retain(|_, b| self.refilled(b, now) < full);
        if buckets.len() >= MAX_KEYS
            && let Some(k) = buckets.keys().next().cloned()
        {
            buckets.remove(&k);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Bucket>> {
        // Each operation leaves the map consistent; a panic elsewhere changes nothing here.
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The address a client is counted under: IPv4 as is (also when it arrives IPv4-mapped on
/// a dual-stack socket), IPv6 by its /64, the smallest block a host is usually given.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_interval() {
        let l = Limiter::new(Quota::new(3, Duration::from_secs(10)));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take(&"a", t0), Ok(()));
        }
        assert_eq!(l.take(&"a", t0), Err(Duration::from_secs(10)));
        // Another key is not affected.
        assert_eq!(l.take(&"b", t0), Ok(()));
        // Half an interval later: still refused, and told to wait the other half.
        assert_eq!(
            l.take(&"a", t0 + Duration::from_secs(5)),
            Err(Duration::from_secs(5))
        );
        assert_eq!(l.take(&"a", t0 + Duration::from_secs(10)), Ok(()));
        assert!(l.take(&"a", t0 + Duration::from_secs(10)).is_err());
        // Long idle: back to the burst, never above it.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.take(&"a", later), Ok(()));
        }
        assert!(l.take(&"a", later).is_err());
    }

    #[test]
    fn check_does_not_spend_and_spend_counts_failures_only() {
        let l = Limiter::new(Quota::new(2, Duration::from_secs(6)));
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.check(&1, t0), Ok(()));
        }
        l.spend(&1, t0);
        l.spend(&1, t0);
        l.spend(&1, t0); // at zero already: stays there
        assert_eq!(l.check(&1, t0), Err(Duration::from_secs(6)));
        assert_eq!(l.check(&1, t0 + Duration::from_secs(6)), Ok(()));
    }

    #[test]
    fn the_map_stays_bounded_under_many_keys() {
        let l = Limiter::new(Quota::new(1, Duration::from_secs(60)));
        let t0 = Instant::now();
        for k in 0..(MAX_KEYS + 10) {
            l.spend(&k, t0);
        }
        assert!(l.lock().len() <= MAX_KEYS);
        // Keys whose buckets refilled make room for new ones.
        let later = t0 + Duration::from_secs(61);
        l.spend(&usize::MAX, later);
        assert!(l.lock().len() <= 1);
    }

    #[test]
    fn clients_are_counted_by_ipv4_address_or_ipv6_64() {
        let v4: IpAddr = "198.51.100.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().expect("ip");
        assert_eq!(client_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
    }
}
