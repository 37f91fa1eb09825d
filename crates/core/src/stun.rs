//! STUN (RFC 8489) Binding on the daemon's one UDP socket, and NAT mapping classification
//! (RFC 4787 §4.1, tested as in RFC 5780 §4.3).
//!
//! Encoding and decoding are `stun_codec`'s; this module adds the Binding exchange as a
//! sans-IO state machine, [`NatProbe`], and turns its answers into a [`NatReport`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytecodec::{DecodeExt as _, EncodeExt as _};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::{Attribute, methods::BINDING};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

/// RFC 8489 §6.2.1: initial retransmission timeout.
const RTO: Duration = Duration::from_millis(500);
/// Transmissions per server before it counts as unreachable (RFC 8489 suggests 7; a
/// player should not wait 39.5 s to learn a server is down: 4 sends span 3.5 s + 1.5 s).
const MAX_SENDS: u32 = 4;
/// After the last send, how long to wait for its answer.
const LAST_WAIT: Duration = Duration::from_millis(1_500);

/// A decoded STUN message of the kinds LANrage uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stun {
    BindingRequest { txid: [u8; 12] },
    BindingSuccess { txid: [u8; 12], mapped: SocketAddr },
}

/// A Binding request with this transaction id.
pub fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    let msg = Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(txid));
    encode(msg)
}

/// A Binding success response telling the requester where it was seen from.
pub fn binding_success(txid: [u8; 12], mapped: SocketAddr) -> Vec<u8> {
    let mut msg = Message::<Attribute>::new(
        MessageClass::SuccessResponse,
        BINDING,
        TransactionId::new(txid),
    );
    msg.add_attribute(XorMappedAddress::new(mapped));
    encode(msg)
}

fn encode(msg: Message<Attribute>) -> Vec<u8> {
    MessageEncoder::new()
        .encode_into_bytes(msg)
        .expect("a Binding message with at most an address always encodes")
}

/// Decodes a Binding request or success response; anything else (other methods, errors,
/// malformed bytes) is `None`.
pub fn parse(datagram: &[u8]) -> Option<Stun> {
    let msg = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(datagram)
        .ok()?
        .ok()?;
    if msg.method() != BINDING {
        return None;
    }
    let txid = *msg.transaction_id().as_bytes();
    match msg.class() {
        MessageClass::Request => Some(Stun::BindingRequest { txid }),
        MessageClass::SuccessResponse => {
            let mapped = msg.get_attribute::<XorMappedAddress>()?.address();
            Some(Stun::BindingSuccess { txid, mapped })
        }
        _ => None,
    }
}

/// RFC 4787 §4.1 mapping behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mapping {
    /// Same public address towards every destination: hole punching works from anywhere.
    EndpointIndependent,
    /// A new public address per destination IP.
    AddressDependent,
    /// A new public address per destination IP and port ("symmetric").
    AddressAndPortDependent,
    /// Differs per destination, but the servers cannot tell which of the two above.
    EndpointDependent,
    /// Not enough answers to say.
    Unknown,
}

/// What the probe learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    pub mapping: Mapping,
    /// The first server-reflexive address seen.
    pub public_addr: Option<SocketAddr>,
    /// Whether the NAT kept the local port.
    pub port_preserved: Option<bool>,
    /// Server → the address it saw us at.
    pub mapped: BTreeMap<SocketAddr, SocketAddr>,
}

struct Pending {
    txid: [u8; 12],
    sends: u32,
    next: Instant,
}

/// One round of Binding requests to every configured STUN server.
///
/// Drive it like every machine in this crate: [`NatProbe::handle_timeout`] when
/// [`NatProbe::poll_timeout`] is due, [`NatProbe::handle_response`] for each STUN datagram
/// from a server, and [`NatProbe::poll_transmit`] after each call. [`NatProbe::report`] is
/// `Some` once every server answered or gave up.
pub struct NatProbe {
    local_port: u16,
    pending: BTreeMap<SocketAddr, Pending>,
    mapped: BTreeMap<SocketAddr, SocketAddr>,
    transmits: Vec<(SocketAddr, Vec<u8>)>,
    rng: StdRng,
}

