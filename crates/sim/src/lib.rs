//! A deterministic simulation of two LANrage players behind RFC 4787 NATs, on a virtual
//! clock: the NAT matrix of the end-to-end tests, in milliseconds of real time and for
//! any number of seeds.
//!
//! Everything protocol-shaped is the real code, driven sans-IO: each player runs
//! `lanrage_core`'s WireGuard [`Node`] (paths, probes, birthday punching), its STUN
//! [`NatProbe`] and its TURN [`TurnClient`]; the public server answers STUN with
//! `lanrage_relay::answer` and relays with `lanrage_relay::turn::Server`. What is modelled
//! is only the network: NATs ([`nat::Nat`]), a LAN behind each, fixed one-way delays, and
//! the control plane, whose signalling (candidates and NAT hints) is delivered at once.
//! The glue between node, probe and TURN client mirrors the daemon's data plane.

pub mod nat;
pub mod party;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use gotatun::x25519::StaticSecret;
use lanrage_core::stun::{NatProbe, NatReport};
use lanrage_core::turn::{TurnClient, rest_credentials};
use lanrage_core::wg::SPRAY_SOCKETS;
use lanrage_core::{Node, PacketClass, Route, classify};
use lanrage_proto::DeviceKey;
use lanrage_proto::api::NatHint;
use lanrage_proto::local::PathKind;
use lanrage_relay::turn::{Config, Server};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub use nat::{Nat, NatModel};

const S1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const S2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const WG_PORT: u16 = 51820;
/// Punching socket `i` is bound to this port plus `i`.
const SPARE_BASE: u16 = 40_000;
const LAN_DELAY: Duration = Duration::from_millis(1);
const SECRET: &[u8] = b"sim-turn-secret";
/// The virtual wall clock at the start, for TURN credential expiry.
const UNIX_START: u64 = 1_900_000_000;
/// Events processed at most per run: every run ends even if something loops.
const MAX_STEPS: usize = 5_000_000;

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub a: NatModel,
    /// `None`: player B sits behind A's NAT, on the same LAN.
    pub b: Option<NatModel>,
    pub seed: u64,
    /// One way, between a NAT and the internet core.
    pub wan_delay: Duration,
    pub duration: Duration,
    /// Whether players publish their NAT hint (without it, no birthday punching).
    pub hints: bool,
}

/// How a run ended, seen from player B towards A (and A's path for the other side).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub path_a: PathKind,
    pub path_b: PathKind,
    /// From the start until B has a WireGuard session with A.
    pub session_after: Option<Duration>,
    /// From the start until B's traffic to A takes a direct path.
    pub direct_after: Option<Duration>,
    /// What each player's NAT probe classified.
    pub nat_a: Option<NatReport>,
    pub nat_b: Option<NatReport>,
    /// Datagrams sent from punching sockets.
    pub spray_packets: u64,
}

struct Player {
    ip: Ipv4Addr,
    nat: usize,
    key: DeviceKey,
    virtual_ip: Ipv4Addr,
    node: Node,
    probe: Option<NatProbe>,
    report: Option<NatReport>,
    turn: TurnClient,
    published: Option<(Vec<SocketAddr>, Vec<SocketAddr>, Option<NatHint>)>,
}

impl Player {
    /// Player `i` (key `[i + 1; 32]`, virtual IP 10.66.0.`i + 1`) at `ip` behind NAT `nat`,
    /// probing its NAT and allocating on the simulated relay at `listen[0]`.
    fn new(
        i: u8,
        ip: Ipv4Addr,
        nat: usize,
        listen: &[SocketAddr],
        rng: &mut StdRng,
        t0: Instant,
    ) -> Self {
        let secret = StaticSecret::from([i + 1; 32]);
        let mut node = Node::new(secret, rng.next_u64(), t0);
        let virtual_ip = Ipv4Addr::new(10, 66, 0, i + 1);
        node.set_local(Some((virtual_ip, 16)));
        let creds = rest_credentials(SECRET, &format!("p{i}"), UNIX_START + 43_200);
        let stun = [listen[0], listen[1], listen[2]];
        Player {
            ip,
            nat,
            key: node.public_key(),
            virtual_ip,
            node,
            probe: Some(NatProbe::new(&stun, WG_PORT, rng.next_u64(), t0)),
            report: None,
            turn: TurnClient::new(listen[0], creds, rng.next_u64(), t0),
            published: None,
        }
    }

