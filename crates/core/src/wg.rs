//! The WireGuard mesh node: one userspace WireGuard session per party member over one UDP
//! socket, with time injected.
//!
//! # Driving a [`Node`]
//!
//! The node never reads a clock or touches a socket. Its owner:
//! 1. feeds packets read from the TUN to [`Node::handle_tun_packet`] and datagrams read from
//!    the UDP socket (already classified as WireGuard) to [`Node::handle_datagram`];
//! 2. calls [`Node::handle_timeout`] once `now` reaches [`Node::poll_timeout`];
//! 3. after each call, drains [`Node::poll_transmit`] to the UDP socket and
//!    [`Node::poll_tun`] to the TUN.
//!
//! Every call takes `now`. The WireGuard engine underneath (gotatun's `noise::Tunn`) keeps its
//! own timers; it is built with gotatun's `mock_instant` clock, which this wrapper sets to
//! `now` before every call into it, so the engine sees exactly the time the owner injects —
//! the real clock in the daemon, a virtual one in tests.
//!
//! Cryptokey routing: a decrypted packet is passed on only if its inner source address is
//! the sending peer's virtual IP; anything else is dropped and counted.
//!
//! Handshake floods: the node decides "under load" over all sources, as kernel WireGuard
//! does, answers handshakes without a valid cookie with cookie replies while it is, and
//! bounds the Diffie-Hellman work per second ([`guard`]).

pub mod guard;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gotatun::noise::errors::WireGuardError;
use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Packet, WgKind};
use gotatun::tun::MtuWatcher;
use gotatun::x25519::{PublicKey, StaticSecret};
use lanrage_proto::DeviceKey;
use lanrage_proto::api::NatHint;
use lanrage_proto::local::PathKind;
use mock_instant::thread_local::MockClock;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::lan::{self, Capture, Lan, Member, Via};
use crate::packet::{self, Probe, ProbeKind};
use crate::quality::Quality;

/// How often WireGuard's own timers are serviced; they have one-second resolution.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// How often the path in use is probed: latency, consent freshness, and the NAT binding.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How often every other path is probed, so the next one is ready when the current fails.
const BACKUP_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Paths that never answered are probed this rarely after [`PUNCH_WINDOW`] (the probes
/// hold our NAT's binding towards them open for when the peer's side opens): the default
/// keepalive until [`Node::set_keepalive`] sizes it from the measured binding lifetime.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);
/// The path in use is dead when its last answered probe is older than this: with probes
/// every 250 ms that is about five lost in a row, so a failed path is left within 1.5 s.
const PATH_DEAD_AFTER: Duration = Duration::from_millis(1_200);
/// Other paths, probed once a second, are dead after this (two probes lost).
const BACKUP_DEAD_AFTER: Duration = Duration::from_millis(2_500);
/// A peer heard from within this window is on a working path.
const ALIVE_WINDOW: Duration = Duration::from_secs(5);
/// A path is worth leaving for another of the same kind only if that one is this much
/// faster (ratio) and by at least [`SWITCH_MIN_GAIN`]: no flapping between near-equals.
const SWITCH_RATIO: f64 = 0.7;
const SWITCH_MIN_GAIN: Duration = Duration::from_millis(2);
/// Paths learned from incoming packets (peer-reflexive, relayed) kept per peer.
const MAX_LEARNED_PATHS: usize = 8;
/// Probes awaiting their pong, per peer.
const MAX_PENDING_PROBES: usize = 64;
/// While a peer has not answered, a fresh handshake initiation goes to its candidates this
/// often (instead of WireGuard's 5 s REKEY_TIMEOUT): a NAT that filters by address drops
/// the first packets from a peer until our own packet to it opened the way, and the peer's
/// next try should not wait five seconds.
const PUNCH_INTERVAL: Duration = Duration::from_secs(1);
/// After this long without an answer, punching falls back to WireGuard's own pace.
const PUNCH_WINDOW: Duration = Duration::from_secs(20);
/// A learned endpoint silent this long is dropped in favour of the published candidates.
const ENDPOINT_STALE: Duration = Duration::from_secs(15);
/// A peer never heard from for this long after being added is unreachable, not connecting.
const CONNECT_GRACE: Duration = Duration::from_secs(15);
/// RTT samples kept per peer; the reported latency is their median, so one probe that
/// waited for a handshake or a scheduler hiccup does not skew it.
const RTT_SAMPLES: usize = 8;

/// Birthday punching (see [`Spray`]): extra sockets on the hard side, guesses from the easy
/// side per round, rounds at most, the pause between rounds, and how long after a peer
/// appears the ordinary candidates get to work first.
pub const SPRAY_SOCKETS: u16 = 256;
const SPRAY_GUESSES: usize = 1024;
const SPRAY_ROUNDS: u8 = 3;
const SPRAY_ROUND_INTERVAL: Duration = Duration::from_secs(10);
const SPRAY_AFTER: Duration = Duration::from_secs(2);
/// Guesses sent per timer tick: a round's 1024 spread over one second.
const SPRAY_GUESSES_PER_TICK: usize = 256;
/// A Linux NAT picks random ports from 1024–65535.
const SPRAY_PORT_MIN: u16 = 1024;

/// How a datagram travels between this device and a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// Straight from the UDP socket to this address (which may be the peer's TURN relayed
    /// address: then the peer's relay carries it).
    Direct(SocketAddr),
    /// Through this device's own TURN allocation on `server`, to `peer` as the relay sees
    /// it (a peer that reached us on our relayed address is answered this way).
    Relay {
        server: SocketAddr,
        peer: SocketAddr,
    },
    /// From the extra punching socket `index` (below [`SPRAY_SOCKETS`]) to `peer`: behind a
    /// NAT that maps every destination separately, each extra socket is one more mapping
    /// towards the peer (see [`Spray`]).
    Socket { index: u16, peer: SocketAddr },
}

