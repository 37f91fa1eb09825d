//! Port mapping on the home router: PCP (RFC 6887) `MAP`, falling back to NAT-PMP
//! (RFC 6886), for the daemon's one UDP socket.
//!
//! A router that grants a mapping forwards every packet sent to its public address and the
//! mapped port to this socket, whoever sends it: the mapped address is a candidate that
//! works even behind a NAT whose own mappings depend on the destination ("symmetric"), so a
//! pair where both NATs are hard can still go direct.
//!
//! Both protocols are UDP to the gateway's port 5351 and are sent from the daemon's own
//! socket; the answers come back to it from `gateway:5351`, which is how the data plane
//! tells them from STUN (their first bytes look alike). UPnP IGD, the third way routers
//! forward ports, runs over HTTP; its messages are in [`igd`] and the daemon tries it when
//! neither protocol here is answered.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub mod igd;

/// The PCP and NAT-PMP server port on the gateway.
pub const SERVER_PORT: u16 = 5351;
/// The lifetime asked for (RFC 6886 §3.3 recommends two hours); renewed at half of what
/// the gateway grants.
const LIFETIME: Duration = Duration::from_secs(7200);
/// First retransmission timeout; it doubles per send (RFC 6886 §3.1 starts at 250 ms).
const RTO: Duration = Duration::from_millis(250);
/// Sends per protocol before it counts as not spoken here: 0, 0.25, 0.75, 1.75 s, and the
/// last answer is awaited until 3.75 s.
const MAX_SENDS: u32 = 4;
/// After both protocols went unanswered (no gateway, or one without port mapping), try
/// again this much later: a router's setting can change.
const RETRY_IDLE: Duration = Duration::from_secs(300);
/// Never renew more often than this, whatever lifetime a gateway grants.
const MIN_RENEW: Duration = Duration::from_secs(30);

const PCP_VERSION: u8 = 2;
const PCP_OP_MAP: u8 = 1;
const PCP_RESPONSE: u8 = 0x80;
const PCP_REQUEST_LEN: usize = 60;
const NATPMP_OP_ADDRESS: u8 = 0;
const NATPMP_OP_MAP_UDP: u8 = 1;
const UDP: u8 = 17;
/// Result code of both protocols for "this version is not spoken here".
const UNSUPPORTED_VERSION: u16 = 1;

/// Which protocol the gateway granted the mapping through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Pcp,
    NatPmp,
    UpnpIgd,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "nat-pmp",
            Protocol::UpnpIgd => "upnp-igd",
        }
    }
}

/// A port mapping the gateway granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub protocol: Protocol,
    /// The router's public address and port that forward to the socket.
    pub external: SocketAddrV4,
    pub expires: Instant,
}

/// The two protocols spoken on the socket (UPnP IGD is the daemon's, over HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Pcp,
    NatPmp,
}

