//! Allocation quotas (RFC 8656 §7.2 486 "Allocation Quota Reached") and byte-rate token
//! buckets.
//!
//! One client must not be able to take every relay port: a probe with 26 throw-away
//! identities did in 0.2 s. So allocations are counted per user id, per source IP and
//! per party (the part of a user id after its last '.', see [`party_of`]), under a
//! relay-wide cap; each count has its own limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Which limit refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Ip,
    Party,
    /// The relay-wide cap.
    Total,
}

/// Limits in force (after [`super::Config`] was reconciled with the relay's ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub user: usize,
    pub ip: usize,
    pub party: usize,
    pub total: usize,
}

/// Live allocations by user id, source IP and party.
#[derive(Debug, Default)]
pub struct Usage {
    user: HashMap<String, usize>,
    ip: HashMap<IpAddr, usize>,
    party: HashMap<String, usize>,
    total: usize,
}

/// The party a TURN REST user id belongs to: control planes issue
/// `<device>.<party id>`, so the part after the last '.'. An id without a '.' is a party
/// of its own (its key is kept apart from dotted parties' so neither can fill the other).
pub fn party_of(user: &str) -> String {
    match user.rsplit_once('.') {
        Some((_, party)) => format!("p:{party}"),
        None => format!("u:{user}"),
    }
}

/// What one client is, for the per-IP quota: an IPv4 address (also when it arrives
/// IPv4-mapped on a dual-stack socket), or an IPv6 /64, which one host usually holds whole
/// and could otherwise walk through a fresh address per allocation.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::from(seg)
            }
        },
    }
}

impl Usage {
    /// Which limit one more allocation for `user` from `ip` would break, if any. The
    /// narrowest first, so the refusal names the client's own limit.
    pub fn check(&self, limits: &Limits, user: &str, ip: IpAddr) -> Result<(), Kind> {
        let user_n = self.user.get(user).copied().unwrap_or(0);
        let ip_n = self.ip.get(&client_key(ip)).copied().unwrap_or(0);
        let party_n = self.party.get(&party_of(user)).copied().unwrap_or(0);
        if user_n >= limits.user {
            Err(Kind::User)
        } else if ip_n >= limits.ip {
            Err(Kind::Ip)
        } else if party_n >= limits.party {
            Err(Kind::Party)
        } else if self.total >= limits.total {
            Err(Kind::Total)
        } else {
            Ok(())
        }
    }

    pub fn add(&mut self, user: &str, ip: IpAddr) {
        *self.user.entry(user.to_owned()).or_default() += 1;
        *self.ip.entry(client_key(ip)).or_default() += 1;
        *self.party.entry(party_of(user)).or_default() += 1;
        self.total += 1;
    }

    pub fn remove(&mut self, user: &str, ip: IpAddr) {
        decrement(&mut self.user, user.to_owned());
        decrement(&mut self.ip, client_key(ip));
        decrement(&mut self.party, party_of(user));
        self.total = self.total.saturating_sub(1);
    }

    /// Allocations `user` holds.
    pub fn of_user(&self, user: &str) -> usize {
        self.user.get(user).copied().unwrap_or(0)
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// A token bucket of bytes: `rate` per second, one second of burst.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    /// `None` until first used: a new bucket is full.
    refilled: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: u64) -> Self {
        Self {
            tokens: rate as f64,
            refilled: None,
        }
    }

    /// Adds what `rate` earned since the last refill; then whether `bytes` fit.
    pub fn refill(&mut self, rate: u64, now: Instant, bytes: usize) -> bool {
        let elapsed = self
            .refilled
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.refilled = Some(now);
        self.tokens = (self.tokens + elapsed * rate as f64).min(rate as f64);
        self.tokens >= bytes as f64
    }

    pub fn take(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parties_are_the_part_after_the_last_dot() {
        assert_eq!(
            party_of("0123456789abcdef.fedcba9876543210"),
            "p:fedcba9876543210"
        );
        assert_eq!(party_of("a.b.c"), "p:c");
        assert_eq!(party_of("alice"), "u:alice");
        assert_eq!(party_of(""), "u:");
        // A dotless id named like a party does not share that party's count.
        assert_ne!(party_of("fedcba9876543210"), party_of("x.fedcba9876543210"));
    }

    #[test]
    fn each_limit_refuses_in_turn_and_releases_free_it_again() {
        let limits = Limits {
            user: 2,
            ip: 3,
            party: 4,
            total: 5,
        };
        let ip = |n: u8| IpAddr::from([198, 51, 100, n]);
        let mut u = Usage::default();
        u.add("d1.p", ip(1));
        u.add("d1.p", ip(1));
        assert_eq!(u.check(&limits, "d1.p", ip(9)), Err(Kind::User));
        u.add("d2.p", ip(1));
        assert_eq!(u.check(&limits, "d3.q", ip(1)), Err(Kind::Ip));
        u.add("d3.p", ip(2));
        assert_eq!(u.check(&limits, "d4.p", ip(3)), Err(Kind::Party));
        u.add("d5.q", ip(3));
        assert_eq!(u.check(&limits, "d6.r", ip(4)), Err(Kind::Total));
        u.remove("d1.p", ip(1));
        assert_eq!(u.check(&limits, "d6.r", ip(4)), Ok(()));
        assert_eq!(u.of_user("d1.p"), 1);
        u.remove("d1.p", ip(1));
        assert_eq!(u.of_user("d1.p"), 0);
        assert!(!u.user.contains_key("d1.p"), "empty counts are dropped");
    }

    #[test]
    fn an_ipv6_host_counts_once_per_64() {
        let limits = Limits {
            user: 100,
            ip: 2,
            party: 100,
            total: 100,
        };
        let v6 = |s: &str| s.parse::<IpAddr>().expect("ip");
        let mut u = Usage::default();
        u.add("d1.p", v6("2001:db8:1:2::1"));
        u.add("d2.p", v6("2001:db8:1:2::2"));
        // A fresh address in the same /64 is the same client.
        assert_eq!(
            u.check(&limits, "d3.p", v6("2001:db8:1:2:ffff::9")),
            Err(Kind::Ip)
        );
        assert_eq!(u.check(&limits, "d3.p", v6("2001:db8:1:3::1")), Ok(()));
        // IPv4-mapped is its IPv4 address.
        u.add("d4.q", v6("::ffff:198.51.100.7"));
        u.add("d5.q", IpAddr::from([198, 51, 100, 7]));
        assert_eq!(
            u.check(&limits, "d6.q", IpAddr::from([198, 51, 100, 7])),
            Err(Kind::Ip)
        );
        u.remove("d4.q", v6("::ffff:198.51.100.7"));
        assert_eq!(
            u.check(&limits, "d6.q", IpAddr::from([198, 51, 100, 7])),
            Ok(())
        );
    }
}
