//! STUN (RFC 8489) Binding on the daemon's one UDP socket, and NAT mapping classification
//! (RFC 4787 §4.1, tested as in RFC 5780 §4.3).
//!
//! Encoding and decoding are `stun_codec`'s; this module adds the Binding exchange as a
//! sans-IO state machine, [`NatProbe`], and turns its answers into a [`NatReport`].
//!
//! The server side ([`parse_request`] and the answers built from it) follows RFC 8489
//! §6.3.1: a FINGERPRINT that does not match discards the message (§14.7), an unknown
//! comprehension-required attribute is answered 420 with UNKNOWN-ATTRIBUTES (§14.8), and a
//! classic RFC 3489 request (no magic cookie) gets a classic answer (RFC 5389 §12.2). Those
//! three small codecs are written by hand: stun_codec decodes only cookie-bearing messages
//! and leaves the comprehension check to its caller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytecodec::{DecodeExt as _, EncodeExt as _};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use stun_codec::rfc5389::attributes::{Fingerprint, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::{ChangeRequest, OtherAddress};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};

/// RFC 8489 §6.2.1: initial retransmission timeout.
const RTO: Duration = Duration::from_millis(500);
/// Transmissions per server before it counts as unreachable (RFC 8489 suggests 7; a
/// player should not wait 39.5 s to learn a server is down: 4 sends span 3.5 s + 1.5 s).
const MAX_SENDS: u32 = 4;
/// After the last send, how long to wait for its answer.
const LAST_WAIT: Duration = Duration::from_millis(1_500);

stun_codec::define_attribute_enums!(
    Attr,
    AttrDecoder,
    AttrEncoder,
    // FINGERPRINT is decoded so that stun_codec checks its CRC: a message whose
    // fingerprint does not match is not STUN and is discarded (RFC 8489 §7.3, §14.7).
    [XorMappedAddress, ChangeRequest, OtherAddress, Fingerprint]
);

/// RFC 5780 §7.2 CHANGE-REQUEST: answer from the other IP and/or the other port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    pub ip: bool,
    pub port: bool,
}

/// A decoded STUN message of the kinds LANrage uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stun {
    BindingRequest {
        txid: [u8; 12],
        change: Change,
        /// RFC 5780 §7.5 RESPONSE-PORT: answer to this port of the sender's IP.
        response_port: Option<u16>,
    },
    BindingSuccess {
        txid: [u8; 12],
        mapped: SocketAddr,
        /// RFC 5780 OTHER-ADDRESS: the server's address on its other IP and port.
        other: Option<SocketAddr>,
    },
}

/// A Binding request with this transaction id.
pub fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    binding_request_change(txid, Change::default())
}

/// A Binding request asking the server to answer from another address (RFC 5780 §4.4).
pub fn binding_request_change(txid: [u8; 12], change: Change) -> Vec<u8> {
    let mut msg = Message::<Attr>::new(MessageClass::Request, BINDING, TransactionId::new(txid));
    if change != Change::default() {
        msg.add_attribute(ChangeRequest::new(change.ip, change.port));
    }
    encode(msg)
}

/// A Binding success response telling the requester where it was seen from.
pub fn binding_success(txid: [u8; 12], mapped: SocketAddr, other: Option<SocketAddr>) -> Vec<u8> {
    let mut msg = Message::<Attr>::new(
        MessageClass::SuccessResponse,
        BINDING,
        TransactionId::new(txid),
    );
    msg.add_attribute(XorMappedAddress::new(mapped));
    if let Some(other) = other {
        msg.add_attribute(OtherAddress::new(other));
    }
    encode(msg)
}

/// RFC 5780 §7.5 RESPONSE-PORT attribute type.
const RESPONSE_PORT: u16 = 0x0027;

/// A Binding request asking the server to answer to `port` of the IP it comes from
/// (RFC 5780 §4.6: binding lifetime discovery from a second socket).
pub fn binding_request_response_port(txid: [u8; 12], port: u16) -> Vec<u8> {
    let mut bytes = binding_request(txid);
    // Appended by hand (stun_codec has no RESPONSE-PORT): type, length 4, port, padding.
    bytes.extend_from_slice(&RESPONSE_PORT.to_be_bytes());
    bytes.extend_from_slice(&4u16.to_be_bytes());
    bytes.extend_from_slice(&port.to_be_bytes());
    bytes.extend_from_slice(&[0, 0]);
    let len = u16::try_from(bytes.len() - 20).unwrap_or(u16::MAX);
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    bytes
}

