//! Handshake flood defence: when the node is "under load", which handshakes take the
//! cookie detour, and how much Diffie-Hellman work a second may cost.
//!
//! Modelled on kernel WireGuard (drivers/net/wireguard/receive.c, ratelimiter.c), not on
//! gotatun's `RateLimiter`, which decides "under load" per source IP: with a limit of 100
//! per IP per second, 150 spoofed sources at 14 000 pps never trip it and every forged
//! initiation reaches the Diffie-Hellman. Here:
//!
//! - **Under load is global.** Handshake messages are counted per one-second window over
//!   all sources; past [`UNDER_LOAD_AT`] in a window the node is under load for
//!   [`UNDER_LOAD_FOR`] after (the kernel: handshake queue ≥ 1/8 full, kept for 1 s).
//!   Under load, a handshake without a valid MAC2 gets a cookie reply (whitepaper §5.3) and
//!   costs no DH; the cookie proves the sender receives at its source address.
//! - **Per source IP, only with a cookie.** Under load, messages with a valid MAC2 pass a
//!   token bucket per source IP ([`PER_IP_PER_SECOND`], burst [`PER_IP_BURST`], the
//!   kernel's figures): one address cannot use its cookie to flood. Outside load no
//!   per-IP limit applies, so many friends behind one public IP rekey freely.
//! - **A DH budget.** At most [`DH_PER_SECOND`] handshake messages per window reach the
//!   Diffie-Hellman at all; the rest are dropped (their senders retry after WireGuard's
//!   REKEY_TIMEOUT, whitepaper §6.4).
//!
//! Written by hand: the decision is a few counters, and gotatun's cookie machinery (MAC1,
//! MAC2, cookie replies) is reused through two of its `RateLimiter`s (see `Node`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Handshake messages per second, over all sources, past which the node is under load.
///
/// A party's own handshakes stay far below: each pair rekeys once per REKEY_AFTER_TIME
/// (120 s, whitepaper §6.1), so even 64 peers send about one message a second; a peer
/// joining sends one initiation per candidate address per second while punching (3–4).
/// Past 100 a second the node is being flooded, or a very large party is joining at once,
/// when a cookie round trip costs the joiners a few seconds and nothing else.
pub const UNDER_LOAD_AT: u32 = 100;
/// How long the node stays under load after a window went past [`UNDER_LOAD_AT`]
/// (kernel receive.c: `last_under_load` + 1 s).
pub const UNDER_LOAD_FOR: Duration = Duration::from_secs(1);
/// Handshake messages processed (MAC-valid, given to the Diffie-Hellman) per second, over
/// all sources. An initiation costs four X25519 operations (about 0.2 ms): 200 a second is
/// at most 4 % of a core, whatever arrives. Twice [`UNDER_LOAD_AT`], so it only bites when
/// messages with valid cookies arrive from many addresses at once.
pub const DH_PER_SECOND: u32 = 200;
/// Handshakes per second one source IP may start under load, with a valid cookie (kernel
/// ratelimiter.c: `PACKETS_PER_SECOND`).
pub const PER_IP_PER_SECOND: u32 = 20;
/// Messages one source IP may send back to back under load (kernel: `PACKETS_BURSTABLE`).
pub const PER_IP_BURST: u32 = 5;
/// Source IPs with a bucket at most. Only addresses that proved with a cookie that they
/// receive there get one, so spoofing cannot fill the table; an attacker holding more real
/// addresses than this can, and then a new address passes unbucketed to the DH budget
/// (the kernel refuses it instead; here a friend should not lose to a full table, and the
/// budget bounds the work either way).
const MAX_BUCKETS: usize = 4096;
/// The counting window.
const WINDOW: Duration = Duration::from_secs(1);

/// What to do with a handshake message that arrived (before its MACs are checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check MAC1 only, as usual.
    Normal,
    /// Under load: demand a valid MAC2 (cookie), or answer with a cookie reply.
    RequireCookie,
}

/// Why a MAC-valid handshake message was not processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source IP is over its bucket (under load, with a valid cookie).
    SourceRate,
    /// The second's Diffie-Hellman budget is spent.
    DhBudget,
}

/// The flood defence's state. Time comes from the caller.
#[derive(Debug)]
pub struct Guard {
    /// Start of the current counting window.
    window: Instant,
    /// Handshake messages seen in this window (valid or not).
    seen: u32,
    /// Handshake messages given to the Diffie-Hellman in this window.
    dh: u32,
    under_load_until: Option<Instant>,
    buckets: HashMap<IpAddr, Bucket>,
}

/// A token bucket in time units: each message costs `1 s / PER_IP_PER_SECOND`; the bucket
/// holds at most [`PER_IP_BURST`] of them (kernel ratelimiter.c counts tokens in ns too).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: Duration,
    last: Instant,
}

const TOKEN_COST: Duration = Duration::from_millis(1000 / PER_IP_PER_SECOND as u64);
const TOKEN_MAX: Duration =
    Duration::from_millis(1000 / PER_IP_PER_SECOND as u64 * PER_IP_BURST as u64);

impl Guard {
    /// A guard whose first window starts at `now`, not under load.
    pub fn new(now: Instant) -> Self {
        Self {
            window: now,
            seen: 0,
            dh: 0,
            under_load_until: None,
            buckets: HashMap::new(),
        }
    }