impl Route {
    /// The peer's address on this route (as the relay sees it, when through ours).
    pub fn peer_addr(&self) -> SocketAddr {
        match self {
            Route::Direct(a) | Route::Relay { peer: a, .. } | Route::Socket { peer: a, .. } => *a,
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Direct(a) => write!(f, "{a}"),
            Route::Relay { server, peer } => write!(f, "{peer} via relay {server}"),
            Route::Socket { index, peer } => write!(f, "{peer} from punching socket {index}"),
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: Route,
    pub payload: Vec<u8>,
    /// Carries a high-priority game's packet: sent before everything else and marked
    /// DSCP EF on the wire.
    pub priority: bool,
}

/// Node-wide counters of packets that were dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Decrypted packets whose inner source was not the sending peer's virtual IP.
    pub dropped_spoofed: u64,
    /// TUN packets for an address no peer owns.
    pub dropped_no_route: u64,
    /// Decrypted packets not addressed to this device (nor broadcast or multicast): a peer
    /// must not use us as a router into our other networks.
    pub dropped_wrong_destination: u64,
    /// Datagrams that were not valid WireGuard, or failed to decrypt.
    pub dropped_invalid: u64,
    /// Valid handshakes from keys that are not party members.
    pub dropped_unknown_peer: u64,
    /// Handshake messages answered with a cookie reply instead of being processed: the
    /// node was under load and they carried no valid cookie (see [`guard`]).
    pub handshakes_cookied: u64,
    /// Handshake messages with valid MACs dropped unprocessed: their source IP was over
    /// its rate under load, or the second's Diffie-Hellman budget was spent.
    pub handshakes_dropped: u64,
}

/// One peer as the data plane sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub key: DeviceKey,
    pub virtual_ip: Ipv4Addr,
    /// Where traffic to the peer goes now.
    pub endpoint: Option<Route>,
    pub path: PathKind,
    /// The relay address traffic passes through, when relayed: the peer's relayed address,
    /// or our own relay server.
    pub relay: Option<SocketAddr>,
    /// How often the path in use changed.
    pub path_changes: u64,
    /// Median of the recent probe round trips.
    pub srtt: Option<Duration>,
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Authenticated handshake messages accepted from the peer (one per new session).
    pub handshakes: u64,
    /// Latency (moving average), jitter, loss, score and trend of the path in use.
    pub quality: crate::quality::Report,
}

/// A WireGuard mesh: this device and a session to every other party member.
pub struct Node {
    secret: StaticSecret,
    public: PublicKey,
    index_table: IndexTable,
    /// gotatun's MAC checks, never "under load" itself (its limit is per source IP, which
    /// a flood from many addresses never trips): MAC1 only.
    mac1_only: Arc<RateLimiter>,
    /// gotatun's MAC checks with a limit of zero: MAC1 and a valid cookie MAC2, else a
    /// cookie reply. Used while [`guard::Guard`] says the node is under load.
    cookie_required: Arc<RateLimiter>,
    /// Whether the node is under load, per-IP buckets and the DH budget.
    guard: guard::Guard,
    local_ip: Option<Ipv4Addr>,
    /// The party broadcast address (e.g. 10.66.255.255), derived from the prefix.
    broadcast: Option<Ipv4Addr>,
    /// Whether latency probes are sent (on by default).
    probing: bool,
    peers: BTreeMap<DeviceKey, Peer>,
    by_ip: HashMap<Ipv4Addr, DeviceKey>,
    by_index: HashMap<u32, DeviceKey>,
    transmits: VecDeque<Transmit>,
    to_tun: VecDeque<Vec<u8>>,
    /// Game traffic on the running games' priority ports, served before the queues above.
    priority_transmits: VecDeque<Transmit>,
    priority_tun: VecDeque<Vec<u8>>,
    priority_ports: crate::games::Ports,
    /// Set while the packet being encrypted is priority traffic.
    sending_priority: bool,
    epoch: Instant,
    /// The latest injected time.
    now: Instant,
    next_tick: Instant,
    rng: StdRng,
    mtu: MtuWatcher,
    counters: Counters,
    /// This device's NAT, once probed.
    nat: Option<NatHint>,
    /// How often paths that only need their NAT binding held are probed.
    keepalive: Duration,
    /// Broadcast and multicast across the party.
    lan: Lan,
}

struct Peer {
    /// When the last handshake initiation went out (ours, forced or WireGuard's own).
    last_init: Option<Instant>,
    virtual_ip: Ipv4Addr,
    candidates: Vec<SocketAddr>,
    /// The candidates that are the peer's TURN relayed addresses.
    relayed: Vec<SocketAddr>,
    /// Every way to the peer known: one per candidate, and routes learned from packets.
    paths: Vec<Path>,
    /// The route traffic goes on; `None` until a path answered (then initiations go to
    /// every candidate).
    endpoint: Option<Route>,
    path_changes: u64,
    tunn: Tunn,
    added_at: Instant,
    last_rx: Option<Instant>,
    /// Before a session exists: when the next probe (which starts a handshake) is due.
    next_probe: Instant,
    probe_seq: u32,
    /// Probes in flight: sequence number and the route each went on.
    pending: VecDeque<(u32, Route)>,
    rtts: VecDeque<Duration>,
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    /// Authenticated handshake messages accepted from the peer.
    handshakes: u64,
    /// Latency, jitter, loss and score of the path in use.
    quality: Quality,
    /// The peer's NAT, as it reported it.
    nat: Option<NatHint>,
    spray: Spray,
}

/// Birthday punching, for a pair where one NAT maps every destination to a new public port
/// (RFC 4787 endpoint-dependent, "hard") and the other keeps one port for all ("easy"):
/// no address the hard side can publish is the one its NAT will use towards the peer.
///
/// Once the pair has a session (through a relay) but no direct path, each round:
/// - the hard side sends an in-tunnel probe from each of [`SPRAY_SOCKETS`] extra sockets to
///   the easy side's public address, three times a second apart. Each opens its own mapping
///   on the hard NAT, answerable from exactly that address;
/// - a second in, the easy side sends [`SPRAY_GUESSES`] in-tunnel probes to random ports of
///   the hard side's public IP, each opening its own NAT's filter for that address.
///
/// A guess that lands on one of the mappings reaches the hard side (or opens the way for
/// its next probe): an authenticated packet, so the receiver learns the path and checks it
/// like any other, and traffic moves there. With 256 mappings among the 64 512 ports a Linux
/// NAT picks from, one round hits with probability 1 − (1 − 256/64512)^1024 ≈ 98 %; at most
/// [`SPRAY_ROUNDS`] rounds run, [`SPRAY_ROUND_INTERVAL`] apart, so the whole attempt is
/// bounded at 2 304 packets from the hard side and 3 072 from the easy side. Both hard:
/// nothing to aim at, the relay stays.
#[derive(Debug, Default)]
struct Spray {
    rounds: u8,
    /// Ticks into the current round; `None` between rounds.
    step: Option<u8>,
    next: Option<Instant>,
}