fn encode(msg: Message<Attr>) -> Vec<u8> {
    MessageEncoder::new()
        .encode_into_bytes(msg)
        .expect("a Binding message with at most two addresses always encodes")
}

/// The value of the first attribute of type `kind` in a STUN message, read straight from
/// the bytes (for attributes whose `stun_codec` decoding cannot be used).
pub fn raw_attribute(datagram: &[u8], kind: u16) -> Option<&[u8]> {
    let mut rest = datagram.get(20..)?;
    while rest.len() >= 4 {
        let k = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if k == kind {
            return Some(value);
        }
        rest = rest.get(4 + len.next_multiple_of(4)..)?;
    }
    None
}

/// Reads CHANGE-REQUEST straight from the attribute list. RFC 5780 §7.2 puts "change IP"
/// at 0x04 and "change port" at 0x02; stun_codec 0.4.0 encodes them so but decodes 0x02 as
/// the IP flag and 0x01 as the port flag, so its decoded value cannot be used.
fn raw_change_request(datagram: &[u8]) -> Option<Change> {
    let value = raw_attribute(datagram, ChangeRequest::CODEPOINT)?;
    let flags = *value.get(3).filter(|_| value.len() == 4)?;
    Some(Change {
        ip: flags & 0x04 != 0,
        port: flags & 0x02 != 0,
    })
}

/// Decodes a Binding request or success response; anything else (other methods, errors,
/// malformed bytes) is `None`.
pub fn parse(datagram: &[u8]) -> Option<Stun> {
    let msg = MessageDecoder::<Attr>::new()
        .decode_from_bytes(datagram)
        .ok()?
        .ok()?;
    if msg.method() != BINDING {
        return None;
    }
    let txid = *msg.transaction_id().as_bytes();
    match msg.class() {
        MessageClass::Request => {
            let change = raw_change_request(datagram).unwrap_or_default();
            let response_port = raw_attribute(datagram, RESPONSE_PORT)
                .filter(|v| v.len() == 4)
                .map(|v| u16::from_be_bytes([v[0], v[1]]))
                .filter(|p| *p != 0);
            Some(Stun::BindingRequest {
                txid,
                change,
                response_port,
            })
        }
        MessageClass::SuccessResponse => {
            let mapped = msg.get_attribute::<XorMappedAddress>()?.address();
            let other = msg.get_attribute::<OtherAddress>().map(|o| o.address());
            Some(Stun::BindingSuccess {
                txid,
                mapped,
                other,
            })
        }
        _ => None,
    }
}

/// A request a STUN server answers, as [`parse_request`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerRequest {
    /// An RFC 8489 Binding request.
    Binding {
        txid: [u8; 12],
        change: Change,
        /// RFC 5780 §7.5 RESPONSE-PORT.
        response_port: Option<u16>,
    },
    /// A classic RFC 3489 Binding request: no magic cookie, a 16-byte transaction id. It
    /// is answered with MAPPED-ADDRESS (RFC 5389 §12.2), see [`classic_binding_success`].
    Classic { txid: [u8; 16], change: Change },
    /// A Binding request with comprehension-required attributes this server does not
    /// know: answered 420 listing them (RFC 8489 §6.3.1.1), see [`unknown_attributes`].
    Unknown {
        txid: [u8; 12],
        attributes: Vec<u16>,
    },
}

/// RFC 8489 §5: the magic cookie that RFC 3489 messages do not carry.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// RFC 3489 §11.1 / RFC 8489 §18.2 attribute types written by hand below.
const MAPPED_ADDRESS: u16 = 0x0001;
const CHANGE_REQUEST: u16 = 0x0003;
const CHANGED_ADDRESS: u16 = 0x0005;
const ERROR_CODE: u16 = 0x0009;
const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
/// How many unknown attributes a 420 lists at most: keeps the answer small (no
/// amplification) whatever the request holds.
const MAX_UNKNOWN_LISTED: usize = 4;

/// Comprehension-required attributes (type < 0x8000) a Binding request may carry here:
/// RFC 8489's own (§14, §18.3), RFC 5780's CHANGE-REQUEST, PADDING and RESPONSE-PORT.
/// The deprecated RFC 3489 ones (RESPONSE-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS,
/// PASSWORD, REFLECTED-FROM) are unknown to an RFC 8489 server (RFC 5389 §18.2).
const KNOWN_REQUIRED: [u16; 14] = [
    0x0001, // MAPPED-ADDRESS
    0x0003, // CHANGE-REQUEST
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    0x0014, // REALM
    0x0015, // NONCE
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001D, // PASSWORD-ALGORITHM
    0x001E, // USERHASH
    0x0020, // XOR-MAPPED-ADDRESS
    0x0026, // PADDING
    0x0027, // RESPONSE-PORT
];