impl Wire {
    fn protocol(self) -> Protocol {
        match self {
            Wire::Pcp => Protocol::Pcp,
            Wire::NatPmp => Protocol::NatPmp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Requests of `protocol` out; `sends` so far, the next at `next`.
    Asking {
        protocol: Wire,
        sends: u32,
        next: Instant,
    },
    /// Mapped (or given up); ask again at `at` (renewal, or a new try).
    Waiting { at: Instant },
}

/// Keeps one UDP port mapping on the gateway for the socket on `port` (sans-IO).
#[derive(Debug)]
pub struct PortMapper {
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    port: u16,
    nonce: [u8; 12],
    phase: Phase,
    mapping: Option<Mapping>,
    /// NAT-PMP gives the public address and the port in separate answers.
    natpmp_ip: Option<Ipv4Addr>,
    natpmp_port: Option<(u16, Duration)>,
    /// The protocol that worked last; renewals start with it.
    known: Option<Wire>,
    outbox: Vec<Vec<u8>>,
    failures: u64,
}

impl PortMapper {
    /// Starts asking `gateway` to map UDP `port` of this host, whose address on the
    /// gateway's network is `client` (PCP checks it against the packet's source).
    pub fn new(gateway: Ipv4Addr, client: Ipv4Addr, port: u16, seed: u64, now: Instant) -> Self {
        let mut nonce = [0u8; 12];
        StdRng::seed_from_u64(seed).fill_bytes(&mut nonce);
        Self {
            gateway,
            client,
            port,
            nonce,
            phase: Phase::Waiting { at: now },
            mapping: None,
            natpmp_ip: None,
            natpmp_port: None,
            known: None,
            outbox: Vec::new(),
            failures: 0,
        }
    }

    /// Where requests go and answers come from.
    pub fn server(&self) -> SocketAddr {
        SocketAddr::from((self.gateway, SERVER_PORT))
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// This host's address on the gateway's network.
    pub fn client(&self) -> Ipv4Addr {
        self.client
    }

    /// The mapping in force, if any.
    pub fn mapping(&self, now: Instant) -> Option<Mapping> {
        self.mapping.filter(|m| m.expires > now)
    }

    /// Rounds of requests that went unanswered (no gateway speaks either protocol).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let at = match self.phase {
            Phase::Asking { next, .. } => next,
            Phase::Waiting { at } => at,
        };
        Some(match self.mapping {
            Some(m) => at.min(m.expires),
            None => at,
        })
    }

    /// The next request for the gateway ([`Self::server`]).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.outbox.is_empty()).then(|| self.outbox.remove(0))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.mapping.is_some_and(|m| m.expires <= now) {
            self.mapping = None;
        }
        match self.phase {
            Phase::Waiting { at } if now >= at => {
                let protocol = self.known.unwrap_or(Wire::Pcp);
                self.ask(protocol, 0, now);
            }
            Phase::Asking {
                protocol,
                sends,
                next,
            } if now >= next => {
                if sends < MAX_SENDS {
                    self.ask(protocol, sends, now);
                } else if protocol == Wire::Pcp {
                    self.ask(Wire::NatPmp, 0, now);
                } else {
                    self.give_up(now);
                }
            }
            _ => {}
        }
    }

    /// Feeds a datagram that came from [`Self::server`]. Returns true when the mapping
    /// changed (granted, moved or lost).
    pub fn handle_datagram(&mut self, data: &[u8], now: Instant) -> bool {
        let before = self.mapping(now);
        match data.first() {
            Some(&PCP_VERSION) => self.pcp_answer(data, now),
            Some(0) => self.natpmp_answer(data, now),
            _ => {}
        }
        self.mapping(now) != before
    }

    /// A request that deletes the mapping (lifetime 0), to send when the daemon stops.
    pub fn release(&mut self) -> Option<Vec<u8>> {
        let m = self.mapping.take()?;
        Some(match m.protocol {
            Protocol::NatPmp => natpmp_map_request(self.port, 0, Duration::ZERO),
            Protocol::Pcp | Protocol::UpnpIgd => self.pcp_request(Duration::ZERO),
        })
    }

    fn ask(&mut self, protocol: Wire, sends: u32, now: Instant) {
        match protocol {
            Wire::Pcp => {
                let req = self.pcp_request(LIFETIME);
                self.outbox.push(req);
            }
            Wire::NatPmp => {
                self.outbox.push(vec![0, NATPMP_OP_ADDRESS]);
                let suggested = self.mapping.map_or(self.port, |m| m.external.port());
                self.outbox
                    .push(natpmp_map_request(self.port, suggested, LIFETIME));
            }
        }
        self.phase = Phase::Asking {
            protocol,
            sends: sends + 1,
            next: now + RTO * 2u32.pow(sends),
        };
    }

    fn give_up(&mut self, now: Instant) {
        self.failures += 1;
        self.known = None;
        // A mapping that is still valid keeps working until it expires; ask again before.
        let at = match self.mapping {
            Some(m) => (now + RETRY_IDLE).min(m.expires),
            None => now + RETRY_IDLE,
        };
        self.phase = Phase::Waiting { at };
    }

    fn granted(&mut self, protocol: Wire, external: SocketAddrV4, life: Duration, now: Instant) {
        self.known = Some(protocol);
        self.mapping = Some(Mapping {
            protocol: protocol.protocol(),
            external,
            expires: now + life,
        });
        self.phase = Phase::Waiting {
            at: now + (life / 2).max(MIN_RENEW),
        };
    }

    /// Not answered in this protocol: try the other one now rather than after the timeout.
    fn unsupported(&mut self, protocol: Wire, now: Instant) {
        if matches!(self.phase, Phase::Asking { protocol: p, .. } if p == protocol) {
            match protocol {
                Wire::Pcp => self.ask(Wire::NatPmp, 0, now),
                Wire::NatPmp => self.give_up(now),
            }
        }
    }

    fn refused(&mut self, code: u16, now: Instant) {
        tracing::debug!(code, "the gateway refused the port mapping");
        self.give_up(now);
    }

    fn pcp_request(&self, lifetime: Duration) -> Vec<u8> {
        let mut b = Vec::with_capacity(PCP_REQUEST_LEN);
        b.extend_from_slice(&[PCP_VERSION, PCP_OP_MAP, 0, 0]);
        b.extend_from_slice(&secs(lifetime).to_be_bytes());
        b.extend_from_slice(&self.client.to_ipv6_mapped().octets());
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&[UDP, 0, 0, 0]);
        b.extend_from_slice(&self.port.to_be_bytes());
        let suggested = self.mapping.map_or(self.port, |m| m.external.port());
        b.extend_from_slice(&suggested.to_be_bytes());
        b.extend_from_slice(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
        b
    }

    fn pcp_answer(&mut self, d: &[u8], now: Instant) {
        if d.len() < 4 || d[1] != PCP_RESPONSE | PCP_OP_MAP {
            return;
        }
        let code = u16::from(d[3]);
        if code == UNSUPPORTED_VERSION {
            return self.unsupported(Wire::Pcp, now);
        }
        // Header (24) + MAP (36); the nonce ties the answer to our request.
        if d.len() < PCP_REQUEST_LEN || d[24..36] != self.nonce || d[36] != UDP {
            return;
        }
        if u16::from_be_bytes([d[40], d[41]]) != self.port {
            return;
        }
        if code != 0 {
            return self.refused(code, now);
        }
        let life = Duration::from_secs(u32::from_be_bytes([d[4], d[5], d[6], d[7]]).into());
        let port = u16::from_be_bytes([d[42], d[43]]);
        let ip: [u8; 16] = d[44..60].try_into().unwrap_or_default();
        let Some(ip) = std::net::Ipv6Addr::from(ip).to_ipv4_mapped() else {
            return;
        };
        if life.is_zero() || port == 0 || ip.is_unspecified() {
            return;
        }
        self.granted(Wire::Pcp, SocketAddrV4::new(ip, port), life, now);
    }

    fn natpmp_answer(&mut self, d: &[u8], now: Instant) {
        if d.len() < 4 {
            return;
        }
        let code = u16::from_be_bytes([d[2], d[3]]);
        // A NAT-PMP-only gateway answers a PCP request in NAT-PMP's form (RFC 6887 §9).
        if code == UNSUPPORTED_VERSION {
            let protocol = if d[1] == PCP_RESPONSE | PCP_OP_MAP {
                Wire::Pcp
            } else {
                Wire::NatPmp
            };
            return self.unsupported(protocol, now);
        }
        if !matches!(
            self.phase,
            Phase::Asking {
                protocol: Wire::NatPmp,
                ..
            }
        ) {
            return;
        }
        match d[1] {
            op if op == PCP_RESPONSE | NATPMP_OP_ADDRESS && d.len() >= 12 => {
                if code != 0 {
                    return self.refused(code, now);
                }
                let ip = Ipv4Addr::new(d[8], d[9], d[10], d[11]);
                self.natpmp_ip = (!ip.is_unspecified()).then_some(ip);
            }
            op if op == PCP_RESPONSE | NATPMP_OP_MAP_UDP && d.len() >= 16 => {
                if u16::from_be_bytes([d[8], d[9]]) != self.port {
                    return;
                }
                if code != 0 {
                    return self.refused(code, now);
                }
                let port = u16::from_be_bytes([d[10], d[11]]);
                let life = u32::from_be_bytes([d[12], d[13], d[14], d[15]]);
                self.natpmp_port =
                    (port != 0 && life != 0).then(|| (port, Duration::from_secs(life.into())));
            }
            _ => return,
        }
        if let (Some(ip), Some((port, life))) = (self.natpmp_ip, self.natpmp_port) {
            self.natpmp_port = None;
            self.granted(Wire::NatPmp, SocketAddrV4::new(ip, port), life, now);
        }
    }
}

fn natpmp_map_request(port: u16, suggested: u16, lifetime: Duration) -> Vec<u8> {
    let mut b = vec![0, NATPMP_OP_MAP_UDP, 0, 0];
    b.extend_from_slice(&port.to_be_bytes());
    b.extend_from_slice(&suggested.to_be_bytes());
    b.extend_from_slice(&secs(lifetime).to_be_bytes());
    b
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