/// Which side of a birthday punch this device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SprayRole {
    /// Our NAT is hard: send from the extra sockets to the peer's public address.
    Hard(SocketAddr),
    /// Our NAT is easy: guess ports on the peer's public IP.
    Easy(std::net::IpAddr),
}

fn spray_role(own: Option<NatHint>, peer: Option<NatHint>) -> Option<SprayRole> {
    let (own, peer) = (own?, peer?);
    if own.public_addr.ip() == peer.public_addr.ip() {
        return None; // the same NAT: host candidates meet inside it
    }
    match (own.hard, peer.hard) {
        (true, false) => Some(SprayRole::Hard(peer.public_addr)),
        (false, true) => Some(SprayRole::Easy(peer.public_addr.ip())),
        _ => None,
    }
}

/// One way to a peer (an ICE candidate pair, in RFC 8445 terms, with this device's one
/// socket — or its TURN allocation — as the local side).
#[derive(Debug, Clone)]
struct Path {
    route: Route,
    /// Through a relay (ours or the peer's).
    relayed: bool,
    /// Learned from an incoming packet rather than published by the peer.
    learned: bool,
    /// Last answered probe, or authenticated handshake, on this path: proof it works both
    /// ways.
    last_ok: Option<Instant>,
    /// Last authenticated packet that arrived on this path.
    last_rx: Option<Instant>,
    added: Instant,
    next_probe: Instant,
    rtts: VecDeque<Duration>,
}

impl Path {
    fn new(route: Route, relayed: bool, learned: bool, now: Instant) -> Self {
        Self {
            route,
            relayed,
            learned,
            last_ok: None,
            last_rx: None,
            added: now,
            next_probe: now,
            rtts: VecDeque::with_capacity(RTT_SAMPLES),
        }
    }

    /// Whether the path answered recently enough: the path in use is probed more often,
    /// so it is held to a shorter window.
    fn alive(&self, now: Instant, in_use: bool) -> bool {
        let window = if in_use {
            PATH_DEAD_AFTER
        } else {
            BACKUP_DEAD_AFTER
        };
        self.last_ok
            .is_some_and(|t| now.saturating_duration_since(t) <= window)
    }

    fn rtt(&self) -> Duration {
        median(&self.rtts).unwrap_or(Duration::from_secs(1))
    }
}

impl Peer {
    fn is_relayed(&self, route: Route) -> bool {
        match route {
            Route::Direct(a) => self.relayed.contains(&a),
            Route::Relay { .. } => true,
            Route::Socket { .. } => false,
        }
    }

    /// Whether a path that does not go through a relay works now.
    fn direct_alive(&self, now: Instant) -> bool {
        self.paths
            .iter()
            .any(|p| !p.relayed && p.alive(now, Some(p.route) == self.endpoint))
    }

    /// One path per candidate; learned paths stay.
    fn sync_paths(&mut self, now: Instant) {
        let candidates = &self.candidates;
        self.paths.retain(|p| {
            p.learned || matches!(p.route, Route::Direct(a) if candidates.contains(&a))
        });
        for i in 0..self.candidates.len() {
            let route = Route::Direct(self.candidates[i]);
            let relayed = self.is_relayed(route);
            match self.paths.iter_mut().find(|p| p.route == route) {
                Some(p) => p.relayed = relayed,
                None => self.paths.push(Path::new(route, relayed, false, now)),
            }
        }
        if let Some(e) = self.endpoint
            && !self.paths.iter().any(|p| p.route == e)
        {
            self.endpoint = None;
        }
    }

    fn path_index(&mut self, route: Route, now: Instant) -> usize {
        if let Some(i) = self.paths.iter().position(|p| p.route == route) {
            return i;
        }
        let learned = self.paths.iter().filter(|p| p.learned).count();
        if learned >= MAX_LEARNED_PATHS {
            let endpoint = self.endpoint;
            if let Some(i) = self
                .paths
                .iter()
                .enumerate()
                .filter(|(_, p)| p.learned && Some(p.route) != endpoint)
                .min_by_key(|(_, p)| p.last_rx.unwrap_or(p.added))
                .map(|(i, _)| i)
            {
                self.paths.remove(i);
            }
        }
        let relayed = self.is_relayed(route);
        self.paths.push(Path::new(route, relayed, true, now));
        self.paths.len() - 1
    }

    /// An authenticated packet arrived on `route`; `confirmed` when it proves the path
    /// works both ways (a handshake message answering or starting one).
    fn heard(&mut self, route: Route, now: Instant, confirmed: bool) {
        let i = self.path_index(route, now);
        let path = &mut self.paths[i];
        path.last_rx = Some(now);
        if confirmed {
            path.last_ok = Some(now);
        }
        if path.last_ok.is_none() {
            path.next_probe = now; // a new way in: check it at once
        }
        self.last_rx = Some(now);
        let current_alive = self
            .endpoint
            .and_then(|e| self.paths.iter().find(|p| p.route == e))
            .is_some_and(|p| p.alive(now, true));
        // Start on the first path that works; follow a roaming peer when the current
        // path has gone quiet (WireGuard's own endpoint rule, kept for dead paths only).
        if !current_alive && self.endpoint != Some(route) {
            self.set_endpoint(Some(route));
        }
    }

    /// The next Ping, remembered with the route it goes on (`None`: the endpoint).
    fn next_ping(&mut self, sent_ns: u64, route: Option<Route>) -> Probe {
        self.probe_seq = self.probe_seq.wrapping_add(1);
        if let Some(route) = route.or(self.endpoint) {
            if self.pending.len() == MAX_PENDING_PROBES {
                self.pending.pop_front();
            }
            self.pending.push_back((self.probe_seq, route));
        }
        Probe {
            kind: ProbeKind::Ping,
            seq: self.probe_seq,
            sent_ns,
        }
    }