/// Reads a Binding request as a server must (RFC 8489 §6.3.1): `None` for anything else,
/// for a malformed message and for one whose FINGERPRINT does not match (silently
/// discarded, §7.3).
pub fn parse_request(datagram: &[u8]) -> Option<ServerRequest> {
    if let Some(classic) = parse_classic(datagram) {
        return Some(classic);
    }
    let Stun::BindingRequest {
        txid,
        change,
        response_port,
    } = parse(datagram)?
    else {
        return None;
    };
    let unknown = unknown_required(datagram, &KNOWN_REQUIRED);
    if !unknown.is_empty() {
        return Some(ServerRequest::Unknown {
            txid,
            attributes: unknown,
        });
    }
    Some(ServerRequest::Binding {
        txid,
        change,
        response_port,
    })
}

/// The comprehension-required attribute types (< 0x8000, RFC 8489 §14) in a message that
/// are not in `known`, in order, without repeats.
pub fn unknown_required(datagram: &[u8], known: &[u16]) -> Vec<u16> {
    let mut unknown = Vec::new();
    let mut rest = datagram.get(20..).unwrap_or_default();
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if kind < 0x8000 && !known.contains(&kind) && !unknown.contains(&kind) {
            unknown.push(kind);
        }
        let Some(next) = rest.get(4 + len.next_multiple_of(4)..) else {
            break;
        };
        rest = next;
    }
    unknown
}

/// A 420 (Unknown Attribute) Binding error response listing `attributes` (RFC 8489
/// §14.8): at most 40 bytes (four attributes), so never much more than the request that named them.
pub fn unknown_attributes(txid: [u8; 12], attributes: &[u16]) -> Vec<u8> {
    let listed = &attributes[..attributes.len().min(MAX_UNKNOWN_LISTED)];
    let mut out = header(0x0111, &MAGIC_COOKIE, &txid);
    // ERROR-CODE: two reserved bytes, class 4, number 20, no reason phrase (§14.8).
    push_attr(&mut out, ERROR_CODE, &[0, 0, 4, 20]);
    let list: Vec<u8> = listed.iter().flat_map(|t| t.to_be_bytes()).collect();
    push_attr(&mut out, UNKNOWN_ATTRIBUTES, &list);
    finish(out)
}

/// A classic RFC 3489 Binding success: the same 16-byte transaction id, MAPPED-ADDRESS
/// (not XOR-ed: RFC 3489 clients know no other) and, with a second address,
/// CHANGED-ADDRESS (RFC 3489 §11.2.3). 44 bytes for IPv4, like the RFC 8489 answer.
pub fn classic_binding_success(
    txid: [u8; 16],
    mapped: SocketAddr,
    changed: Option<SocketAddr>,
) -> Vec<u8> {
    let mut out = header(0x0101, &txid[..4], &txid[4..]);
    push_attr(&mut out, MAPPED_ADDRESS, &plain_address(mapped));
    if let Some(changed) = changed {
        push_attr(&mut out, CHANGED_ADDRESS, &plain_address(changed));
    }
    finish(out)
}

/// A classic RFC 3489 Binding request with this transaction id (for tests and tools).
pub fn classic_binding_request(txid: [u8; 16], change: Change) -> Vec<u8> {
    let mut out = header(0x0001, &txid[..4], &txid[4..]);
    if change != Change::default() {
        let flags = u8::from(change.ip) << 2 | u8::from(change.port) << 1;
        push_attr(&mut out, CHANGE_REQUEST, &[0, 0, 0, flags]);
    }
    finish(out)
}

/// A classic Binding request: type 0x0001, a length that matches the datagram, and no
/// magic cookie where RFC 8489 puts it.
fn parse_classic(datagram: &[u8]) -> Option<ServerRequest> {
    let head = datagram.get(..20)?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if head[..2] != [0x00, 0x01] || head[4..8] == MAGIC_COOKIE || 20 + len != datagram.len() {
        return None;
    }
    let mut txid = [0u8; 16];
    txid.copy_from_slice(&head[4..20]);
    let change = raw_attribute(datagram, CHANGE_REQUEST)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(|v| Change {
            ip: v[3] & 0x04 != 0,
            port: v[3] & 0x02 != 0,
        })
        .unwrap_or_default();
    Some(ServerRequest::Classic { txid, change })
}