    fn main_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), WG_PORT)
    }

    fn poll_timeout(&self) -> Instant {
        let mut t = self.node.poll_timeout();
        if let Some(p) = self.probe.as_ref().and_then(NatProbe::poll_timeout) {
            t = t.min(p);
        }
        if let Some(p) = self.turn.poll_timeout() {
            t = t.min(p);
        }
        t
    }

    /// What this player publishes through the control plane: host, server-reflexive and
    /// relayed candidates, and its NAT hint.
    fn candidates(&self, hints: bool) -> (Vec<SocketAddr>, Vec<SocketAddr>, Option<NatHint>) {
        let mut c = vec![self.main_addr()];
        // As the daemon does: the address the last full probe found, else the first
        // answer of the probe under way.
        let public = self.report.as_ref().and_then(|r| r.public_addr);
        if let Some(public) = public.or_else(|| self.probe.as_ref().and_then(NatProbe::public_addr))
        {
            c.push(public);
        }
        let relayed: Vec<SocketAddr> = self.turn.relayed().into_iter().collect();
        c.extend(&relayed);
        let hint = self
            .report
            .as_ref()
            .and_then(NatReport::hint)
            .filter(|_| hints);
        (c, relayed, hint)
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    /// A datagram reaches a NAT's public side.
    Nat(usize),
    /// A datagram reaches a player's socket.
    Host(usize),
    Server,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: Instant,
    seq: u64,
    stop: Stop,
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

struct World {
    now: Instant,
    t0: Instant,
    wan: Duration,
    nats: Vec<Nat>,
    players: Vec<Player>,
    server: Server,
    listen: Vec<SocketAddr>,
    relay_ports: Vec<SocketAddr>,
    next_server_tick: Instant,
    queue: BinaryHeap<Reverse<Event>>,
    seq: u64,
    rng: StdRng,
    spray_packets: u64,
    /// WireGuard cookie replies (type 3) that reached a player.
    cookie_replies: u64,
    hints: bool,
}

/// Runs one scenario to its end.
pub fn run(s: &Scenario) -> Outcome {
    let t0 = nat::epoch();
    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut nats = vec![Nat::new(
        s.a,
        Ipv4Addr::new(198, 51, 100, 2),
        rng.next_u64(),
    )];
    if let Some(b) = s.b {
        nats.push(Nat::new(b, Ipv4Addr::new(192, 0, 2, 2), rng.next_u64()));
    }
    let listen = listen_addrs();
    let players = (0..2u8)
        .map(|i| {
            let (ip, nat) = match (i, s.b) {
                (0, _) => (Ipv4Addr::new(192, 168, 1, 2), 0),
                (_, Some(_)) => (Ipv4Addr::new(192, 168, 2, 2), 1),
                (_, None) => (Ipv4Addr::new(192, 168, 1, 3), 0),
            };
            Player::new(i, ip, nat, &listen, &mut rng, t0)
        })
        .collect();
    let mut w = World::new(t0, s.wan_delay, nats, players, rng, s.hints);
    let (mut session_after, mut direct_after) = (None, None);
    let end = t0 + s.duration;
    for p in 0..2 {
        w.flush(p);
    }
    for _ in 0..MAX_STEPS {
        let next = w.next_wake(&[], end);
        if next > end {
            break;
        }
        w.now = w.now.max(next);
        w.step();
        let a = w.players[0].key;
        let now = w.now;
        let b = &w.players[1];
        if session_after.is_none() && b.node.has_session(&a) {
            session_after = Some(now - t0);
        }
        if direct_after.is_none()
            && b.node
                .peer_stats(now)
                .first()
                .is_some_and(|st| st.path == PathKind::Direct)
        {
            direct_after = Some(now - t0);
        }
    }
    let now = w.now;
    let path = |p: &Player| {
        p.node
            .peer_stats(now)
            .first()
            .map_or(PathKind::Unreachable, |s| s.path)
    };
    Outcome {
        path_a: path(&w.players[0]),
        path_b: path(&w.players[1]),
        session_after,
        direct_after,
        nat_a: w.players[0].report.clone(),
        nat_b: w.players[1].report.clone(),
        spray_packets: w.spray_packets,
    }
}

/// The public server's STUN/TURN listen addresses: two IPs, two ports each (RFC 5780).
fn listen_addrs() -> Vec<SocketAddr> {
    [(S1, 3478), (S2, 3478), (S1, 3479), (S2, 3479)]
        .into_iter()
        .map(|(ip, port)| SocketAddr::new(IpAddr::V4(ip), port))
        .collect()
}

impl World {
    /// A world of `players` behind `nats` and the public STUN/TURN server, at `t0`.
    fn new(
        t0: Instant,
        wan: Duration,
        nats: Vec<Nat>,
        players: Vec<Player>,
        rng: StdRng,
        hints: bool,
    ) -> Self {
        let relay_ports: Vec<SocketAddr> = (50_000..50_016)
            .map(|p| SocketAddr::new(IpAddr::V4(S1), p))
            .collect();
        let listen = listen_addrs();
        let server = Server::new(
            Config {
                secret: SECRET.to_vec(),
                ..Config::default()
            },
            &listen,
            &relay_ports,
            [7; 32],
        );
        Self {
            now: t0,
            t0,
            wan,
            nats,
            players,
            server,
            listen,
            relay_ports,
            next_server_tick: t0,
            queue: BinaryHeap::new(),
            seq: 0,
            rng,
            spray_packets: 0,
            cookie_replies: 0,
            hints,
        }
    }

    /// When something next happens: the earliest queued event, player timer, server tick
    /// or `extra` deadline of the caller's own (`end` if there is none).
    fn next_wake(&self, extra: &[Instant], end: Instant) -> Instant {
        let next_event = self.queue.peek().map(|Reverse(e)| e.at);
        let next_timer = self
            .players
            .iter()
            .map(Player::poll_timeout)
            .chain([self.next_server_tick])
            .chain(extra.iter().copied())
            .min()
            .unwrap_or(end);
        next_event.map_or(next_timer, |e| e.min(next_timer))
    }

    /// Handles every event and timer due now.
    fn step(&mut self) {
        let now = self.now;
        while self.queue.peek().is_some_and(|Reverse(e)| e.at <= now) {
            let Some(Reverse(e)) = self.queue.pop() else {
                break;
            };
            self.arrive(e);
        }
        for p in 0..self.players.len() {
            if self.players[p].poll_timeout() <= now {
                let pl = &mut self.players[p];
                pl.node.handle_timeout(now);
                if let Some(probe) = &mut pl.probe {
                    probe.handle_timeout(now);
                }
                pl.turn.handle_timeout(now);
                self.flush(p);
            }
        }
        if now >= self.next_server_tick {
            self.server.handle_timeout(now);
            self.next_server_tick = now + Duration::from_secs(1);
        }
    }

    fn schedule(
        &mut self,
        delay: Duration,
        stop: Stop,
        from: SocketAddr,
        to: SocketAddr,
        data: Vec<u8>,
    ) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at: self.now + delay,
            seq: self.seq,
            stop,
            from,
            to,
            data,
        }));
    }

    fn nat_of(&self, ip: IpAddr) -> Option<usize> {
        self.nats.iter().position(|n| IpAddr::V4(n.public_ip) == ip)
    }

    /// A player's socket `src` sends `data` to `dst`.
    fn send_from_player(&mut self, p: usize, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let nat = self.players[p].nat;
        if let Some(q) = self
            .players
            .iter()
            .position(|o| o.nat == nat && IpAddr::V4(o.ip) == dst.ip())
        {
            self.schedule(LAN_DELAY, Stop::Host(q), src, dst, data);
            return;
        }
        let public = self.nats[nat].outbound(src, dst, self.now);
        if dst.ip() == IpAddr::V4(S1) || dst.ip() == IpAddr::V4(S2) {
            self.schedule(self.wan, Stop::Server, public, dst, data);
        } else if let Some(n) = self.nat_of(dst.ip()).filter(|n| *n != nat) {
            self.schedule(2 * self.wan, Stop::Nat(n), public, dst, data);
        }
        // Anything else (private addresses of other LANs, our own NAT: no hairpin) is lost.
    }

    fn send_from_server(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        if let Some(n) = self.nat_of(dst.ip()) {
            self.schedule(self.wan, Stop::Nat(n), src, dst, data);
        }
    }

    fn arrive(&mut self, e: Event) {
        match e.stop {
            Stop::Nat(n) => {
                if let Some(inside) = self.nats[n].inbound(e.from, e.to.port(), self.now)
                    && let Some(q) = self
                        .players
                        .iter()
                        .position(|o| o.nat == n && IpAddr::V4(o.ip) == inside.ip())
                {
                    self.schedule(LAN_DELAY, Stop::Host(q), e.from, inside, e.data);
                }
            }
            Stop::Host(q) => self.at_player(q, e.from, e.to, &e.data),
            Stop::Server => self.at_server(e.from, e.to, &e.data),
        }
    }

    fn at_server(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let now = self.now;
        let unix = UNIX_START + (now - self.t0).as_secs();
        if self.listen.contains(&to) {
            if let Some(t) = lanrage_relay::answer(from, to, data, &self.listen) {
                self.send_from_server(t.from, t.to, t.payload);
                return;
            }
            if let Some(t) = self.server.handle_client(to, from, data, now, unix) {
                self.send_from_server(t.from, t.to, t.payload);
            }
        } else if self.relay_ports.contains(&to) {
            let mut txid = [0u8; 12];
            self.rng.fill_bytes(&mut txid);
            if let Some(t) = self.server.handle_peer(to, from, data, now, txid) {
                self.send_from_server(t.from, t.to, t.payload);
            }
        }
    }

    /// A datagram reached player `q`'s socket `to`: the daemon's demultiplexing.
    fn at_player(&mut self, q: usize, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let now = self.now;
        let class = classify(data);
        let pl = &mut self.players[q];
        if to.port() != WG_PORT {
            let index = to.port().wrapping_sub(SPARE_BASE);
            if index < SPRAY_SOCKETS && class == PacketClass::WireGuard {
                pl.node
                    .handle_datagram(Route::Socket { index, peer: from }, data, now);
            }
        } else if class == PacketClass::WireGuard {
            if data.first() == Some(&3) {
                self.cookie_replies += 1;
            }
            pl.node.handle_datagram(Route::Direct(from), data, now);
        } else if matches!(class, PacketClass::Stun | PacketClass::ChannelData) {
            if let Some(probe) = &mut pl.probe {
                probe.handle_response(from, data);
            }
            if from == pl.turn.server()
                && let Some((peer, payload)) = pl.turn.handle_datagram(data, now)
                && classify(&payload) == PacketClass::WireGuard
            {
                let server = pl.turn.server();
                pl.node
                    .handle_datagram(Route::Relay { server, peer }, &payload, now);
            }
        }
        self.flush(q);
    }

    /// Sends what player `p`'s machines want to send, and publishes its candidates when
    /// they changed.
    fn flush(&mut self, p: usize) {
        let now = self.now;
        let main = self.players[p].main_addr();
        if let Some(report) = self.players[p].probe.as_ref().and_then(NatProbe::report) {
            let pl = &mut self.players[p];
            pl.node.set_nat(report.hint());
            pl.report = Some(report);
            pl.probe = None;
        }
        while let Some((dst, bytes)) = self.players[p]
            .probe
            .as_mut()
            .and_then(NatProbe::poll_transmit)
        {
            self.send_from_player(p, main, dst, bytes);
        }
        while let Some(t) = self.players[p].node.poll_transmit() {
            match t.dst {
                Route::Direct(dst) => self.send_from_player(p, main, dst, t.payload),
                Route::Socket { index, peer } => {
                    self.spray_packets += 1;
                    let src = SocketAddr::new(main.ip(), SPARE_BASE + index);
                    self.send_from_player(p, src, peer, t.payload);
                }
                Route::Relay { server, peer } => {
                    let pl = &mut self.players[p];
                    if server == pl.turn.server()
                        && let Some(framed) = pl.turn.send(peer, &t.payload, now)
                    {
                        self.send_from_player(p, main, server, framed);
                    }
                }
            }
        }
        let server = self.players[p].turn.server();
        while let Some(bytes) = self.players[p].turn.poll_transmit() {
            self.send_from_player(p, main, server, bytes);
        }
        while self.players[p].node.poll_tun().is_some() {}
        self.publish(p);
    }

    /// The control plane: a changed candidate set reaches the other player at once.
    fn publish(&mut self, p: usize) {
        let mine = self.players[p].candidates(self.hints);
        if self.players[p].published.as_ref() == Some(&mine) {
            return;
        }
        self.players[p].published = Some(mine.clone());
        let (key, vip) = (self.players[p].key, self.players[p].virtual_ip);
        let (candidates, relayed, hint) = mine;
        let now = self.now;
        for q in (0..self.players.len()).filter(|q| *q != p) {
            let other = &mut self.players[q];
            let ips: Vec<IpAddr> = candidates
                .iter()
                .filter(|c| !relayed.contains(c))
                .map(SocketAddr::ip)
                .collect();
            other.turn.set_peers(ips, now);
            other
                .node
                .upsert_peer(key, vip, candidates.clone(), relayed.clone(), now);
            other.node.set_peer_nat(&key, hint);
            self.flush(q);
        }
    }
}

#[cfg(test)]
mod tests;