    fn set_endpoint(&mut self, route: Option<Route>) {
        if self.endpoint != route {
            tracing::debug!(from = ?self.endpoint, to = ?route, "path change");
            self.endpoint = route;
            self.path_changes += 1;
            self.quality.path_changed();
        }
    }

    /// Moves traffic to the best working path: any direct path over a relayed one, a much
    /// faster path over a slower one of the same kind, and anything alive over a dead one.
    fn choose(&mut self, now: Instant) {
        let endpoint = self.endpoint;
        let best = self
            .paths
            .iter()
            .filter(|p| p.alive(now, Some(p.route) == endpoint))
            .min_by_key(|p| (p.relayed, p.rtt()))
            .map(|p| (p.route, p.relayed, p.rtt()));
        let current = self
            .endpoint
            .and_then(|e| self.paths.iter().find(|p| p.route == e))
            .map(|p| (p.alive(now, true), p.relayed, p.rtt()));
        let Some((route, relayed, rtt)) = best else {
            // Nothing answers: after a while, go back to trying every published address.
            if self
                .last_rx
                .is_none_or(|t| now.saturating_duration_since(t) > ENDPOINT_STALE)
            {
                self.set_endpoint(None);
            }
            return;
        };
        let switch = match current {
            None | Some((false, _, _)) => true,
            Some((true, cur_relayed, cur_rtt)) => {
                (cur_relayed && !relayed)
                    || (cur_relayed == relayed
                        && rtt.as_secs_f64() < cur_rtt.as_secs_f64() * SWITCH_RATIO
                        && cur_rtt.saturating_sub(rtt) >= SWITCH_MIN_GAIN)
            }
        };
        if switch {
            self.set_endpoint(Some(route));
        }
    }
}

impl Node {
    /// A node with this device's key; `seed` drives every non-cryptographic random choice.
    pub fn new(secret: StaticSecret, seed: u64, now: Instant) -> Self {
        let public = PublicKey::from(&secret);
        let mut rng = StdRng::seed_from_u64(seed);
        let index_table = IndexTable::from_rng(StdRng::seed_from_u64(rng.next_u64()));
        let lan = Lan::new(rng.next_u64());
        MockClock::set_time(Duration::ZERO);
        Self {
            mac1_only: Arc::new(RateLimiter::new(&public, u64::MAX)),
            cookie_required: Arc::new(RateLimiter::new(&public, 0)),
            guard: guard::Guard::new(now),
            secret,
            public,
            index_table,
            local_ip: None,
            broadcast: None,
            probing: true,
            peers: BTreeMap::new(),
            by_ip: HashMap::new(),
            by_index: HashMap::new(),
            transmits: VecDeque::new(),
            to_tun: VecDeque::new(),
            priority_transmits: VecDeque::new(),
            priority_tun: VecDeque::new(),
            priority_ports: crate::games::Ports::default(),
            sending_priority: false,
            epoch: now,
            now,
            next_tick: now,
            rng,
            mtu: MtuWatcher::new(1420),
            counters: Counters::default(),
            nat: None,
            keepalive: DEFAULT_KEEPALIVE,
            lan,
        }
    }

    /// This device's public key.
    pub fn public_key(&self) -> DeviceKey {
        DeviceKey::from_bytes(self.public.to_bytes())
    }

    /// Sets this device's virtual IP and the party prefix length; `None` when in no party.
    pub fn set_local(&mut self, local: Option<(Ipv4Addr, u8)>) {
        if local.map(|(ip, _)| ip) != self.local_ip {
            // Memberships were joined on the interface of the old address.
            self.lan.clear_joined();
        }
        self.local_ip = local.map(|(ip, _)| ip);
        self.broadcast = local.map(|(ip, prefix)| {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            Ipv4Addr::from(u32::from(ip) | host_bits)
        });
    }

    /// LAN emulation: its settings, trace and counters.
    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    /// LAN emulation, to change what is forwarded (applies to the next packet).
    pub fn lan_mut(&mut self) -> &mut Lan {
        &mut self.lan
    }

    /// Turns the per-peer latency probes on or off.
    pub fn set_probing(&mut self, on: bool) {
        self.probing = on;
    }

