//! Which peers an allocation may reach (RFC 8656 §17.4 and the TURN-SSRF findings that
//! coturn answers with `no-loopback-peers` and `denied-peer-ip`).
//!
//! A relay is a UDP door from the internet into whatever its host can reach. So peers in
//! special-use ranges (private, shared, loopback, link-local, "this network", reserved,
//! multicast, IPv4 inside IPv6, unique-local) are refused unless the operator opens a
//! range with [`Cidr`]s, and the relay's own addresses are refused always: allowed ranges
//! never reopen them. The one exception is an explicit list of exact transport addresses
//! (`Config::self_peers`): in host mode the host's own WireGuard socket shares the
//! relay's IP, and guests must reach it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IP range in CIDR notation ("10.0.0.0/8", "fd00::/8"); host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not ADDRESS/PREFIX (e.g. 10.0.0.0/8 or fd00::/8)")]
    Form(String),
    #[error("{0:?} is not an IP address")]
    Address(String),
    #[error("prefix length {len} is out of range for {net} (at most {max})")]
    Length { net: IpAddr, len: String, max: u8 },
    #[error("{0} has bits set past its prefix length; did you mean {1}?")]
    HostBits(String, Cidr),
}

impl Cidr {
    /// The range `net`/`len`; `None` if `len` is too long or `net` has host bits set.
    pub fn new(net: IpAddr, len: u8) -> Option<Self> {
        let max = max_len(net);
        (len <= max && mask(net, len) == net).then_some(Self { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.len) == self.net
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (net, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError::Form(s.to_owned()))?;
        let net: IpAddr = net
            .parse()
            .map_err(|_| CidrError::Address(net.to_owned()))?;
        let max = max_len(net);
        let len_ok = len.parse::<u8>().ok().filter(|l| *l <= max);
        let Some(len_n) = len_ok else {
            return Err(CidrError::Length {
                net,
                len: len.to_owned(),
                max,
            });
        };
        Cidr::new(net, len_n).ok_or_else(|| {
            CidrError::HostBits(
                s.to_owned(),
                Cidr {
                    net: mask(net, len_n),
                    len: len_n,
                },
            )
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

fn max_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `ip` with every bit past the first `len` cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// The special-use range `ip` falls in, by name, or `None` for an ordinary unicast
/// address. These are refused unless an allowed range covers them (RFC 6890 registry
/// entries that lead into someone's network or back into the relay's host).
pub fn special_use(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        (0, _) => "this network (0/8)",
        (10, _) => "private (10/8)",
        (100, 64..=127) => "shared address space (100.64/10)",
        (127, _) => "loopback (127/8)",
        (169, 254) => "link-local (169.254/16)",
        (172, 16..=31) => "private (172.16/12)",
        (192, 168) => "private (192.168/16)",
        (224..=239, _) => "multicast (224/4)",
        (240..=255, _) => "reserved or broadcast (240/4)",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    Some(if ip.is_unspecified() {
        "unspecified (::)"
    } else if ip.is_loopback() {
        "loopback (::1)"
    } else if ip.to_ipv4_mapped().is_some() {
        "IPv4-mapped (::ffff:0:0/96)"
    } else if seg[..6] == [0; 6] {
        "IPv4-compatible (::/96)"
    } else if seg[..3] == [0x64, 0xff9b, 1] {
        // RFC 8215: a NAT64 prefix for the operator's own translators, which reach
        // whatever IPv4 they were set up for (often private networks).
        "local-use NAT64 (64:ff9b:1::/48)"
    } else if seg[0] & 0xfe00 == 0xfc00 {
        "unique local (fc00::/7)"
    } else if seg[0] & 0xffc0 == 0xfe80 {
        "link-local (fe80::/10)"
    } else if seg[0] & 0xff00 == 0xff00 {
        "multicast (ff00::/8)"
    } else {
        return None;
    })
}

/// The IPv4 address inside an IPv4-mapped or IPv4-compatible IPv6 address, or behind the
/// well-known NAT64 prefix (RFC 6052 `64:ff9b::/96`: a relay on an IPv6 network with NAT64
/// reaches that IPv4 address through it, so it is judged as that address).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = ip.segments();
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::from(u32::from(seg[6]) << 16 | u32::from(seg[7])));
    }
    (seg[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback())
        .then(|| Ipv4Addr::from(u32::from(seg[6]) << 16 | u32::from(seg[7])))
}

/// Why a peer was refused, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// One of the relay's own addresses (or one that always means "this host").
    Own,
    /// A special-use range no allowed range covers.
    Special(&'static str),
}

/// The relay's peer policy: allowed ranges, its own addresses, the self-peer exceptions.
#[derive(Debug, Clone, Default)]
pub struct PeerFilter {
    allow: Vec<Cidr>,
    own: BTreeSet<IpAddr>,
    self_peers: BTreeSet<SocketAddr>,
}

impl PeerFilter {
    /// A filter opening `allow`, refusing the `own` addresses of the relay, and letting
    /// exactly the transport addresses in `self_peers` through whatever their IP.
    pub fn new(
        allow: &[Cidr],
        own: impl IntoIterator<Item = IpAddr>,
        self_peers: &[SocketAddr],
    ) -> Self {
        Self {
            allow: allow.to_vec(),
            own: own.into_iter().collect(),
            self_peers: self_peers.iter().copied().collect(),
        }
    }

    /// Whether a permission for `ip` may be installed (CreatePermission: ports do not
    /// count, RFC 8656 §9). An IP of a self-peer may hold one; the datagrams through it
    /// are then checked by [`PeerFilter::addr`].
    pub fn ip(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.self_peers.iter().any(|p| p.ip() == ip) {
            return Ok(());
        }
        self.check_ip(ip)
    }

    /// Whether data may go to (or come from) the transport address `addr`.
    pub fn addr(&self, addr: SocketAddr) -> Result<(), Refused> {
        if self.self_peers.contains(&addr) {
            return Ok(());
        }
        self.check_ip(addr.ip())
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        let v4_inside = match ip {
            IpAddr::V6(v6) => embedded_v4(v6),
            IpAddr::V4(_) => None,
        };
        // The host itself: its addresses, and the two that mean "this host" or "every
        // host on its link" whatever the allowed ranges say (a datagram to 0.0.0.0 is
        // delivered locally on Linux).
        let always_own = ip.is_unspecified() || ip == IpAddr::V4(Ipv4Addr::BROADCAST);
        if always_own
            || self.own.contains(&ip)
            || v4_inside.is_some_and(|v4| self.own.contains(&IpAddr::V4(v4)))
        {
            return Err(Refused::Own);
        }
        // An IPv4 address inside IPv6 passes only if the IPv4 address itself would.
        if let Some(v4) = v4_inside {
            self.check_ip(IpAddr::V4(v4))?;
        }
        match special_use(ip) {
            Some(range) if !self.allow.iter().any(|c| c.contains(ip)) => {
                Err(Refused::Special(range))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    #[test]
    fn cidrs_parse_and_bad_ones_say_why() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr(" fd00::/8 ").to_string(), "fd00::/8");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("192.0.2.7/32").to_string(), "192.0.2.7/32");
        assert!(cidr("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!cidr("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:10.0.0.1")));
        assert!(cidr("fd00::/8").contains(ip("fd12::1")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.1")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        let err = |s: &str| s.parse::<Cidr>().expect_err(s).to_string();
        assert!(err("10.0.0.0").contains("not ADDRESS/PREFIX"));
        assert!(err("10.0.0/8").contains("not an IP address"));
        assert!(err("10.0.0.0/33").contains("out of range"));
        assert!(err("fd00::/129").contains("out of range"));
        assert!(err("10.0.0.0/x").contains("out of range"));
        assert!(err("10.1.0.0/8").contains("did you mean 10.0.0.0/8"));
    }

    #[test]
    fn every_special_use_range_is_refused_by_default_in_both_families() {
        let f = PeerFilter::new(&[], [], &[]);
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.0.1",
            "192.168.255.254",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "::ffff:203.0.113.5",
            "::10.0.0.1",
            "::203.0.113.5",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "ff0e::1",
            // NAT64 to the metadata service and a private host, and the local-use prefix.
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::a00:5",
            "64:ff9b::1",
            "64:ff9b:1::c000:202",
        ];
        for peer in refused {
            assert!(f.ip(ip(peer)).is_err(), "{peer} allowed");
            assert!(
                f.addr(SocketAddr::new(ip(peer), 9)).is_err(),
                "{peer}:9 allowed"
            );
        }
        let allowed = [
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.66.2",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.167.255.255",
            "192.169.0.1",
            "192.0.2.2",
            "198.51.100.2",
            "203.0.113.10",
            "198.18.0.2",
            "223.255.255.255",
            "2001:db8::1",
            "2a00:1450::1",
            "fbff::1",
            "fec0::1",
            // NAT64 to a public IPv4 address.
            "64:ff9b::cb00:710a",
        ];
        for peer in allowed {
            assert_eq!(f.ip(ip(peer)), Ok(()), "{peer} refused");
        }
    }

    #[test]
    fn allowed_ranges_open_special_ranges_but_never_the_relay_itself() {
        let own = [ip("10.1.0.5"), ip("203.0.113.10"), ip("fd00::5")];
        let f = PeerFilter::new(
            &[cidr("10.0.0.0/8"), cidr("fd00::/8"), cidr("127.0.0.0/8")],
            own,
            &[],
        );
        assert_eq!(f.ip(ip("10.9.8.7")), Ok(()));
        assert_eq!(f.ip(ip("fd00::7")), Ok(()));
        assert_eq!(f.ip(ip("127.0.0.2")), Ok(()));
        // Not covered: still refused.
        assert!(matches!(
            f.ip(ip("192.168.1.1")),
            Err(Refused::Special(r)) if r.contains("192.168")
        ));
        assert!(f.ip(ip("fe80::1")).is_err());
        // The relay's own addresses, in every spelling, stay closed.
        for peer in [
            "10.1.0.5",
            "203.0.113.10",
            "fd00::5",
            "::ffff:203.0.113.10",
            "::203.0.113.10",
            "0.0.0.0",
            "::",
            "255.255.255.255",
        ] {
            assert_eq!(f.ip(ip(peer)), Err(Refused::Own), "{peer}");
        }
        // Opening everything still leaves the relay itself closed, and IPv4 inside IPv6
        // passes only where the IPv4 address would.
        let wide = PeerFilter::new(
            &[cidr("0.0.0.0/0"), cidr("::/0")],
            [ip("203.0.113.10")],
            &[],
        );
        assert_eq!(wide.ip(ip("192.168.1.1")), Ok(()));
        assert_eq!(wide.ip(ip("::ffff:192.168.1.1")), Ok(()));
        assert_eq!(wide.ip(ip("203.0.113.10")), Err(Refused::Own));
        let v6_only = PeerFilter::new(&[cidr("::ffff:0:0/96")], [], &[]);
        assert!(v6_only.ip(ip("::ffff:10.0.0.1")).is_err());
        assert_eq!(v6_only.ip(ip("::ffff:203.0.113.5")), Ok(()));
    }

    #[test]
    fn self_peers_are_the_only_way_onto_the_relays_own_addresses() {
        let host_wg: SocketAddr = "203.0.113.10:51820".parse().expect("addr");
        let lan_host: SocketAddr = "192.168.1.10:51820".parse().expect("addr");
        let f = PeerFilter::new(
            &[],
            [ip("203.0.113.10"), ip("192.168.1.10")],
            &[host_wg, lan_host],
        );
        // Permissions are per IP: the self-peer's IP may hold one...
        assert_eq!(f.ip(ip("203.0.113.10")), Ok(()));
        assert_eq!(f.ip(ip("192.168.1.10")), Ok(()));
        // ...but data goes only to and from the exact transport addresses listed.
        assert_eq!(f.addr(host_wg), Ok(()));
        assert_eq!(f.addr(lan_host), Ok(()));
        for other in ["203.0.113.10:3478", "203.0.113.10:50001", "192.168.1.10:22"] {
            let other: SocketAddr = other.parse().expect("addr");
            assert_eq!(f.addr(other), Err(Refused::Own), "{other}");
        }
        // Other private addresses stay closed.
        assert!(f.ip(ip("192.168.1.11")).is_err());
    }
}
