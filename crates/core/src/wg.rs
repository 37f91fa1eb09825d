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
use lanrage_proto::local::PathKind;
use mock_instant::thread_local::MockClock;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::packet::{self, Probe, ProbeKind};

/// Handshake initiations per second before the node answers with cookies (whitepaper §5.3).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// How often WireGuard's own timers are serviced; they have one-second resolution.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// How often each peer is probed for latency; also keeps NAT bindings and the session warm.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A peer heard from within this window is on a working path.
const ALIVE_WINDOW: Duration = Duration::from_secs(5);
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

/// A datagram to send on the UDP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
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
}

/// One peer as the data plane sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStats {
    pub key: DeviceKey,
    pub virtual_ip: Ipv4Addr,
    pub endpoint: Option<SocketAddr>,
    pub path: PathKind,
    /// Median of the recent probe round trips.
    pub srtt: Option<Duration>,
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A WireGuard mesh: this device and a session to every other party member.
pub struct Node {
    secret: StaticSecret,
    public: PublicKey,
    index_table: IndexTable,
    rate_limiter: Arc<RateLimiter>,
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
    epoch: Instant,
    /// The latest injected time.
    now: Instant,
    next_tick: Instant,
    rng: StdRng,
    mtu: MtuWatcher,
    counters: Counters,
}

struct Peer {
    /// When the last handshake initiation went out (ours, forced or WireGuard's own).
    last_init: Option<Instant>,
    virtual_ip: Ipv4Addr,
    candidates: Vec<SocketAddr>,
    endpoint: Option<SocketAddr>,
    tunn: Tunn,
    added_at: Instant,
    last_rx: Option<Instant>,
    next_probe: Instant,
    probe_seq: u32,
    rtts: VecDeque<Duration>,
    rx_bytes: u64,
    tx_bytes: u64,
}

impl Node {
    /// A node with this device's key; `seed` drives every non-cryptographic random choice.
    pub fn new(secret: StaticSecret, seed: u64, now: Instant) -> Self {
        let public = PublicKey::from(&secret);
        let mut rng = StdRng::seed_from_u64(seed);
        let index_table = IndexTable::from_rng(StdRng::seed_from_u64(rng.next_u64()));
        MockClock::set_time(Duration::ZERO);
        Self {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
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
            epoch: now,
            now,
            next_tick: now,
            rng,
            mtu: MtuWatcher::new(1420),
            counters: Counters::default(),
        }
    }

    /// This device's public key.
    pub fn public_key(&self) -> DeviceKey {
        DeviceKey::from_bytes(self.public.to_bytes())
    }

    /// Sets this device's virtual IP and the party prefix length; `None` when in no party.
    pub fn set_local(&mut self, local: Option<(Ipv4Addr, u8)>) {
        self.local_ip = local.map(|(ip, _)| ip);
        self.broadcast = local.map(|(ip, prefix)| {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
            Ipv4Addr::from(u32::from(ip) | host_bits)
        });
    }

    /// Turns the per-peer latency probes on or off.
    pub fn set_probing(&mut self, on: bool) {
        self.probing = on;
    }