    /// Starts a new window when the current one is over; `true` when it did (the caller
    /// then resets gotatun's per-IP counts too). Idle buckets (full again) are forgotten.
    pub fn roll(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) < WINDOW {
            return false;
        }
        self.window = now;
        self.seen = 0;
        self.dh = 0;
        self.buckets
            .retain(|_, b| b.tokens + now.saturating_duration_since(b.last) < TOKEN_MAX);
        true
    }

    /// Counts a handshake message that arrived now (any handshake-shaped datagram, before
    /// its MACs are checked: the kernel counts its queue the same way) and says how to
    /// check it.
    pub fn admit(&mut self, now: Instant) -> Admission {
        self.roll(now);
        self.seen = self.seen.saturating_add(1);
        if self.seen > UNDER_LOAD_AT {
            self.under_load_until = Some(now + UNDER_LOAD_FOR);
        }
        if self.under_load(now) {
            Admission::RequireCookie
        } else {
            Admission::Normal
        }
    }

    /// Whether handshakes must carry a cookie now.
    pub fn under_load(&self, now: Instant) -> bool {
        self.under_load_until.is_some_and(|t| now < t)
    }

    /// A handshake message passed its MAC checks (MAC2 too when `with_cookie`): whether it
    /// may go on to the Diffie-Hellman.
    pub fn allow(&mut self, src: IpAddr, with_cookie: bool, now: Instant) -> Result<(), Refusal> {
        if with_cookie && !self.take_token(src, now) {
            return Err(Refusal::SourceRate);
        }
        if self.dh >= DH_PER_SECOND {
            return Err(Refusal::DhBudget);
        }
        self.dh += 1;
        Ok(())
    }

    fn take_token(&mut self, src: IpAddr, now: Instant) -> bool {
        let src = bucket_key(src);
        if !self.buckets.contains_key(&src) && self.buckets.len() >= MAX_BUCKETS {
            return true;
        }
        let b = self.buckets.entry(src).or_insert(Bucket {
            tokens: TOKEN_MAX,
            last: now,
        });
        b.tokens = (b.tokens + now.saturating_duration_since(b.last)).min(TOKEN_MAX);
        b.last = now;
        match b.tokens.checked_sub(TOKEN_COST) {
            Some(left) => {
                b.tokens = left;
                true
            }
            None => false,
        }
    }
}

/// IPv6 sources share a bucket per /64, which one host usually holds whole (kernel
/// ratelimiter.c does the same); an IPv4-mapped source is the IPv4 address it maps.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => ip.to_canonical(),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // one real instant as the virtual epoch
    fn epoch() -> Instant {
        Instant::now()
    }

    #[test]
    fn an_ipv6_host_is_one_bucket_per_64_and_a_mapped_ipv4_is_its_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(bucket_key(a), bucket_key(b));
        assert_ne!(bucket_key(a), bucket_key(c));
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().expect("ip");
        let v4: IpAddr = "198.51.100.7".parse().expect("ip");
        assert_eq!(bucket_key(mapped), v4);
        // Five back to back from anywhere in the /64, then it is empty.
        let (mut g, now) = (Guard::new(epoch()), epoch());
        for ip in [a, b, a, b, a] {
            assert_eq!(g.allow(ip, true, now), Ok(()));
        }
        assert_eq!(g.allow(b, true, now), Err(Refusal::SourceRate));
        assert_eq!(g.allow(c, true, now), Ok(()));
    }

    #[test]
    fn a_full_bucket_table_lets_new_addresses_through_to_the_budget() {
        let now = epoch();
        let mut g = Guard::new(now);
        for i in 0..MAX_BUCKETS as u32 {
            g.take_token(IpAddr::from(std::net::Ipv4Addr::from(i)), now);
        }
        assert_eq!(g.buckets.len(), MAX_BUCKETS);
        let new = IpAddr::from(std::net::Ipv4Addr::new(203, 0, 113, 1));
        for _ in 0..10 {
            assert!(g.take_token(new, now), "a new address is not refused");
        }
        // Buckets that filled up again are forgotten at the next window.
        assert!(g.roll(now + Duration::from_secs(1)));
        assert!(g.buckets.is_empty());
    }

    #[test]
    fn a_window_past_the_threshold_keeps_the_node_under_load_for_a_second() {
        let t0 = epoch();
        let mut g = Guard::new(t0);
        for _ in 0..UNDER_LOAD_AT {
            assert_eq!(g.admit(t0), Admission::Normal);
        }
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(g.admit(t1), Admission::RequireCookie);
        assert!(g.under_load(t1 + UNDER_LOAD_FOR - Duration::from_nanos(1)));
        assert!(!g.under_load(t1 + UNDER_LOAD_FOR));
        // The window's budget: 200 DH, then refused, whoever asks.
        let ip = IpAddr::from(std::net::Ipv4Addr::new(203, 0, 113, 1));
        for _ in 0..DH_PER_SECOND {
            assert_eq!(g.allow(ip, false, t1), Ok(()));
        }
        assert_eq!(g.allow(ip, false, t1), Err(Refusal::DhBudget));
        assert_eq!(g.allow(ip, false, t0 + WINDOW), Err(Refusal::DhBudget));
        g.roll(t0 + WINDOW);
        assert_eq!(g.allow(ip, false, t0 + WINDOW), Ok(()));
    }
}