    /// Sets the TUN MTU that outgoing packets are padded up to (whitepaper §5.4.6).
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = MtuWatcher::new(mtu);
    }

    /// Sets the ports whose packets (TCP or UDP, either direction) are game traffic: queued
    /// ahead of everything else and flagged [`Transmit::priority`].
    pub fn set_priority_ports(&mut self, ports: crate::games::Ports) {
        self.priority_ports = ports;
    }

    pub fn priority_ports(&self) -> &crate::games::Ports {
        &self.priority_ports
    }

    /// Sets the keepalive: how often paths that never answered are probed once the first
    /// 20 s of punching are over (sized by the caller from the NAT's binding lifetime).
    /// The path in use and answering backups keep their own, faster pace: they measure
    /// latency and detect failure, which holds any binding open as a side effect.
    pub fn set_keepalive(&mut self, every: Duration) {
        self.keepalive = every;
    }

    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    /// Sets what this device's NAT probe found, for punching through a hard NAT.
    pub fn set_nat(&mut self, nat: Option<NatHint>) {
        if self.nat != nat {
            self.nat = nat;
            for peer in self.peers.values_mut() {
                peer.spray = Spray::default();
            }
        }
    }

    /// Sets what a peer reported about its NAT.
    pub fn set_peer_nat(&mut self, key: &DeviceKey, nat: Option<NatHint>) {
        if let Some(peer) = self.peers.get_mut(key)
            && peer.nat != nat
        {
            peer.nat = nat;
            peer.spray = Spray::default();
        }
    }

    /// Adds a peer, or updates its virtual IP and candidate addresses.
    pub fn upsert_peer(
        &mut self,
        key: DeviceKey,
        virtual_ip: Ipv4Addr,
        candidates: Vec<SocketAddr>,
        relayed: Vec<SocketAddr>,
        now: Instant,
    ) {
        self.sync_clock(now);
        if let Some(peer) = self.peers.get_mut(&key) {
            if peer.virtual_ip != virtual_ip {
                self.by_ip.remove(&peer.virtual_ip);
                peer.virtual_ip = virtual_ip;
            }
            let new_addresses = peer.candidates != candidates || peer.relayed != relayed;
            peer.candidates = candidates;
            peer.relayed = relayed;
            if new_addresses {
                peer.sync_paths(now);
            }
            if new_addresses && peer.endpoint.is_none() {
                // Earlier initiations went nowhere; try the new addresses now rather than
                // after the 5 s retransmit timer (whitepaper §6.4 REKEY_TIMEOUT).
                if let Some(init) = peer.tunn.format_handshake_initiation(true) {
                    self.queue_wg(key, init.into());
                }
            }
        } else {
            let tunn = Tunn::new_with_rng(
                self.secret.clone(),
                PublicKey::from(*key.as_bytes()),
                None,
                None,
                self.index_table.clone(),
                Arc::clone(&self.mac1_only),
                StdRng::seed_from_u64(self.rng.next_u64()),
            );
            let mut peer = Peer {
                virtual_ip,
                candidates,
                relayed,
                paths: Vec::new(),
                endpoint: None,
                path_changes: 0,
                tunn,
                added_at: now,
                last_rx: None,
                next_probe: now,
                last_init: None,
                probe_seq: 0,
                pending: VecDeque::new(),
                rtts: VecDeque::with_capacity(RTT_SAMPLES),
                rx_bytes: 0,
                tx_bytes: 0,
                rx_packets: 0,
                tx_packets: 0,
                handshakes: 0,
                quality: Quality::new(),
                nat: None,
                spray: Spray::default(),
            };
            peer.sync_paths(now);
            self.peers.insert(key, peer);
        }
        self.by_ip.insert(virtual_ip, key);
    }

    /// Removes a peer and forgets its sessions.
    pub fn remove_peer(&mut self, key: &DeviceKey) {
        if let Some(peer) = self.peers.remove(key) {
            self.by_ip.remove(&peer.virtual_ip);
            self.lan.forget(peer.virtual_ip);
            self.by_index.retain(|_, k| k != key);
        }
    }

    /// The peers currently configured.
    pub fn peer_keys(&self) -> impl Iterator<Item = &DeviceKey> {
        self.peers.keys()
    }

    /// Encrypts a packet read from the TUN towards the peer that owns its destination, or
    /// every peer for the party's broadcast and multicast (see [`crate::lan`]).
    pub fn handle_tun_packet(&mut self, packet: &[u8], now: Instant) {
        let Some((src, dst)) = packet::ipv4_addrs(packet) else {
            self.counters.dropped_no_route += 1;
            return;
        };
        if let Some(&key) = self.by_ip.get(&dst) {
            self.send_to_peer(key, packet, now);
            return;
        }
        // Only this device's own packets are carried: peers accept nothing else from us,
        // and a packet that came from a peer is never sent on again.
        if Some(src) == self.local_ip && self.capture_lan(packet, Via::Tun, now) {
            return;
        }
        self.counters.dropped_no_route += 1;
    }

    /// Carries a UDP broadcast or multicast packet this device sent out of its physical
    /// interface (caught there by the owner, when physical capture is on): rewritten to
    /// come from our virtual IP, and sent like one read from the TUN.
    pub fn handle_physical_packet(&mut self, packet: &[u8], now: Instant) {
        let (Some(local), Some(broadcast)) = (self.local_ip, self.broadcast) else {
            return;
        };
        if let Some(rewritten) = lan::from_physical(packet, local, broadcast) {
            self.capture_lan(&rewritten, Via::Physical, now);
        }
    }

    /// Sends a LAN packet to every member with a session; `false` if it is not one.
    fn capture_lan(&mut self, packet: &[u8], via: Via, now: Instant) -> bool {
        let members: Vec<Member> = self
            .peers
            .values()
            .map(|p| Member {
                ip: p.virtual_ip,
                connected: p.tunn.has_active_session(),
            })
            .collect();
        match self.lan.capture(packet, via, self.broadcast, &members, now) {
            Capture::NotLan => false,
            Capture::Forward(to) => {
                for ip in to {
                    if let Some(&key) = self.by_ip.get(&ip) {
                        self.send_to_peer(key, packet, now);
                    }
                }
                true
            }
            Capture::Memberships | Capture::Dropped(_) => true,
        }
    }

    /// Handles a WireGuard datagram that arrived by `from`.
    pub fn handle_datagram(&mut self, from: Route, datagram: &[u8], now: Instant) {
        self.sync_clock(now);
        self.roll_guard(now);
        let src = from.peer_addr();
        let admission = is_handshake(datagram).then(|| self.guard.admit(now));
        let limiter = match admission {
            Some(guard::Admission::RequireCookie) => &self.cookie_required,
            Some(guard::Admission::Normal) | None => &self.mac1_only,
        };
        let packet = Packet::from_bytes(BytesMut::from(datagram));
        let wg = match limiter.verify_packet(src, packet) {
            Ok(wg) => wg,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                // Under load and no valid cookie: answer with one instead of doing the DH
                // work (whitepaper §5.3); a real peer retries with it.
                self.counters.handshakes_cookied += 1;
                self.push_transmit(from, cookie);
                return;
            }
            Err(_) => {
                self.counters.dropped_invalid += 1;
                return;
            }
        };
        if let Some(admission) = admission {
            let with_cookie = admission == guard::Admission::RequireCookie;
            if let Err(why) = self.guard.allow(src.ip(), with_cookie, now) {
                tracing::trace!(?why, "handshake dropped unprocessed");
                self.counters.handshakes_dropped += 1;
                return;
            }
        }
        let Some(key) = self.identify(&wg) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let handshake = matches!(wg, WgKind::HandshakeInit(_) | WgKind::HandshakeResp(_));
        let result = peer.tunn.handle_incoming_packet(wg);
        if handshake && !matches!(result, TunnResult::Err(_)) {
            peer.handshakes += 1;
        }
        match result {
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::trace!(peer = %key, error = ?e, "wireguard packet rejected");
                self.counters.dropped_invalid += 1;
            }
            TunnResult::WriteToNetwork(reply) => {
                // Only authenticated handshake messages produce a reply: the sender is
                // the peer, and the reply goes back the way the message came.
                peer.heard(from, now, true);
                self.send_wg_via(key, reply, from);
                self.flush_queued(key);
            }
            TunnResult::WriteToTunnel(inner) => {
                peer.heard(from, now, false);
                let inner: &[u8] = inner.as_ref();
                peer.rx_bytes += inner.len() as u64;
                peer.rx_packets += 1;
                self.deliver(key, from, inner, now);
                self.flush_queued(key);
            }
        }
    }

    /// Services WireGuard's timers, sends due probes and picks each peer's path.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sync_clock(now);
        self.roll_guard(now);
        if now >= self.next_tick {
            self.next_tick = now + TIMER_TICK;
            let keys: Vec<DeviceKey> = self.peers.keys().copied().collect();
            for key in keys {
                let Some(peer) = self.peers.get_mut(&key) else {
                    continue;
                };
                peer.choose(now);
                peer.quality.tick(now);
                let unanswered_for =
                    now.saturating_duration_since(peer.last_rx.unwrap_or(peer.added_at));
                // Only a handshake already wanted (an initiation went out and nobody answered)
                // is retried early; an idle peer is left alone.
                let punch_due = peer.endpoint.is_none()
                    && !peer.candidates.is_empty()
                    && unanswered_for < PUNCH_WINDOW
                    && peer.last_init.is_some_and(|t| {
                        now.saturating_duration_since(t) >= PUNCH_INTERVAL
                            && peer.last_rx.is_none_or(|rx| rx < t)
                    });
                if punch_due && let Some(init) = peer.tunn.format_handshake_initiation(true) {
                    self.queue_wg(key, init.into());
                    continue;
                }
                match peer.tunn.update_timers() {
                    Ok(Some(packet)) => self.queue_wg(key, packet),
                    Ok(None) | Err(WireGuardError::ConnectionExpired) => {}
                    Err(e) => tracing::debug!(peer = %key, error = ?e, "wireguard timer error"),
                }
            }
            let table = &self.index_table;
            self.by_index.retain(|idx, _| table.in_use(*idx));
            self.spray(now);
        }
        let Some(local_ip) = self.local_ip.filter(|_| self.probing) else {
            return;
        };
        let keys: Vec<DeviceKey> = self.peers.keys().copied().collect();
        for key in keys {
            let sent_ns = self.nanos_since_epoch(now);
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if !peer.tunn.has_active_session() {
                // No session yet: one probe starts the handshake (and waits in its queue).
                if peer.next_probe <= now {
                    peer.next_probe = now + PROBE_INTERVAL;
                    let bytes = packet::build_probe(
                        local_ip,
                        peer.virtual_ip,
                        peer.next_ping(sent_ns, None),
                    );
                    self.send_to_peer(key, &bytes, now);
                }
                continue;
            }
            // One probe per due path, on that path: connectivity check, consent freshness
            // and RTT in one authenticated packet.
            let mut due = Vec::new();
            let endpoint = peer.endpoint;
            for path in &mut peer.paths {
                if path.next_probe > now {
                    continue;
                }
                let interval = if Some(path.route) == endpoint {
                    PROBE_INTERVAL
                } else if path.last_ok.is_some()
                    || now.saturating_duration_since(path.added) < PUNCH_WINDOW
                {
                    BACKUP_PROBE_INTERVAL
                } else {
                    self.keepalive
                };
                path.next_probe = now + interval;
                due.push(path.route);
            }
            // The consent probes above measure the path in use passively; a burst of
            // extra ones gives a clean median now and then (more often while degraded).
            if let Some(e) = endpoint
                && peer.quality.active_probe_due(now)
            {
                due.extend(std::iter::repeat_n(e, crate::quality::ACTIVE_BURST));
            }
            for route in due {
                let Some(peer) = self.peers.get_mut(&key) else {
                    break;
                };
                if Some(route) == peer.endpoint {
                    peer.quality.on_sent();
                }
                let bytes = packet::build_probe(
                    local_ip,
                    peer.virtual_ip,
                    peer.next_ping(sent_ns, Some(route)),
                );
                self.send_via(key, &bytes, route, now);
            }
        }
    }

    /// Runs the due steps of birthday punching (see [`Spray`]) for every peer that needs it.
    fn spray(&mut self, now: Instant) {
        let Some(local_ip) = self.local_ip else {
            return;
        };
        let keys: Vec<DeviceKey> = self.peers.keys().copied().collect();
        for key in keys {
            let own = self.nat;
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            let Some(role) = spray_role(own, peer.nat) else {
                continue;
            };
            let wanted = peer.tunn.has_active_session()
                && !peer.direct_alive(now)
                && now.saturating_duration_since(peer.added_at) >= SPRAY_AFTER;
            let spray = &mut peer.spray;
            if !wanted {
                spray.step = None; // a round in progress stops once direct works
                continue;
            }
            let step = match spray.step {
                Some(step) => step,
                None if spray.rounds < SPRAY_ROUNDS && spray.next.is_none_or(|t| now >= t) => {
                    tracing::info!(peer = %key, ?role, round = spray.rounds + 1, "birthday punching");
                    spray.rounds += 1;
                    0
                }
                None => continue,
            };
            // A round is two seconds of ticks. The hard side's sockets send at its start,
            // middle and end; the easy side guesses during the second half-second and the
            // next, after the hard side's mappings exist (a guess that arrives before the
            // mapping could, on a NAT that tracks it, keep that port from being chosen).
            let ticks = (SPRAY_GUESSES / SPRAY_GUESSES_PER_TICK) as u8;
            let last = 2 * ticks;
            spray.step = if step >= last {
                spray.next = Some(now + SPRAY_ROUND_INTERVAL);
                None
            } else {
                Some(step + 1)
            };
            let routes: Vec<Route> = match role {
                SprayRole::Hard(to) if step % ticks == 0 => (0..SPRAY_SOCKETS)
                    .map(|index| Route::Socket { index, peer: to })
                    .collect(),
                SprayRole::Hard(_) => Vec::new(),
                SprayRole::Easy(_) if step < ticks || step >= last => Vec::new(),
                SprayRole::Easy(ip) => (0..SPRAY_GUESSES_PER_TICK)
                    .map(|_| {
                        let span = u32::from(u16::MAX - SPRAY_PORT_MIN) + 1;
                        let port = SPRAY_PORT_MIN + (self.rng.next_u32() % span) as u16;
                        Route::Direct(SocketAddr::new(ip, port))
                    })
                    .collect(),
            };
            let sent_ns = self.nanos_since_epoch(now);
            for route in routes {
                let Some(peer) = self.peers.get_mut(&key) else {
                    break;
                };
                // Not remembered as pending: the receiver checks a hit with its own probes.
                peer.probe_seq = peer.probe_seq.wrapping_add(1);
                let probe = Probe {
                    kind: ProbeKind::Ping,
                    seq: peer.probe_seq,
                    sent_ns,
                };
                let bytes = packet::build_probe(local_ip, peer.virtual_ip, probe);
                self.send_via(key, &bytes, route, now);
            }
        }
    }

    /// The next instant [`Node::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Instant {
        let probes = self.local_ip.filter(|_| self.probing).and_then(|_| {
            self.peers
                .values()
                .filter_map(|p| {
                    if p.tunn.has_active_session() {
                        p.paths.iter().map(|path| path.next_probe).min()
                    } else {
                        Some(p.next_probe)
                    }
                })
                .min()
        });
        probes.map_or(self.next_tick, |p| p.min(self.next_tick))
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.priority_transmits
            .pop_front()
            .or_else(|| self.transmits.pop_front())
    }

    /// The next decrypted packet to write to the TUN.
    pub fn poll_tun(&mut self) -> Option<Vec<u8>> {
        self.priority_tun
            .pop_front()
            .or_else(|| self.to_tun.pop_front())
    }

    /// Drop counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether handshakes must carry a valid cookie now (see [`guard`]).
    pub fn under_load(&self, now: Instant) -> bool {
        self.guard.under_load(now)
    }

    /// Per-peer state, in key order.
    pub fn peer_stats(&self, now: Instant) -> Vec<PeerStats> {
        self.peers
            .iter()
            .map(|(key, p)| PeerStats {
                key: *key,
                virtual_ip: p.virtual_ip,
                endpoint: p.endpoint,
                path: path_of(p, now),
                relay: p.endpoint.and_then(|e| match e {
                    Route::Direct(a) => p.relayed.contains(&a).then_some(a),
                    Route::Relay { server, .. } => Some(server),
                    Route::Socket { .. } => None,
                }),
                path_changes: p.path_changes,
                srtt: median(&p.rtts),
                last_handshake: p.tunn.time_since_last_handshake(),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                rx_packets: p.rx_packets,
                tx_packets: p.tx_packets,
                handshakes: p.handshakes,
                quality: p.quality.report(),
            })
            .collect()
    }

    /// Whether the session to `key` is established (for tests and diagnostics).
    pub fn has_session(&self, key: &DeviceKey) -> bool {
        self.peers
            .get(key)
            .is_some_and(|p| p.tunn.has_active_session())
    }

    /// Points gotatun's thread-local clock at the injected time (see the module docs) and
    /// remembers it for the helpers that stamp state.
    fn sync_clock(&mut self, now: Instant) {
        self.now = now;
        MockClock::set_time(now.saturating_duration_since(self.epoch));
    }

    /// Starts the flood defence's next one-second window when due, and clears gotatun's
    /// per-source-IP counts with it (they only grow otherwise; `Tunn::update_timers` also
    /// clears them, but only while a peer exists).
    fn roll_guard(&mut self, now: Instant) {
        if self.guard.roll(now) {
            self.mac1_only.try_reset_count();
            self.cookie_required.try_reset_count();
        }
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Encrypts `packet` for `key`; `None` when there is no session yet (the packet waits
    /// in the session's queue and a handshake starts) or no such peer.
    fn encrypt(&mut self, key: DeviceKey, packet: &[u8], now: Instant) -> Option<WgKind> {
        self.sync_clock(now);
        let peer = self.peers.get_mut(&key)?;
        let packet = Packet::from_bytes(BytesMut::from(packet));
        peer.tunn
            .handle_outgoing_packet(packet, Some(&mut self.mtu))
    }

    fn send_to_peer(&mut self, key: DeviceKey, packet: &[u8], now: Instant) {
        self.sending_priority = crate::games::is_priority(packet, &self.priority_ports);
        if let Some(wg) = self.encrypt(key, packet, now) {
            self.queue_wg(key, wg);
        }
        self.sending_priority = false;
    }

    /// Encrypts `packet` for `key` and sends it on `route` rather than the peer's endpoint.
    fn send_via(&mut self, key: DeviceKey, packet: &[u8], route: Route, now: Instant) {
        if let Some(wg) = self.encrypt(key, packet, now) {
            self.send_wg_via(key, wg, route);
        }
    }

    /// Sends a WireGuard message on `route`; a handshake initiation (the session needed
    /// one) goes everywhere as usual.
    fn send_wg_via(&mut self, key: DeviceKey, wg: WgKind, route: Route) {
        if matches!(wg, WgKind::HandshakeInit(_)) {
            self.queue_wg(key, wg);
            return;
        }
        if let WgKind::HandshakeResp(p) = &wg {
            self.by_index.insert(p.sender_idx.get(), key);
        }
        let bytes: Packet = wg.into();
        let payload = AsRef::<[u8]>::as_ref(&bytes).to_vec();
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.tx_bytes += payload.len() as u64;
            peer.tx_packets += 1;
        }
        self.push(Transmit {
            dst: route,
            payload,
            priority: false,
        });
    }

    /// Finds the peer a WireGuard message belongs to: by the static key inside a handshake
    /// initiation, or by our session index for everything else.
    fn identify(&mut self, wg: &WgKind) -> Option<DeviceKey> {
        let key = match wg {
            WgKind::HandshakeInit(p) => match parse_handshake_anon(&self.secret, &self.public, p) {
                Ok(half) => Some(DeviceKey::from_bytes(half.peer_static_public)),
                Err(_) => {
                    self.counters.dropped_invalid += 1;
                    return None;
                }
            },
            WgKind::HandshakeResp(p) => self.by_index.get(&p.receiver_idx.get()).copied(),
            WgKind::CookieReply(p) => self.by_index.get(&p.receiver_idx.get()).copied(),
            WgKind::Data(p) => self.by_index.get(&p.header.receiver_idx.get()).copied(),
        };
        match key {
            Some(k) if self.peers.contains_key(&k) => Some(k),
            _ => {
                self.counters.dropped_unknown_peer += 1;
                None
            }
        }
    }

    fn deliver(&mut self, key: DeviceKey, from: Route, inner: &[u8], now: Instant) {
        if inner.is_empty() {
            return; // keepalive
        }
        let now_ns = self.nanos_since_epoch(now);
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(inner) = packet::ipv4_unpadded(inner) else {
            // Only IPv4 is routed in the party network; anything else is not ours to pass on.
            self.counters.dropped_invalid += 1;
            return;
        };
        let Some((src, dst)) = packet::ipv4_addrs(inner) else {
            self.counters.dropped_invalid += 1;
            return;
        };
        if src != peer.virtual_ip {
            self.counters.dropped_spoofed += 1;
            tracing::trace!(peer = %key, "dropped packet with a foreign inner source");
            return;
        }
        let for_us = Some(dst) == self.local_ip
            || Some(dst) == self.broadcast
            || dst.is_broadcast()
            || dst.is_multicast();
        if !for_us {
            self.counters.dropped_wrong_destination += 1;
            return;
        }
        if Some(dst) != self.local_ip {
            // A peer's broadcast or multicast: into the TUN (never on to other peers).
            if self.lan.receive(inner, self.broadcast, now).is_ok() {
                self.push_tun(inner);
            }
            return;
        }
        let Some(probe) = packet::parse_probe(inner) else {
            self.push_tun(inner);
            return;
        };
        match probe.kind {
            ProbeKind::Ping => {
                let Some(local_ip) = self.local_ip else {
                    return;
                };
                let pong = Probe {
                    kind: ProbeKind::Pong,
                    ..probe
                };
                let bytes = packet::build_probe(local_ip, peer.virtual_ip, pong);
                // The answer goes back the way the probe came: it checks that path.
                self.send_via(key, &bytes, from, now);
            }
            ProbeKind::Pong => {
                let rtt = Duration::from_nanos(now_ns.saturating_sub(probe.sent_ns));
                let Some(pos) = peer.pending.iter().position(|(seq, _)| *seq == probe.seq) else {
                    return;
                };
                let Some((_, route)) = peer.pending.remove(pos) else {
                    return;
                };
                if let Some(path) = peer.paths.iter_mut().find(|p| p.route == route) {
                    path.last_ok = Some(now);
                    push_sample(&mut path.rtts, rtt);
                }
                if peer.endpoint.is_none_or(|e| e == route) {
                    push_sample(&mut peer.rtts, rtt);
                }
                if peer.endpoint == Some(route) {
                    peer.quality.on_rtt(rtt);
                }
                peer.choose(now);
            }
        }
    }

    fn flush_queued(&mut self, key: DeviceKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let queued: Vec<WgKind> = peer.tunn.get_queued_packets(&mut self.mtu).collect();
        for wg in queued {
            self.queue_wg(key, wg);
        }
    }

    /// Queues a WireGuard message to the peer's endpoint, or to every candidate address while
    /// no endpoint has answered yet.
    fn queue_wg(&mut self, key: DeviceKey, wg: WgKind) {
        let sender_idx = match &wg {
            WgKind::HandshakeInit(p) => Some(p.sender_idx.get()),
            WgKind::HandshakeResp(p) => Some(p.sender_idx.get()),
            _ => None,
        };
        if let Some(idx) = sender_idx {
            self.by_index.insert(idx, key);
        }
        let now = self.now;
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if matches!(wg, WgKind::HandshakeInit(_)) {
            peer.last_init = Some(now);
        }
        let bytes: Packet = wg.into();
        let payload = AsRef::<[u8]>::as_ref(&bytes).to_vec();
        peer.tx_bytes += payload.len() as u64;
        peer.tx_packets += 1;
        match peer.endpoint {
            Some(dst) => {
                let priority = self.sending_priority;
                self.push(Transmit {
                    dst,
                    payload,
                    priority,
                });
            }
            None => {
                let routes: Vec<Route> = peer.paths.iter().map(|p| p.route).collect();
                for dst in routes {
                    self.push(Transmit {
                        dst,
                        payload: payload.clone(),
                        priority: false,
                    });
                }
            }
        }
    }

    fn push_transmit(&mut self, dst: Route, wg: WgKind) {
        let bytes: Packet = wg.into();
        self.push(Transmit {
            dst,
            payload: AsRef::<[u8]>::as_ref(&bytes).to_vec(),
            priority: false,
        });
    }

    fn push(&mut self, t: Transmit) {
        if t.priority {
            self.priority_transmits.push_back(t);
        } else {
            self.transmits.push_back(t);
        }
    }

    /// Queues a decrypted packet for the TUN, game traffic first.
    fn push_tun(&mut self, packet: &[u8]) {
        if crate::games::is_priority(packet, &self.priority_ports) {
            self.priority_tun.push_back(packet.to_vec());
        } else {
            self.to_tun.push_back(packet.to_vec());
        }
    }
}

