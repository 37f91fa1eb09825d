//! LAN emulation: which packets are the party's broadcast and multicast, whether they go out,
//! and to whom; what arrives from peers and whether it goes into the TUN.
//!
//! # Driving a [`Lan`]
//!
//! The [`crate::Node`] owns one and calls it for every packet that is not unicast:
//! - [`Lan::capture`] for a packet this device sent (read from the TUN, or caught on the
//!   physical interface and rewritten by [`from_physical`]). The answer says whether to send
//!   it and to which peers; the event goes into the trace.
//! - [`Lan::receive`] for a broadcast or multicast packet a peer sent; the answer says
//!   whether to write it to the TUN.
//!
//! Rules (ARCHITECTURE.md §4):
//! - Only UDP to the party's directed broadcast, the limited broadcast or an IPv4 multicast
//!   group is carried, and only to a forwarded port (and, for multicast, a forwarded or
//!   locally joined group) unless every port is forwarded.
//! - Only this device's own packets are captured, and received packets are only ever written
//!   to the TUN: no packet is forwarded twice, so no loop can form however many members run
//!   LANrage.
//! - The same packet (source, destination, ports, payload) seen again within
//!   [`DEDUP_WINDOW`] is dropped: a game broadcasting on every interface, a path that
//!   delivered twice.
//! - Each source has a token bucket of packets and bytes per second against storms.
//!
//! IGMP membership reports the kernel writes into the TUN when a local socket joins a group
//! on `lanrage0` (RFC 2236 §2, RFC 3376 §4.2) add that group to the forwarded ones; leaves
//! remove it. They are never sent to peers.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// The prototype's discovery ports: 4445 (Minecraft LAN), 7777 (Terraria, Unreal engine),
/// 27015/27016 (Source engine), 6112 (Blizzard/Warcraft III), 6073 (DirectPlay), plus mDNS
/// (RFC 6762) and SSDP (UPnP device architecture §1).
pub const DEFAULT_PORTS: [u16; 8] = [4445, 7777, 27015, 27016, 6112, 6073, 5353, 1900];
/// mDNS and SSDP groups.
pub const DEFAULT_GROUPS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(224, 0, 0, 251),
    Ipv4Addr::new(239, 255, 255, 250),
];
/// An identical packet within this window is a duplicate. Short: games repeat identical
/// discovery queries every second or so, and those repeats must pass.
pub const DEDUP_WINDOW: Duration = Duration::from_millis(200);
/// Digests remembered at most (a storm of distinct packets cannot grow the table).
const DEDUP_CAPACITY: usize = 4096;
/// Per-source limits: a lobby announces a few times a second; games that run their whole
/// protocol over broadcast (IPX-era titles through wrappers) need a few hundred.
pub const DEFAULT_RATE_PACKETS: u32 = 500;
pub const DEFAULT_RATE_BYTES: u32 = 1024 * 1024;
/// Events kept for `lanrage lan trace`.
pub const TRACE_LEN: usize = 256;
/// Sources with a rate bucket at most; the least recently seen is dropped beyond it.
const MAX_SOURCES: usize = 256;

const PROTO_IGMP: u8 = 2;
const PROTO_UDP: u8 = 17;

/// What kind of LAN destination a packet has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The party's directed broadcast, e.g. 10.66.255.255.
    Broadcast,
    /// 255.255.255.255.
    LimitedBroadcast,
    /// 224.0.0.0/4.
    Multicast,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Broadcast => "broadcast",
            Kind::LimitedBroadcast => "limited-broadcast",
            Kind::Multicast => "multicast",
        }
    }
}

/// A UDP datagram to a LAN destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    pub kind: Kind,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The whole IP packet's length.
    pub size: usize,
}

/// A change of this device's multicast memberships on the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Join(Ipv4Addr),
    Leave(Ipv4Addr),
}

/// What a packet is, as far as LAN emulation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// UDP to a broadcast or multicast destination: a candidate for fan-out.
    Lan(Datagram),
    /// An IGMP membership report or leave.
    Igmp(Vec<Membership>),
    /// To a LAN destination but not carried: not UDP, a fragment, or malformed.
    Unsupported(&'static str),
    /// Not a LAN destination (unicast, or not IPv4).
    NotLan,
}