/// A message header with length 0 (set by [`finish`]): type, then the cookie (or the
/// first four bytes of a classic transaction id) and the rest of the transaction id.
fn header(kind: u16, cookie: &[u8], txid: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(cookie);
    out.extend_from_slice(txid);
    out
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let len = u16::try_from(out.len() - 20).unwrap_or(u16::MAX);
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// MAPPED-ADDRESS / CHANGED-ADDRESS value (RFC 3489 §11.2.1): family, port, address.
fn plain_address(addr: SocketAddr) -> Vec<u8> {
    let mut v = vec![0];
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            v.push(0x01);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        std::net::IpAddr::V6(ip) => {
            v.push(0x02);
            v.extend_from_slice(&addr.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    v
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

/// RFC 4787 §5 filtering behaviour, tested as in RFC 5780 §4.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filtering {
    /// Anyone may send to the mapping ("full cone").
    EndpointIndependent,
    /// Any port of an IP we sent to ("restricted cone").
    AddressDependent,
    /// Only the exact address and port we sent to ("port-restricted", "symmetric").
    AddressAndPortDependent,
    /// The primary server cannot answer from another address (no OTHER-ADDRESS).
    Unknown,
}

/// What the probe learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    pub mapping: Mapping,
    pub filtering: Filtering,
    /// The first server-reflexive address seen.
    pub public_addr: Option<SocketAddr>,
    /// Whether the NAT kept the local port.
    pub port_preserved: Option<bool>,
    /// Server → the address it saw us at.
    pub mapped: BTreeMap<SocketAddr, SocketAddr>,
}

impl NatReport {
    /// What peers need to know to punch through this NAT: `None` while the mapping or the
    /// public address is unknown.
    pub fn hint(&self) -> Option<lanrage_proto::api::NatHint> {
        let hard = match self.mapping {
            Mapping::EndpointIndependent => false,
            Mapping::AddressDependent
            | Mapping::AddressAndPortDependent
            | Mapping::EndpointDependent => true,
            Mapping::Unknown => return None,
        };
        Some(lanrage_proto::api::NatHint {
            hard,
            public_addr: self.public_addr?,
        })
    }
}

/// What a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Mapping towards this server (answers come from it).
    Mapping(SocketAddr),
    /// A filtering test: the answer comes from another address, if the NAT lets it in.
    Filter(Change),
}

struct Request {
    purpose: Purpose,
    to: SocketAddr,
    sends: u32,
    next: Instant,
}

/// One round of NAT discovery from the daemon's socket.
///
/// Order matters (RFC 5780 §4.4): the primary server (the first configured) answers first
/// and names its OTHER-ADDRESS; then the filtering tests ask it to answer from its other
/// IP and port, and from its other port; only after those are the remaining servers
/// contacted, because having sent to another IP would let an address-filtering NAT pass
/// the "other IP" answer and look like a full cone.
///
/// Drive it like every machine in this crate: [`NatProbe::handle_timeout`] when
/// [`NatProbe::poll_timeout`] is due, [`NatProbe::handle_response`] for each STUN datagram,
/// and [`NatProbe::poll_transmit`] after each call. [`NatProbe::report`] is `Some` once
/// every request was answered or given up.
pub struct NatProbe {
    local_port: u16,
    requests: BTreeMap<[u8; 12], Request>,
    /// Servers contacted after the filtering tests.
    deferred: Vec<SocketAddr>,
    primary: Option<SocketAddr>,
    mapped: BTreeMap<SocketAddr, SocketAddr>,
    /// Filtering tests: change-both and change-port, Some(answered) once settled.
    change_both: Option<bool>,
    change_port: Option<bool>,
    transmits: Vec<(SocketAddr, Vec<u8>)>,
    rng: StdRng,
    now: Instant,
}

impl NatProbe {
    /// Starts a round towards `servers` (the first is the primary) from the socket bound to
    /// `local_port`.
    pub fn new(servers: &[SocketAddr], local_port: u16, seed: u64, now: Instant) -> Self {
        let mut probe = Self {
            local_port,
            requests: BTreeMap::new(),
            deferred: servers.iter().skip(1).copied().collect(),
            primary: servers.first().copied(),
            mapped: BTreeMap::new(),
            change_both: None,
            change_port: None,
            transmits: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            now,
        };
        match probe.primary {
            Some(p) => probe.ask(Purpose::Mapping(p), p),
            None => probe.deferred.clear(),
        }
        probe
    }

    fn ask(&mut self, purpose: Purpose, to: SocketAddr) {
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        self.requests.insert(
            txid,
            Request {
                purpose,
                to,
                sends: 0,
                next: self.now,
            },
        );
    }

    /// Sends (or resends, with doubling back-off) every request that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let mut gave_up = Vec::new();
        for (txid, r) in &mut self.requests {
            if r.next > now {
                continue;
            }
            if r.sends == MAX_SENDS {
                gave_up.push(*txid);
                continue;
            }
            let change = match r.purpose {
                Purpose::Filter(c) => c,
                Purpose::Mapping(_) => Change::default(),
            };
            self.transmits
                .push((r.to, binding_request_change(*txid, change)));
            r.sends += 1;
            r.next = now
                + if r.sends == MAX_SENDS {
                    LAST_WAIT
                } else {
                    RTO * 2u32.pow(r.sends - 1)
                };
        }
        for txid in gave_up {
            if let Some(r) = self.requests.remove(&txid) {
                self.settle(r.purpose, None, None);
            }
        }
    }

    /// Takes a STUN datagram; answers that match no outstanding request are ignored.
    pub fn handle_response(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Some(Stun::BindingSuccess {
            txid,
            mapped,
            other,
        }) = parse(datagram)
        else {
            return;
        };
        let Some(r) = self.requests.get(&txid) else {
            return;
        };
        // A mapping answer must come from the server asked; a filtering answer comes, by
        // design, from elsewhere.
        if matches!(r.purpose, Purpose::Mapping(s) if s != from) {
            return;
        }
        let purpose = r.purpose;
        self.requests.remove(&txid);
        self.settle(purpose, Some(mapped), other);
    }

    /// Records an answer (or, with `mapped` None, a give-up) and starts the next step.
    fn settle(&mut self, purpose: Purpose, mapped: Option<SocketAddr>, other: Option<SocketAddr>) {
        match purpose {
            Purpose::Mapping(server) => {
                if let Some(m) = mapped {
                    self.mapped.insert(server, m);
                }
                if Some(server) == self.primary {
                    match other {
                        Some(_) => {
                            self.ask(
                                Purpose::Filter(Change {
                                    ip: true,
                                    port: true,
                                }),
                                server,
                            );
                            self.ask(
                                Purpose::Filter(Change {
                                    ip: false,
                                    port: true,
                                }),
                                server,
                            );
                        }
                        None => self.release_deferred(),
                    }
                }
            }
            Purpose::Filter(change) => {
                let slot = if change.ip {
                    &mut self.change_both
                } else {
                    &mut self.change_port
                };
                *slot = Some(mapped.is_some());
                if self.change_both.is_some() && self.change_port.is_some() {
                    self.release_deferred();
                }
            }
        }
    }

    fn release_deferred(&mut self) {
        for server in std::mem::take(&mut self.deferred) {
            self.ask(Purpose::Mapping(server), server);
        }
    }

    /// The next request to send: (server, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop()
    }

    /// When a request is next due; `None` once the round is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.requests.values().map(|r| r.next).min()
    }

    /// The server-reflexive address as soon as the primary server (or any) answered,
    /// before the filtering tests finish: a candidate worth publishing at once.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.primary
            .and_then(|p| self.mapped.get(&p))
            .or_else(|| self.mapped.values().next())
            .copied()
    }

    /// The classification, once every request was answered or given up.
    pub fn report(&self) -> Option<NatReport> {
        if !self.requests.is_empty() || !self.deferred.is_empty() {
            return None;
        }
        let mut report = classify_mapping(&self.mapped, self.local_port);
        report.filtering = match (self.change_both, self.change_port) {
            (Some(true), _) => Filtering::EndpointIndependent,
            (Some(false), Some(true)) => Filtering::AddressDependent,
            (Some(false), Some(false)) => Filtering::AddressAndPortDependent,
            _ => Filtering::Unknown,
        };
        Some(report)
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
        filtering: Filtering::Unknown,
        public_addr,
        port_preserved: public_addr.map(|a| a.port() == local_port),
        mapped: mapped.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn binding_round_trip() {
        let req = binding_request([7; 12]);
        assert_eq!(crate::classify(&req), crate::PacketClass::Stun);
        assert_eq!(
            parse(&req),
            Some(Stun::BindingRequest {
                txid: [7; 12],
                change: Change::default(),
                response_port: None,
            })
        );
        assert_eq!(
            parse(&binding_request_response_port([5; 12], 40001)),
            Some(Stun::BindingRequest {
                txid: [5; 12],
                change: Change::default(),
                response_port: Some(40001),
            })
        );
        let change = Change {
            ip: true,
            port: false,
        };
        assert_eq!(
            parse(&binding_request_change([1; 12], change)),
            Some(Stun::BindingRequest {
                txid: [1; 12],
                change,
                response_port: None,
            })
        );
        let resp = binding_success(
            [7; 12],
            addr("198.51.100.2:40000"),
            Some(addr("203.0.113.11:3479")),
        );
        assert_eq!(crate::classify(&resp), crate::PacketClass::Stun);
        assert_eq!(
            parse(&resp),
            Some(Stun::BindingSuccess {
                txid: [7; 12],
                mapped: addr("198.51.100.2:40000"),
                other: Some(addr("203.0.113.11:3479")),
            })
        );
        assert_eq!(parse(&resp[..resp.len() - 1]), None);
        assert_eq!(parse(b"not stun at all, just bytes"), None);
    }

    /// `bytes` with one more attribute appended and the header length fixed.
    fn with_attr(bytes: &[u8], kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        push_attr(&mut out, kind, value);
        finish(out)
    }

    #[test]
    fn unknown_comprehension_required_attributes_get_420() {
        let req = binding_request([3; 12]);
        // Comprehension-optional (>= 0x8000) unknowns are ignored (RFC 8489 §14).
        let optional = with_attr(&req, 0x8055, &[1, 2, 3, 4]);
        assert!(matches!(
            parse_request(&optional),
            Some(ServerRequest::Binding { txid, .. }) if txid == [3; 12]
        ));
        // RESPONSE-PORT and CHANGE-REQUEST are understood.
        assert!(matches!(
            parse_request(&binding_request_response_port([3; 12], 4000)),
            Some(ServerRequest::Binding {
                response_port: Some(4000),
                ..
            })
        ));
        // An unknown required one, and RFC 3489's RESPONSE-ADDRESS (0x0002), are listed
        // once each, in order.
        let required = with_attr(&req, 0x7777, &[0; 4]);
        let required = with_attr(&required, 0x0002, &[0, 1, 0, 9, 203, 0, 113, 9]);
        let required = with_attr(&required, 0x7777, &[0; 4]);
        assert_eq!(
            parse_request(&required),
            Some(ServerRequest::Unknown {
                txid: [3; 12],
                attributes: vec![0x7777, 0x0002],
            })
        );
        let answer = unknown_attributes([3; 12], &[0x7777, 0x0002]);
        assert!(answer.len() <= 36, "{} bytes", answer.len());
        assert!(answer.len() <= required.len());
        assert_eq!(crate::classify(&answer), crate::PacketClass::Stun);
        let msg = crate::turn::decode(&answer).expect("a valid STUN message");
        assert_eq!(msg.class(), MessageClass::ErrorResponse);
        assert_eq!(msg.method(), BINDING);
        assert_eq!(msg.transaction_id().as_bytes(), &[3; 12]);
        let code = msg
            .get_attribute::<stun_codec::rfc5389::attributes::ErrorCode>()
            .expect("ERROR-CODE");
        assert_eq!(code.code(), 420);
        let listed = msg
            .get_attribute::<stun_codec::rfc5389::attributes::UnknownAttributes>()
            .expect("UNKNOWN-ATTRIBUTES");
        let listed: Vec<u16> = listed.unknowns().iter().map(|t| t.as_u16()).collect();
        assert_eq!(listed, vec![0x7777, 0x0002]);
        // However many a request names, the answer lists at most four.
        let many: Vec<u16> = (0x7000..0x7040).collect();
        assert_eq!(unknown_attributes([0; 12], &many).len(), 20 + 8 + 4 + 8);
    }

    #[test]
    fn a_bad_fingerprint_is_discarded() {
        let mut msg =
            Message::<Attr>::new(MessageClass::Request, BINDING, TransactionId::new([6; 12]));
        let fp = Fingerprint::new(&msg).expect("a fingerprint");
        msg.add_attribute(fp);
        let good = encode(msg);
        assert!(matches!(
            parse_request(&good),
            Some(ServerRequest::Binding { txid, .. }) if txid == [6; 12]
        ));
        assert!(parse(&good).is_some());
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert_eq!(parse_request(&bad), None);
        assert_eq!(parse(&bad), None);
        // A response with a bad fingerprint is no answer either.
        let mut resp = Message::<Attr>::new(
            MessageClass::SuccessResponse,
            BINDING,
            TransactionId::new([6; 12]),
        );
        resp.add_attribute(XorMappedAddress::new(addr("198.51.100.2:4000")));
        let fp = Fingerprint::new(&resp).expect("a fingerprint");
        resp.add_attribute(fp);
        let mut resp = encode(resp);
        assert!(parse(&resp).is_some());
        let last = resp.len() - 1;
        resp[last] ^= 0x80;
        assert_eq!(parse(&resp), None);
    }

    #[test]
    fn classic_rfc3489_requests_get_mapped_address_and_their_own_transaction_id() {
        let txid: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        let req = classic_binding_request(txid, Change::default());
        assert_eq!(req.len(), 20);
        assert_eq!(
            parse_request(&req),
            Some(ServerRequest::Classic {
                txid,
                change: Change::default()
            })
        );
        let change = Change {
            ip: true,
            port: true,
        };
        assert_eq!(
            parse_request(&classic_binding_request(txid, change)),
            Some(ServerRequest::Classic { txid, change })
        );
        // Not classic: a length that does not match, another type, too short.
        assert_eq!(parse_request(&[&req[..], &[0; 4]].concat()), None);
        let mut other = req.clone();
        other[1] = 0x02;
        assert_eq!(parse_request(&other), None);
        assert_eq!(parse_request(&req[..19]), None);

        let mapped = addr("198.51.100.2:40000");
        let resp = classic_binding_success(txid, mapped, Some(addr("203.0.113.11:3479")));
        assert_eq!(resp.len(), 44);
        assert_eq!(&resp[..4], &[0x01, 0x01, 0x00, 24]);
        assert_eq!(&resp[4..20], &txid);
        // MAPPED-ADDRESS: not XOR-ed.
        assert_eq!(
            &resp[20..32],
            &[
                0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x9c, 0x40, 198, 51, 100, 2
            ]
        );
        assert_eq!(
            &resp[32..44],
            &[
                0x00, 0x05, 0x00, 0x08, 0x00, 0x01, 0x0d, 0x97, 203, 0, 113, 11
            ]
        );
        let v6 = classic_binding_success(txid, addr("[2001:db8::2]:40000"), None);
        assert_eq!(v6.len(), 20 + 4 + 20);
        assert_eq!(&v6[24..28], &[0x00, 0x02, 0x9c, 0x40]);
        // A modern parser does not take a classic answer for an RFC 8489 one.
        assert_eq!(parse(&resp), None);
    }

    /// A NAT: mapping as `kind`, filtering as `filter`, remembering where it sent.
    struct NatModel {
        mapping: Mapping,
        filter: Filtering,
        contacted: BTreeSet<SocketAddr>,
    }

    impl NatModel {
        fn out(&mut self, dst: SocketAddr) -> SocketAddr {
            self.contacted.insert(dst);
            let other_ip = u16::from(dst.ip().to_string().ends_with(".11"));
            let port = match self.mapping {
                Mapping::EndpointIndependent => 40000,
                Mapping::AddressDependent => 40000 + other_ip,
                _ => 40000 + (dst.port() % 100) + 10 * other_ip,
            };
            SocketAddr::new([198, 51, 100, 2].into(), port)
        }

        fn lets_in(&self, src: SocketAddr) -> bool {
            match self.filter {
                Filtering::EndpointIndependent => true,
                Filtering::AddressDependent => self.contacted.iter().any(|c| c.ip() == src.ip()),
                _ => self.contacted.contains(&src),
            }
        }
    }

    /// The four sockets of an RFC 5780 server: two IPs × two ports.
    const IP1: &str = "203.0.113.10";
    const IP2: &str = "203.0.113.11";

    /// Runs a probe through a NAT model against RFC 5780 servers on a virtual clock; only
    /// servers in `answering` reply.
    fn run(
        servers: &[SocketAddr],
        nat: &mut NatModel,
        answering: &[SocketAddr],
        rfc5780: bool,
    ) -> (NatReport, Duration) {
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        let mut now = start;
        let mut probe = NatProbe::new(servers, 40000, 1, now);
        for _ in 0..200 {
            probe.handle_timeout(now);
            while let Some((server, bytes)) = probe.poll_transmit() {
                let Some(Stun::BindingRequest { txid, change, .. }) = parse(&bytes) else {
                    panic!("the probe sent something else");
                };
                let mapped = nat.out(server);
                if !answering.contains(&server) {
                    continue;
                }
                let ip = if change.ip {
                    if server.ip().to_string() == IP1 {
                        IP2
                    } else {
                        IP1
                    }
                } else {
                    &server.ip().to_string()
                };
                let ip = ip.to_owned();
                let port = if change.port {
                    if server.port() == 3478 { 3479 } else { 3478 }
                } else {
                    server.port()
                };
                let src: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
                let other = rfc5780.then(|| {
                    let oip = if server.ip().to_string() == IP1 {
                        IP2
                    } else {
                        IP1
                    };
                    let oport = if server.port() == 3478 { 3479 } else { 3478 };
                    addr(&format!("{oip}:{oport}"))
                });
                if nat.lets_in(src) {
                    probe.handle_response(src, &binding_success(txid, mapped, other));
                }
            }
            if let Some(r) = probe.report() {
                return (r, now - start);
            }
            now = probe.poll_timeout().expect("pending");
        }
        panic!("the probe never finished");
    }

    fn nat(mapping: Mapping, filter: Filtering) -> NatModel {
        NatModel {
            mapping,
            filter,
            contacted: BTreeSet::new(),
        }
    }

    #[test]
    fn mapping_and_filtering_are_classified() {
        let a = addr("203.0.113.10:3478");
        let a2 = addr("203.0.113.10:3479");
        let b = addr("203.0.113.11:3478");
        let all = [a, a2, b];
        let cases = [
            (Mapping::EndpointIndependent, Filtering::EndpointIndependent),
            (Mapping::EndpointIndependent, Filtering::AddressDependent),
            (
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            ),
            (
                Mapping::AddressDependent,
                Filtering::AddressAndPortDependent,
            ),
            (
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            ),
        ];
        for (mapping, filtering) in cases {
            let (r, _) = run(&all, &mut nat(mapping, filtering), &all, true);
            assert_eq!((r.mapping, r.filtering), (mapping, filtering));
        }
        let (r, took) = run(
            &all,
            &mut nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent),
            &all,
            true,
        );
        assert_eq!(r.public_addr, Some(addr("198.51.100.2:40000")));
        assert_eq!(r.port_preserved, Some(true));
        assert_eq!(took, Duration::ZERO, "answers at once finish at once");
        // A filtering NAT drops the changed-address answers: the tests time out (5 s).
        let (_, took) = run(
            &all,
            &mut nat(
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            ),
            &all,
            true,
        );
        assert_eq!(took, Duration::from_secs(5));
        // Two IPs only: dependent, but which kind cannot be told; no OTHER-ADDRESS, no
        // filtering verdict.
        let (r, _) = run(
            &[a, b],
            &mut nat(
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            ),
            &[a, b],
            false,
        );
        assert_eq!(
            (r.mapping, r.filtering),
            (Mapping::EndpointDependent, Filtering::Unknown)
        );
    }

    #[test]
    fn silent_servers_are_retried_then_given_up() {
        let a = addr("203.0.113.10:3478");
        let b = addr("203.0.113.11:3478");
        let mut n = nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
        let (r, took) = run(&[a, b], &mut n, &[a], false);
        // 4 sends at 0, 0.5, 1.5, 3.5 s, then 1.5 s for the last answer.
        assert_eq!(took, Duration::from_secs(5));
        assert_eq!(r.mapping, Mapping::Unknown);
        assert_eq!(r.mapped.len(), 1);
        let (none, _) = run(&[a, b], &mut n, &[], false);
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
        let Some(Stun::BindingRequest { txid, .. }) = parse(&bytes) else {
            panic!("not a request");
        };
        let mut wrong = txid;
        wrong[0] ^= 1;
        probe.handle_response(a, &binding_success(wrong, addr("192.0.2.9:1"), None));
        probe.handle_response(
            addr("192.0.2.66:3478"),
            &binding_success(txid, addr("192.0.2.9:1"), None),
        );
        assert!(probe.report().is_none());
        probe.handle_response(a, &binding_success(txid, addr("198.51.100.2:40000"), None));
        assert_eq!(
            probe.report().map(|r| r.public_addr),
            Some(Some(addr("198.51.100.2:40000")))
        );
    }
}