/// Whether a datagram is a handshake initiation or response (whitepaper §5.4.2–3: type 1,
/// 148 bytes; type 2, 92 bytes), the messages that cost a Diffie-Hellman.
fn is_handshake(datagram: &[u8]) -> bool {
    matches!(
        (datagram.len(), datagram.get(..4)),
        (148, Some([1, 0, 0, 0])) | (92, Some([2, 0, 0, 0]))
    )
}

fn push_sample(samples: &mut VecDeque<Duration>, rtt: Duration) {
    if samples.len() == RTT_SAMPLES {
        samples.pop_front();
    }
    samples.push_back(rtt);
}

fn median(samples: &VecDeque<Duration>) -> Option<Duration> {
    let mut sorted: Vec<Duration> = samples.iter().copied().collect();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

fn path_of(p: &Peer, now: Instant) -> PathKind {
    let relayed = p.endpoint.is_some_and(|e| {
        p.paths
            .iter()
            .find(|path| path.route == e)
            .is_some_and(|path| path.relayed)
    });
    let working = if relayed {
        PathKind::Relay
    } else {
        PathKind::Direct
    };
    match p.last_rx {
        Some(t) if now.saturating_duration_since(t) <= ALIVE_WINDOW => working,
        Some(_) => PathKind::Unreachable,
        None if now.saturating_duration_since(p.added_at) > CONNECT_GRACE => PathKind::Unreachable,
        None => PathKind::Connecting,
    }
}

#[cfg(test)]
mod tests;