impl NatProbe {
    /// Starts a round towards `servers` from the socket bound to `local_port`.
    pub fn new(servers: &[SocketAddr], local_port: u16, seed: u64, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let pending = servers
            .iter()
            .map(|&s| {
                let mut txid = [0u8; 12];
                rng.fill_bytes(&mut txid);
                (
                    s,
                    Pending {
                        txid,
                        sends: 0,
                        next: now,
                    },
                )
            })
            .collect();
        Self {
            local_port,
            pending,
            mapped: BTreeMap::new(),
            transmits: Vec::new(),
            rng,
        }
    }

    /// Sends (or resends, with doubling back-off) every request that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut gave_up = Vec::new();
        for (server, p) in &mut self.pending {
            if p.next > now {
                continue;
            }
            if p.sends == MAX_SENDS {
                gave_up.push(*server);
                continue;
            }
            self.transmits.push((*server, binding_request(p.txid)));
            p.sends += 1;
            p.next = now
                + if p.sends == MAX_SENDS {
                    LAST_WAIT
                } else {
                    RTO * 2u32.pow(p.sends - 1)
                };
        }
        for s in gave_up {
            self.pending.remove(&s);
        }
    }

    /// Takes a STUN datagram; answers that match no outstanding request are ignored.
    pub fn handle_response(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Some(Stun::BindingSuccess { txid, mapped }) = parse(datagram) else {
            return;
        };
        if self.pending.get(&from).is_some_and(|p| p.txid == txid) {
            self.pending.remove(&from);
            self.mapped.insert(from, mapped);
        }
    }

    /// The next request to send: (server, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop()
    }

    /// When a request is next due; `None` once the round is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next).min()
    }

    /// The classification, once every server answered or gave up.
    pub fn report(&self) -> Option<NatReport> {
        if !self.pending.is_empty() {
            return None;
        }
        Some(classify_mapping(&self.mapped, self.local_port))
    }

    /// A fresh transaction id source for the next round.
    pub fn next_seed(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

/// RFC 5780 §4.3 reasoning over whatever servers answered: two servers on different IPs
/// tell endpoint-independent from dependent; two on one IP with different ports tell
/// address-dependent from address-and-port-dependent.
pub fn classify_mapping(mapped: &BTreeMap<SocketAddr, SocketAddr>, local_port: u16) -> NatReport {
    let entries: Vec<(&SocketAddr, &SocketAddr)> = mapped.iter().collect();
    let mut diff_ip_equal = None::<bool>;
    let mut same_ip_equal = None::<bool>;
    for (i, (sa, ma)) in entries.iter().enumerate() {
        for (sb, mb) in &entries[i + 1..] {
            let equal = ma == mb;
            let slot = if sa.ip() == sb.ip() {
                &mut same_ip_equal
            } else {
                &mut diff_ip_equal
            };
            *slot = Some(slot.unwrap_or(true) && equal);
        }
    }
    let mapping = match (diff_ip_equal, same_ip_equal) {
        (_, Some(false)) => Mapping::AddressAndPortDependent,
        (Some(true), Some(true) | None) => Mapping::EndpointIndependent,
        (Some(false), Some(true)) => Mapping::AddressDependent,
        (Some(false), None) => Mapping::EndpointDependent,
        (None, Some(true)) | (None, None) => Mapping::Unknown,
    };
    let public_addr = entries.first().map(|(_, m)| **m);
    NatReport {
        mapping,
        public_addr,
        port_preserved: public_addr.map(|a| a.port() == local_port),
        mapped: mapped.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn binding_round_trip() {
        let req = binding_request([7; 12]);
        assert_eq!(crate::classify(&req), crate::PacketClass::Stun);
        assert_eq!(parse(&req), Some(Stun::BindingRequest { txid: [7; 12] }));
        let resp = binding_success([7; 12], addr("198.51.100.2:40000"));
        assert_eq!(crate::classify(&resp), crate::PacketClass::Stun);
        assert_eq!(
            parse(&resp),
            Some(Stun::BindingSuccess {
                txid: [7; 12],
                mapped: addr("198.51.100.2:40000")
            })
        );
        assert_eq!(parse(&resp[..resp.len() - 1]), None);
        assert_eq!(parse(b"not stun at all, just bytes"), None);
    }

    /// A NAT model: how the public address depends on the destination.
    fn nat(kind: Mapping, dst: SocketAddr) -> SocketAddr {
        let port = match kind {
            Mapping::EndpointIndependent => 40000,
            Mapping::AddressDependent => 40000 + u16::from(dst.ip().to_string().ends_with(".11")),
            _ => 40000 + (dst.port() % 100) + 10 * u16::from(dst.ip().to_string().ends_with(".11")),
        };
        SocketAddr::new([198, 51, 100, 2].into(), port)
    }

    /// Runs a probe against servers behind a NAT model on a virtual clock.
    fn run(
        servers: &[SocketAddr],
        kind: Mapping,
        answering: &[SocketAddr],
    ) -> (NatReport, Duration) {
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        let mut now = start;
        let mut probe = NatProbe::new(servers, 40000, 1, now);
        for _ in 0..100 {
            probe.handle_timeout(now);
            while let Some((server, bytes)) = probe.poll_transmit() {
                let Some(Stun::BindingRequest { txid }) = parse(&bytes) else {
                    panic!("the probe sent something else");
                };
                if answering.contains(&server) {
                    probe.handle_response(server, &binding_success(txid, nat(kind, server)));
                }
            }
            if let Some(r) = probe.report() {
                return (r, now - start);
            }
            now = probe.poll_timeout().expect("pending");
        }
        panic!("the probe never finished");
    }

    #[test]
    fn mapping_is_classified_from_the_servers_that_answer() {
        let a = addr("203.0.113.10:3478");
        let a2 = addr("203.0.113.10:3479");
        let b = addr("203.0.113.11:3478");
        let all = [a, a2, b];
        let (r, took) = run(&all, Mapping::EndpointIndependent, &all);
        assert_eq!(r.mapping, Mapping::EndpointIndependent);
        assert_eq!(r.public_addr, Some(addr("198.51.100.2:40000")));
        assert_eq!(r.port_preserved, Some(true));
        assert_eq!(took, Duration::ZERO, "answers at once finish at once");
        assert_eq!(
            run(&all, Mapping::AddressDependent, &all).0.mapping,
            Mapping::AddressDependent
        );
        assert_eq!(
            run(&all, Mapping::AddressAndPortDependent, &all).0.mapping,
            Mapping::AddressAndPortDependent
        );
        // Two IPs only: dependent, but which kind cannot be told.
        assert_eq!(
            run(&[a, b], Mapping::AddressAndPortDependent, &[a, b])
                .0
                .mapping,
            Mapping::EndpointDependent
        );
    }

    #[test]
    fn silent_servers_are_retried_then_given_up() {
        let a = addr("203.0.113.10:3478");
        let b = addr("203.0.113.11:3478");
        let (r, took) = run(&[a, b], Mapping::EndpointIndependent, &[a]);
        // 4 sends at 0, 0.5, 1.5, 3.5 s, then 1.5 s for the last answer.
        assert_eq!(took, Duration::from_secs(5));
        assert_eq!(r.mapping, Mapping::Unknown);
        assert_eq!(r.mapped.len(), 1);
        let (none, _) = run(&[a, b], Mapping::EndpointIndependent, &[]);
        assert_eq!(none.public_addr, None);
    }

    #[test]
    fn answers_with_a_wrong_transaction_or_sender_are_ignored() {
        let a = addr("203.0.113.10:3478");
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut probe = NatProbe::new(&[a], 40000, 9, now);
        probe.handle_timeout(now);
        let (_, bytes) = probe.poll_transmit().expect("a request");
        let Some(Stun::BindingRequest { txid }) = parse(&bytes) else {
            panic!("not a request");
        };
        let mut wrong = txid;
        wrong[0] ^= 1;
        probe.handle_response(a, &binding_success(wrong, addr("192.0.2.9:1")));
        probe.handle_response(
            addr("192.0.2.66:3478"),
            &binding_success(txid, addr("192.0.2.9:1")),
        );
        assert!(probe.report().is_none());
        probe.handle_response(a, &binding_success(txid, addr("198.51.100.2:40000")));
        assert_eq!(
            probe.report().map(|r| r.public_addr),
            Some(Some(addr("198.51.100.2:40000")))
        );
    }
}