    /// Sets the TUN MTU that outgoing packets are padded up to (whitepaper §5.4.6).
    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = MtuWatcher::new(mtu);
    }

    /// Adds a peer, or updates its virtual IP and candidate addresses.
    pub fn upsert_peer(
        &mut self,
        key: DeviceKey,
        virtual_ip: Ipv4Addr,
        candidates: Vec<SocketAddr>,
        now: Instant,
    ) {
        self.sync_clock(now);
        if let Some(peer) = self.peers.get_mut(&key) {
            if peer.virtual_ip != virtual_ip {
                self.by_ip.remove(&peer.virtual_ip);
                peer.virtual_ip = virtual_ip;
            }
            let new_addresses = peer.candidates != candidates;
            peer.candidates = candidates;
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
                Arc::clone(&self.rate_limiter),
                StdRng::seed_from_u64(self.rng.next_u64()),
            );
            self.peers.insert(
                key,
                Peer {
                    virtual_ip,
                    candidates,
                    endpoint: None,
                    tunn,
                    added_at: now,
                    last_rx: None,
                    next_probe: now,
                    last_init: None,
                    probe_seq: 0,
                    rtts: VecDeque::with_capacity(RTT_SAMPLES),
                    rx_bytes: 0,
                    tx_bytes: 0,
                },
            );
        }
        self.by_ip.insert(virtual_ip, key);
    }

    /// Removes a peer and forgets its sessions.
    pub fn remove_peer(&mut self, key: &DeviceKey) {
        if let Some(peer) = self.peers.remove(key) {
            self.by_ip.remove(&peer.virtual_ip);
            self.by_index.retain(|_, k| k != key);
        }
    }

    /// The peers currently configured.
    pub fn peer_keys(&self) -> impl Iterator<Item = &DeviceKey> {
        self.peers.keys()
    }

    /// Encrypts a packet read from the TUN towards the peer that owns its destination.
    pub fn handle_tun_packet(&mut self, packet: &[u8], now: Instant) {
        let Some((_, dst)) = packet::ipv4_addrs(packet) else {
            self.counters.dropped_no_route += 1;
            return;
        };
        let Some(&key) = self.by_ip.get(&dst) else {
            self.counters.dropped_no_route += 1;
            return;
        };
        self.send_to_peer(key, packet, now);
    }

    /// Handles a WireGuard datagram received from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        self.sync_clock(now);
        let packet = Packet::from_bytes(BytesMut::from(datagram));
        let wg = match self.rate_limiter.verify_packet(from, packet) {
            Ok(wg) => wg,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                // Under load: answer with a cookie instead of doing the DH work.
                self.push_transmit(from, cookie);
                return;
            }
            Err(_) => {
                self.counters.dropped_invalid += 1;
                return;
            }
        };
        let Some(key) = self.identify(&wg) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        match peer.tunn.handle_incoming_packet(wg) {
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::trace!(peer = %key, error = ?e, "wireguard packet rejected");
                self.counters.dropped_invalid += 1;
            }
            TunnResult::WriteToNetwork(reply) => {
                // Only authenticated handshake messages produce a reply: the sender is
                // the peer, so `from` is where it can be reached now.
                peer.endpoint = Some(from);
                peer.last_rx = Some(now);
                self.queue_wg(key, reply);
                self.flush_queued(key);
            }
            TunnResult::WriteToTunnel(inner) => {
                peer.endpoint = Some(from);
                peer.last_rx = Some(now);
                let inner: &[u8] = inner.as_ref();
                peer.rx_bytes += inner.len() as u64;
                self.deliver(key, inner, now);
                self.flush_queued(key);
            }
        }
    }

    /// Services WireGuard's timers and sends due probes.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sync_clock(now);
        if now >= self.next_tick {
            self.next_tick = now + TIMER_TICK;
            let keys: Vec<DeviceKey> = self.peers.keys().copied().collect();
            for key in keys {
                let Some(peer) = self.peers.get_mut(&key) else {
                    continue;
                };
                if peer.endpoint.is_some()
                    && peer
                        .last_rx
                        .is_none_or(|t| now.saturating_duration_since(t) > ENDPOINT_STALE)
                {
                    // The learned address went quiet: try every published one again.
                    peer.endpoint = None;
                }
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
        }
        let Some(local_ip) = self.local_ip.filter(|_| self.probing) else {
            return;
        };
        let due: Vec<DeviceKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next_probe <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let sent_ns = self.nanos_since_epoch(now);
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            peer.next_probe = now + PROBE_INTERVAL;
            peer.probe_seq = peer.probe_seq.wrapping_add(1);
            let probe = Probe {
                kind: ProbeKind::Ping,
                seq: peer.probe_seq,
                sent_ns,
            };
            let bytes = packet::build_probe(local_ip, peer.virtual_ip, probe);
            self.send_to_peer(key, &bytes, now);
        }
    }

    /// The next instant [`Node::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Instant {
        let probes = self
            .local_ip
            .filter(|_| self.probing)
            .and_then(|_| self.peers.values().map(|p| p.next_probe).min());
        probes.map_or(self.next_tick, |p| p.min(self.next_tick))
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next decrypted packet to write to the TUN.
    pub fn poll_tun(&mut self) -> Option<Vec<u8>> {
        self.to_tun.pop_front()
    }

    /// Drop counters.
    pub fn counters(&self) -> Counters {
        self.counters
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
                srtt: median(&p.rtts),
                last_handshake: p.tunn.time_since_last_handshake(),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
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

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn send_to_peer(&mut self, key: DeviceKey, packet: &[u8], now: Instant) {
        self.sync_clock(now);
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let packet = Packet::from_bytes(BytesMut::from(packet));
        if let Some(wg) = peer
            .tunn
            .handle_outgoing_packet(packet, Some(&mut self.mtu))
        {
            self.queue_wg(key, wg);
        }
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

    fn deliver(&mut self, key: DeviceKey, inner: &[u8], now: Instant) {
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
        let Some(probe) = packet::parse_probe(inner) else {
            self.to_tun.push_back(inner.to_vec());
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
                self.send_to_peer(key, &bytes, now);
            }
            ProbeKind::Pong => {
                let rtt_ns = now_ns.saturating_sub(probe.sent_ns);
                if peer.rtts.len() == RTT_SAMPLES {
                    peer.rtts.pop_front();
                }
                peer.rtts.push_back(Duration::from_nanos(rtt_ns));
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
        match peer.endpoint {
            Some(dst) => self.transmits.push_back(Transmit { dst, payload }),
            None => {
                for &dst in &peer.candidates {
                    self.transmits.push_back(Transmit {
                        dst,
                        payload: payload.clone(),
                    });
                }
            }
        }
    }

    fn push_transmit(&mut self, dst: SocketAddr, wg: WgKind) {
        let bytes: Packet = wg.into();
        self.transmits.push_back(Transmit {
            dst,
            payload: AsRef::<[u8]>::as_ref(&bytes).to_vec(),
        });
    }
}

fn median(samples: &VecDeque<Duration>) -> Option<Duration> {
    let mut sorted: Vec<Duration> = samples.iter().copied().collect();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

fn path_of(p: &Peer, now: Instant) -> PathKind {
    match p.last_rx {
        Some(t) if now.saturating_duration_since(t) <= ALIVE_WINDOW => PathKind::Direct,
        Some(_) => PathKind::Unreachable,
        None if now.saturating_duration_since(p.added_at) > CONNECT_GRACE => PathKind::Unreachable,
        None => PathKind::Connecting,
    }
}

#[cfg(test)]
mod tests;