/// Classifies an IPv4 packet; `broadcast` is the party's directed broadcast address.
pub fn classify(packet: &[u8], broadcast: Option<Ipv4Addr>) -> Class {
    let Some(ip) = Ipv4::parse(packet) else {
        return Class::NotLan;
    };
    let kind = if Some(ip.dst) == broadcast {
        Kind::Broadcast
    } else if ip.dst.is_broadcast() {
        Kind::LimitedBroadcast
    } else if ip.dst.is_multicast() {
        Kind::Multicast
    } else {
        return Class::NotLan;
    };
    if ip.fragmented {
        return Class::Unsupported("fragmented");
    }
    match ip.protocol {
        PROTO_UDP => {
            let Some(udp) = packet.get(ip.header_len..ip.total_len) else {
                return Class::Unsupported("malformed");
            };
            if udp_length(udp).is_none() {
                return Class::Unsupported("malformed");
            }
            Class::Lan(Datagram {
                kind,
                src: SocketAddrV4::new(ip.src, u16::from_be_bytes([udp[0], udp[1]])),
                dst: SocketAddrV4::new(ip.dst, u16::from_be_bytes([udp[2], udp[3]])),
                size: ip.total_len,
            })
        }
        PROTO_IGMP if kind == Kind::Multicast => match packet.get(ip.header_len..ip.total_len) {
            Some(igmp) => Class::Igmp(parse_igmp(igmp)),
            None => Class::Unsupported("malformed"),
        },
        _ => Class::Unsupported("not UDP"),
    }
}

/// Why a packet (or one copy of it) was not carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// The destination port (or group) is not forwarded.
    NotForwarded,
    Duplicate,
    RateLimited,
    /// Not UDP, fragmented, malformed.
    Unsupported(&'static str),
    /// The peer has no session yet: a stale announcement is worth nothing once it has one.
    NotConnected,
    /// Physical-interface capture is off for this port.
    PhysicalOff,
}

impl Drop {
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::NotForwarded => "port not forwarded",
            Drop::Duplicate => "duplicate",
            Drop::RateLimited => "rate limited",
            Drop::Unsupported(why) => why,
            Drop::NotConnected => "not connected",
            Drop::PhysicalOff => "physical capture off",
        }
    }
}

/// Where a captured packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Read from the TUN.
    Tun,
    /// Caught on the physical interface and rewritten to the party's addresses.
    Physical,
    /// Received from a peer.
    Peer,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Tun => "tun",
            Via::Physical => "physical",
            Via::Peer => "peer",
        }
    }
}

/// One broadcast or multicast packet and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Instant,
    pub via: Via,
    pub datagram: Datagram,
    /// Peers it was sent to (captured packets).
    pub sent_to: Vec<Ipv4Addr>,
    /// Peers it was not sent to, and why.
    pub skipped: Vec<(Ipv4Addr, Drop)>,
    /// Why the whole packet was dropped, if it was.
    pub dropped: Option<Drop>,
}

/// Counters of LAN emulation, since start (the local API's shape).
pub use lanrage_proto::local::LanCounters as Counters;

/// What is forwarded, from each source the daemon combines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Forward every UDP port and every group.
    pub all: bool,
    /// Capture on the physical interface for every forwarded port.
    pub physical: bool,
    /// The player's allow-list.
    pub ports: BTreeSet<u16>,
    pub groups: BTreeSet<Ipv4Addr>,
    pub rate_packets: u32,
    pub rate_bytes: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            all: false,
            physical: false,
            ports: BTreeSet::new(),
            groups: BTreeSet::new(),
            rate_packets: DEFAULT_RATE_PACKETS,
            rate_bytes: DEFAULT_RATE_BYTES,
        }
    }
}

/// What the running games' profiles add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub ports: BTreeSet<u16>,
    pub groups: BTreeSet<Ipv4Addr>,
    /// Ports whose discovery is also caught on the physical interface.
    pub physical_ports: BTreeSet<u16>,
}

/// The decision for a captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// Send it to these peers.
    Forward(Vec<Ipv4Addr>),
    /// Memberships changed (the multicast routes may need updating); nothing to send.
    Memberships,
    Dropped(Drop),
    /// Not a LAN packet.
    NotLan,
}

/// A party member as fan-out sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub ip: Ipv4Addr,
    pub connected: bool,
}

/// LAN emulation state: forwarding rules, duplicate window, rate buckets, trace, counters.
pub struct Lan {
    settings: Settings,
    profile: Profile,
    /// Groups local sockets joined on the TUN.
    joined: BTreeSet<Ipv4Addr>,
    dedup: Dedup,
    buckets: HashMap<Ipv4Addr, Bucket>,
    trace: VecDeque<Event>,
    counters: Counters,
    /// Bumped whenever the set of groups to route into the TUN changes.
    generation: u64,
}

impl Default for Lan {
    fn default() -> Self {
        Self::new(0)
    }
}

impl Lan {
    /// `seed` keys the duplicate digests (so a peer cannot aim collisions at them).
    pub fn new(seed: u64) -> Self {
        Self {
            settings: Settings::default(),
            profile: Profile::default(),
            joined: BTreeSet::new(),
            dedup: Dedup::new(seed),
            buckets: HashMap::new(),
            trace: VecDeque::with_capacity(TRACE_LEN),
            counters: Counters::default(),
            generation: 0,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn set_settings(&mut self, settings: Settings) {
        if settings.all != self.settings.all || settings.groups != self.settings.groups {
            self.generation += 1;
        }
        self.settings = settings;
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Sets what the running games' profiles forward (replacing the previous set).
    pub fn set_profile(&mut self, profile: Profile) {
        if profile.groups != self.profile.groups {
            self.generation += 1;
        }
        self.profile = profile;
    }

    pub fn joined(&self) -> &BTreeSet<Ipv4Addr> {
        &self.joined
    }

    /// Forgets joined groups (the TUN they were joined on is gone).
    pub fn clear_joined(&mut self) {
        if !self.joined.is_empty() {
            self.joined.clear();
            self.generation += 1;
        }
    }

    /// Every forwarded port (ignoring [`Settings::all`]).
    pub fn ports(&self) -> BTreeSet<u16> {
        let mut ports: BTreeSet<u16> = DEFAULT_PORTS.into_iter().collect();
        ports.extend(&self.settings.ports);
        ports.extend(&self.profile.ports);
        ports
    }

    /// Every forwarded group (ignoring [`Settings::all`]): these get a route into the TUN.
    pub fn groups(&self) -> BTreeSet<Ipv4Addr> {
        let mut groups: BTreeSet<Ipv4Addr> = DEFAULT_GROUPS.into_iter().collect();
        groups.extend(&self.settings.groups);
        groups.extend(&self.profile.groups);
        groups.extend(&self.joined);
        groups
    }

    /// Whether the physical interface should be watched at all.
    pub fn wants_physical(&self) -> bool {
        self.settings.physical || !self.profile.physical_ports.is_empty()
    }

    /// Changes whenever [`Lan::groups`] or [`Settings::all`] may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The last [`TRACE_LEN`] events, oldest first.
    pub fn trace(&self) -> impl Iterator<Item = &Event> {
        self.trace.iter()
    }

    /// Decides what to do with a packet this device sent. `members` are the other party
    /// members; `broadcast` the party's directed broadcast address.
    pub fn capture(
        &mut self,
        packet: &[u8],
        via: Via,
        broadcast: Option<Ipv4Addr>,
        members: &[Member],
        now: Instant,
    ) -> Capture {
        let d = match classify(packet, broadcast) {
            Class::NotLan => return Capture::NotLan,
            Class::Igmp(changes) => {
                self.apply_memberships(&changes);
                return Capture::Memberships;
            }
            Class::Unsupported(why) => {
                self.counters.unsupported += 1;
                return Capture::Dropped(Drop::Unsupported(why));
            }
            Class::Lan(d) => d,
        };
        self.counters.captured += 1;
        if via == Via::Physical {
            self.counters.captured_physical += 1;
        }
        let verdict = if !self.forwards(&d) {
            Err(Drop::NotForwarded)
        } else if via == Via::Physical && !self.captures_physical(d.dst.port()) {
            Err(Drop::PhysicalOff)
        } else {
            self.admit(packet, &d, now)
        };
        let mut event = Event {
            at: now,
            via,
            datagram: d,
            sent_to: Vec::new(),
            skipped: Vec::new(),
            dropped: None,
        };
        let result = match verdict {
            Err(why) => {
                if matches!(why, Drop::NotForwarded | Drop::PhysicalOff) {
                    self.counters.not_forwarded += 1;
                }
                event.dropped = Some(why);
                Capture::Dropped(why)
            }
            Ok(()) => {
                let (to, skipped) = fan_out(members);
                if !to.is_empty() {
                    self.counters.forwarded += 1;
                    self.counters.copies += to.len() as u64;
                }
                event.sent_to.clone_from(&to);
                event.skipped = skipped;
                Capture::Forward(to)
            }
        };
        self.record(event);
        result
    }

    /// Decides whether a broadcast or multicast packet from a peer (its source already
    /// checked against the peer's virtual IP) goes into the TUN. Received packets are never captured again: this is the only way they go.
    pub fn receive(
        &mut self,
        packet: &[u8],
        broadcast: Option<Ipv4Addr>,
        now: Instant,
    ) -> Result<(), Drop> {
        let d = match classify(packet, broadcast) {
            Class::Lan(d) => d,
            Class::NotLan => {
                self.counters.unsupported += 1;
                return Err(Drop::Unsupported("not a LAN destination"));
            }
            Class::Igmp(_) => {
                self.counters.unsupported += 1;
                return Err(Drop::Unsupported("not UDP"));
            }
            Class::Unsupported(why) => {
                self.counters.unsupported += 1;
                return Err(Drop::Unsupported(why));
            }
        };
        self.counters.received += 1;
        let verdict = self.admit(packet, &d, now);
        self.record(Event {
            at: now,
            via: Via::Peer,
            datagram: d,
            sent_to: Vec::new(),
            skipped: Vec::new(),
            dropped: verdict.err(),
        });
        if verdict.is_ok() {
            self.counters.injected += 1;
        }
        verdict
    }

    /// Forgets a departed member's rate bucket.
    pub fn forget(&mut self, ip: Ipv4Addr) {
        self.buckets.remove(&ip);
    }

    fn forwards(&self, d: &Datagram) -> bool {
        if self.settings.all {
            return true;
        }
        let port = d.dst.port();
        let port_ok = DEFAULT_PORTS.contains(&port)
            || self.settings.ports.contains(&port)
            || self.profile.ports.contains(&port)
            || self.profile.physical_ports.contains(&port);
        if !port_ok {
            return false;
        }
        d.kind != Kind::Multicast || {
            let g = d.dst.ip();
            DEFAULT_GROUPS.contains(g)
                || self.settings.groups.contains(g)
                || self.profile.groups.contains(g)
                || self.joined.contains(g)
        }
    }

    fn captures_physical(&self, port: u16) -> bool {
        self.settings.physical || self.profile.physical_ports.contains(&port)
    }

    /// Duplicate window, then the source's rate bucket.
    fn admit(&mut self, packet: &[u8], d: &Datagram, now: Instant) -> Result<(), Drop> {
        let payload = packet
            .get(ipv4_header_len(packet) + 8..d.size)
            .unwrap_or_default();
        if !self.dedup.first_sighting(d, payload, now) {
            self.counters.deduplicated += 1;
            return Err(Drop::Duplicate);
        }
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(d.src.ip()) {
            let oldest = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.buckets.remove(&k);
            }
        }
        let (pps, bps) = (self.settings.rate_packets, self.settings.rate_bytes);
        let bucket = self
            .buckets
            .entry(*d.src.ip())
            .or_insert_with(|| Bucket::full(pps, bps, now));
        if !bucket.take(d.size, pps, bps, now) {
            self.counters.rate_limited += 1;
            return Err(Drop::RateLimited);
        }
        Ok(())
    }

    fn apply_memberships(&mut self, changes: &[Membership]) {
        for change in changes {
            let changed = match *change {
                Membership::Join(g) => self.joined.insert(g),
                Membership::Leave(g) => self.joined.remove(&g),
            };
            if changed {
                self.generation += 1;
            }
        }
    }

    fn record(&mut self, event: Event) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        self.trace.push_back(event);
    }
}

/// Which members get a captured packet: every other member with a session, each once.
pub fn fan_out(members: &[Member]) -> (Vec<Ipv4Addr>, Vec<(Ipv4Addr, Drop)>) {
    let mut to = Vec::with_capacity(members.len());
    let mut skipped = Vec::new();
    let mut seen = BTreeSet::new();
    for m in members {
        if !seen.insert(m.ip) {
            continue;
        }
        if m.connected {
            to.push(m.ip);
        } else {
            skipped.push((m.ip, Drop::NotConnected));
        }
    }
    (to, skipped)
}

/// Rewrites a packet caught on the physical interface into the party: the source becomes
/// `local` (peers accept only our virtual IP from us, and answer it through the tunnel), a
/// directed broadcast of the physical subnet becomes the party's, and both checksums are
/// recomputed. `None` for anything but an unfragmented UDP broadcast or multicast.
pub fn from_physical(packet: &[u8], local: Ipv4Addr, party_broadcast: Ipv4Addr) -> Option<Vec<u8>> {
    let ip = Ipv4::parse(packet)?;
    if ip.protocol != PROTO_UDP || ip.fragmented {
        return None;
    }
    let dst = if ip.dst.is_multicast() || ip.dst.is_broadcast() {
        ip.dst
    } else {
        // Caught because its link-layer destination was broadcast: the subnet's broadcast.
        party_broadcast
    };
    let mut out = packet.get(..ip.total_len)?.to_vec();
    out[12..16].copy_from_slice(&local.octets());
    out[16..20].copy_from_slice(&dst.octets());
    out[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&[&out[..ip.header_len]]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
    let (header, udp) = out.split_at_mut(ip.header_len);
    let udp_len = udp_length(udp)?;
    udp[6..8].copy_from_slice(&[0, 0]);
    let len = u16::try_from(udp_len).ok()?.to_be_bytes();
    let pseudo = [&header[12..20], &[0, PROTO_UDP], &len[..]].concat();
    let sum = match checksum(&[&pseudo, &udp[..udp_len]]) {
        0 => 0xffff, // RFC 768: a computed zero is sent as all ones
        s => s,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    Some(out)
}

/// The IPv4 header fields LAN emulation reads.
struct Ipv4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    header_len: usize,
    total_len: usize,
    fragmented: bool,
}

impl Ipv4 {
    fn parse(p: &[u8]) -> Option<Self> {
        if p.len() < 20 || p[0] >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(p[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if header_len < 20 || total_len < header_len || total_len > p.len() {
            return None;
        }
        let flags_frag = u16::from_be_bytes([p[6], p[7]]);
        Some(Self {
            src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
            dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
            protocol: p[9],
            header_len,
            total_len,
            // More fragments, or an offset: not the whole datagram.
            fragmented: flags_frag & 0x3fff != 0,
        })
    }
}

/// The UDP length field, when it is at least a header and within the IP payload `udp`.
fn udp_length(udp: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    (len >= 8 && len <= udp.len()).then_some(len)
}

fn ipv4_header_len(p: &[u8]) -> usize {
    p.first().map_or(0, |b| usize::from(b & 0x0f) * 4)
}

/// IGMPv1/v2 reports and leaves (RFC 2236 §2) and IGMPv3 reports (RFC 3376 §4.2).
fn parse_igmp(igmp: &[u8]) -> Vec<Membership> {
    let group = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    match igmp.first() {
        Some(0x12 | 0x16) if igmp.len() >= 8 => vec![Membership::Join(group(&igmp[4..8]))],
        Some(0x17) if igmp.len() >= 8 => vec![Membership::Leave(group(&igmp[4..8]))],
        Some(0x22) if igmp.len() >= 8 => {
            let records = usize::from(u16::from_be_bytes([igmp[6], igmp[7]]));
            let mut out = Vec::new();
            let mut at = 8;
            for _ in 0..records {
                let Some(r) = igmp.get(at..at + 8) else { break };
                let (kind, aux, sources) = (r[0], r[1], u16::from_be_bytes([r[2], r[3]]));
                let g = group(&r[4..8]);
                let end = at + 8 + 4 * usize::from(sources) + 4 * usize::from(aux);
                if end > igmp.len() {
                    break; // a truncated record is not trusted
                }
                // EXCLUDE mode (any sources) and new sources mean "receiving"; a change to
                // INCLUDE nothing means "left".
                match kind {
                    2 | 4 => out.push(Membership::Join(g)),
                    1 | 5 if sources > 0 => out.push(Membership::Join(g)),
                    3 if sources == 0 => out.push(Membership::Leave(g)),
                    3 => out.push(Membership::Join(g)),
                    _ => {}
                }
                at = end;
            }
            out.retain(
                |m| matches!(m, Membership::Join(g) | Membership::Leave(g) if g.is_multicast()),
            );
            out
        }
        _ => Vec::new(),
    }
}

/// The Internet checksum (RFC 1071) over several slices, as if concatenated (each but the
/// last must have even length).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Digests seen within [`DEDUP_WINDOW`], oldest first.
struct Dedup {
    hasher: DigestKey,
    seen: HashMap<u64, Instant>,
    order: VecDeque<(Instant, u64)>,
}

/// SipHash keys from the seed: [`std::hash::RandomState`] would read the OS.
#[derive(Clone, Copy)]
struct DigestKey(u64, u64);

impl BuildHasher for DigestKey {
    type Hasher = std::hash::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.0);
        h.write_u64(self.1);
        h
    }
}

impl Dedup {
    fn new(seed: u64) -> Self {
        Self {
            hasher: DigestKey(seed, seed.rotate_left(29) ^ 0x6c61_6e72_6167_6521),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether this packet was not seen within the window (and remembers it).
    fn first_sighting(&mut self, d: &Datagram, payload: &[u8], now: Instant) -> bool {
        while let Some(&(t, digest)) = self.order.front() {
            if now.saturating_duration_since(t) < DEDUP_WINDOW && self.order.len() < DEDUP_CAPACITY
            {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&digest) == Some(&t) {
                self.seen.remove(&digest);
            }
        }
        let mut h = self.hasher.build_hasher();
        h.write(&d.src.ip().octets());
        h.write_u16(d.src.port());
        h.write(&d.dst.ip().octets());
        h.write_u16(d.dst.port());
        h.write(payload);
        let digest = h.finish();
        if self.seen.contains_key(&digest) {
            return false;
        }
        self.seen.insert(digest, now);
        self.order.push_back((now, digest));
        true
    }
}

/// A token bucket of packets and bytes, each holding one second's worth.
struct Bucket {
    packets: f64,
    bytes: f64,
    at: Instant,
    last: Instant,
}

impl Bucket {
    fn full(pps: u32, bps: u32, now: Instant) -> Self {
        Self {
            packets: f64::from(pps),
            bytes: f64::from(bps),
            at: now,
            last: now,
        }
    }

    fn take(&mut self, size: usize, pps: u32, bps: u32, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.last = now;
        self.packets = (self.packets + dt * f64::from(pps)).min(f64::from(pps));
        self.bytes = (self.bytes + dt * f64::from(bps)).min(f64::from(bps));
        let size = size as f64;
        if self.packets < 1.0 || self.bytes < size {
            return false;
        }
        self.packets -= 1.0;
        self.bytes -= size;
        true
    }
}

/// A UDP/IPv4 packet, for tests here and in the node's.
pub fn build_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    p[8] = 1; // TTL 1: LAN discovery stays on the link
    p[9] = PROTO_UDP;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(
        &u16::try_from(8 + payload.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    p[28..].copy_from_slice(payload);
    p
}

#[cfg(test)]
mod tests;
