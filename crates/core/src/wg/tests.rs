//! Pair tests: two nodes joined by a simulated link on a virtual clock.

use super::*;

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 66, 0, 2);

/// Two nodes, a link with a fixed one-way delay, and a virtual clock.
struct Pair {
    a: Node,
    b: Node,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    now: Instant,
    delay: Duration,
    in_flight: Vec<(Instant, SocketAddr, Transmit)>,
    /// Every datagram that crossed the link, with its time (for assertions).
    wire: Vec<(Instant, SocketAddr, Vec<u8>)>,
    /// Where each of those datagrams was sent.
    routes: Vec<(Instant, SocketAddr, Route)>,
    a_tun: Vec<Vec<u8>>,
    b_tun: Vec<Vec<u8>>,
    /// Datagrams towards A are dropped until this instant (an address-filtering NAT in
    /// front of A that has not seen A send to B yet).
    a_filtered_until: Option<Instant>,
}

impl Pair {
    fn new(delay: Duration) -> Self {
        let now = Instant::now_for_tests();
        let a = Node::new(StaticSecret::from([1u8; 32]), 1, now);
        let b = Node::new(StaticSecret::from([2u8; 32]), 2, now);
        let a_addr: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let b_addr: SocketAddr = "192.0.2.2:51820".parse().expect("addr");
        let mut pair = Self {
            a,
            b,
            a_addr,
            b_addr,
            now,
            delay,
            in_flight: Vec::new(),
            wire: Vec::new(),
            routes: Vec::new(),
            a_tun: Vec::new(),
            b_tun: Vec::new(),
            a_filtered_until: None,
        };
        pair.a.set_local(Some((A_IP, 16)));
        pair.b.set_local(Some((B_IP, 16)));
        pair.a.set_probing(false);
        pair.b.set_probing(false);
        let (ka, kb) = (pair.a.public_key(), pair.b.public_key());
        pair.a.upsert_peer(kb, B_IP, vec![b_addr], vec![], now);
        pair.b.upsert_peer(ka, A_IP, vec![a_addr], vec![], now);
        pair
    }

    fn with_probes(mut self) -> Self {
        self.a.set_probing(true);
        self.b.set_probing(true);
        self
    }

    /// Runs the link and both nodes until the virtual clock reaches `now + span`.
    fn drive(&mut self, span: Duration) {
        let until = self.now + span;
        for _ in 0..1_000_000 {
            self.collect();
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .chain(self.in_flight.iter().map(|(t, _, _)| *t))
                .min()
                .expect("never empty");
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|(t, _, _)| *t <= now);
            self.in_flight = later;
            for (_, from, t) in due {
                if t.dst == Route::Direct(self.a_addr)
                    && self.a_filtered_until.is_some_and(|u| now < u)
                {
                    continue;
                }
                if t.dst == Route::Direct(self.a_addr) {
                    self.a.handle_datagram(Route::Direct(from), &t.payload, now);
                } else if t.dst == Route::Direct(self.b_addr) {
                    self.b.handle_datagram(Route::Direct(from), &t.payload, now);
                }
            }
            if self.a.poll_timeout() <= now {
                self.a.handle_timeout(now);
            }
            if self.b.poll_timeout() <= now {
                self.b.handle_timeout(now);
            }
        }
        panic!("drive did not converge");
    }

    fn collect(&mut self) {
        let at = self.now + self.delay;
        while let Some(t) = self.a.poll_transmit() {
            self.wire.push((self.now, self.a_addr, t.payload.clone()));
            self.routes.push((self.now, self.a_addr, t.dst));
            self.in_flight.push((at, self.a_addr, t));
        }
        while let Some(t) = self.b.poll_transmit() {
            self.wire.push((self.now, self.b_addr, t.payload.clone()));
            self.routes.push((self.now, self.b_addr, t.dst));
            self.in_flight.push((at, self.b_addr, t));
        }
        while let Some(p) = self.a.poll_tun() {
            self.a_tun.push(p);
        }
        while let Some(p) = self.b.poll_tun() {
            self.b_tun.push(p);
        }
    }

    fn a_sends(&mut self, payload: &[u8]) {
        let packet = udp_packet(A_IP, B_IP, payload);
        self.a.handle_tun_packet(&packet, self.now);
    }

    fn initiations_from(&self, addr: SocketAddr) -> usize {
        self.wire
            .iter()
            .filter(|(_, from, p)| *from == addr && p.first() == Some(&1))
            .count()
    }
}

/// `Instant::now` is banned in this crate; tests need one real instant as the virtual epoch.
trait NowForTests {
    fn now_for_tests() -> Instant;
}
impl NowForTests for Instant {
    #[allow(clippy::disallowed_methods)]
    fn now_for_tests() -> Instant {
        Instant::now()
    }
}

/// A minimal IPv4/UDP packet from `src` to `dst` on port 7777.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = packet::build_probe(
        src,
        dst,
        Probe {
            kind: ProbeKind::Ping,
            seq: 0,
            sent_ns: 0,
        },
    );
    p.truncate(28);
    p[20..22].copy_from_slice(&7777u16.to_be_bytes());
    p[22..24].copy_from_slice(&7777u16.to_be_bytes());
    p.extend_from_slice(payload);
    let total = u16::try_from(p.len()).expect("small");
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[24..26].copy_from_slice(&(total - 20).to_be_bytes());
    p
}

#[test]
fn handshake_then_data_reaches_the_peer_tun() {
    let mut pair = Pair::new(Duration::from_millis(5));
    pair.a_sends(b"hello lobby");
    pair.drive(Duration::from_secs(1));
    assert!(pair.a.has_session(&pair.b.public_key()));
    assert!(pair.b.has_session(&pair.a.public_key()));
    assert_eq!(
        pair.b_tun.len(),
        1,
        "the queued packet is sent after the handshake"
    );
    assert!(pair.b_tun[0].ends_with(b"hello lobby"));
    assert_eq!(pair.initiations_from(pair.a_addr), 1);
    // B learned A's endpoint from the authenticated handshake.
    let stats = pair.b.peer_stats(pair.now);
    assert_eq!(stats[0].endpoint, Some(Route::Direct(pair.a_addr)));
    assert_eq!(stats[0].path, PathKind::Direct);
}

#[test]
fn inner_source_must_be_the_peers_virtual_ip() {
    let mut pair = Pair::new(Duration::from_millis(1));
    pair.a_sends(b"legit");
    pair.drive(Duration::from_millis(100));
    let spoofed = udp_packet(Ipv4Addr::new(10, 66, 0, 99), B_IP, b"spoofed");
    pair.a.handle_tun_packet(&spoofed, pair.now);
    pair.drive(Duration::from_millis(100));
    assert_eq!(pair.b_tun.len(), 1);
    assert_eq!(pair.b.counters().dropped_spoofed, 1);
}

#[test]
fn packets_for_other_destinations_are_dropped() {
    let mut pair = Pair::new(Duration::from_millis(1));
    pair.a_sends(b"legit");
    pair.drive(Duration::from_millis(100));
    // A tries to use B as a router into B's other networks.
    for dst in [Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(10, 66, 0, 3)] {
        let p = udp_packet(A_IP, dst, b"sneaky");
        let kb = pair.b.public_key();
        pair.a.send_to_peer(kb, &p, pair.now);
    }
    // Party broadcast, limited broadcast and multicast are LAN traffic and pass.
    for dst in [
        Ipv4Addr::new(10, 66, 255, 255),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 251),
    ] {
        let p = udp_packet(A_IP, dst, b"lobby");
        let kb = pair.b.public_key();
        pair.a.send_to_peer(kb, &p, pair.now);
    }
    pair.drive(Duration::from_millis(100));
    assert_eq!(pair.b.counters().dropped_wrong_destination, 2);
    assert_eq!(pair.b_tun.len(), 4);
}

#[test]
fn probes_measure_round_trip_time() {
    let mut pair = Pair::new(Duration::from_millis(10)).with_probes();
    pair.drive(Duration::from_secs(30));
    let stats = pair.a.peer_stats(pair.now);
    let srtt = stats[0].srtt.expect("probes answered");
    // One-way delay 10 ms each way: the tunnel RTT is 20 ms on the virtual clock. The first
    // probe also waited for the handshake; the smoothed value has converged after 30 samples.
    assert!(
        (20.0..20.5).contains(&(srtt.as_secs_f64() * 1e3)),
        "srtt {srtt:?}"
    );
    assert_eq!(stats[0].path, PathKind::Direct);
    assert!(
        pair.a_tun.is_empty() && pair.b_tun.is_empty(),
        "probes never reach the TUN"
    );
}

#[test]
fn session_rekeys_after_two_minutes_of_traffic() {
    let mut pair = Pair::new(Duration::from_millis(5));
    for _ in 0..140 {
        pair.a_sends(b"tick");
        pair.drive(Duration::from_secs(1));
    }
    // WireGuard rekeys a session older than REKEY_AFTER_TIME (120 s) on the next send.
    assert_eq!(pair.initiations_from(pair.a_addr), 2);
    let second = pair
        .wire
        .iter()
        .filter(|(_, from, p)| *from == pair.a_addr && p.first() == Some(&1))
        .nth(1)
        .map(|(t, _, _)| *t)
        .expect("two initiations");
    let age = second - pair.wire[0].0;
    assert!(
        (Duration::from_secs(120)..Duration::from_secs(123)).contains(&age),
        "rekey at {age:?}"
    );
    assert_eq!(pair.b_tun.len(), 140, "no packet lost across the rekey");
}

#[test]
fn idle_session_expires_and_a_new_one_is_made_on_demand() {
    let mut pair = Pair::new(Duration::from_millis(5));
    pair.a_sends(b"first");
    pair.drive(Duration::from_secs(1));
    assert!(pair.a.has_session(&pair.b.public_key()));
    // Idle: no probes, no data. After REJECT_AFTER_TIME × 3 (540 s) every key is erased.
    pair.drive(Duration::from_secs(600));
    assert!(!pair.a.has_session(&pair.b.public_key()));
    assert!(!pair.b.has_session(&pair.a.public_key()));
    pair.a_sends(b"again");
    pair.drive(Duration::from_secs(1));
    assert!(pair.a.has_session(&pair.b.public_key()));
    assert_eq!(pair.b_tun.len(), 2);
    assert_eq!(pair.initiations_from(pair.a_addr), 2);
}

#[test]
fn removed_peer_is_no_longer_accepted() {
    let mut pair = Pair::new(Duration::from_millis(1));
    pair.a_sends(b"one");
    pair.drive(Duration::from_millis(100));
    let ka = pair.a.public_key();
    pair.b.remove_peer(&ka);
    pair.a_sends(b"two");
    pair.drive(Duration::from_millis(100));
    assert_eq!(pair.b_tun.len(), 1);
    assert!(pair.b.counters().dropped_unknown_peer >= 1);
    assert_eq!(pair.b.peer_keys().count(), 0);
}

#[test]
fn garbage_datagrams_are_counted_not_fatal() {
    let mut pair = Pair::new(Duration::from_millis(1));
    let now = pair.now;
    let mut junk = vec![4u8, 0, 0, 0];
    junk.extend_from_slice(&[0xAA; 60]);
    pair.b
        .handle_datagram(Route::Direct(pair.a_addr), &junk, now);
    let mut init = vec![1u8, 0, 0, 0];
    init.extend_from_slice(&[0x55; 144]);
    pair.b
        .handle_datagram(Route::Direct(pair.a_addr), &init, now);
    pair.b.handle_datagram(Route::Direct(pair.a_addr), &[], now);
    let c = pair.b.counters();
    assert!(c.dropped_invalid + c.dropped_unknown_peer >= 2, "{c:?}");
    assert!(pair.b_tun.is_empty());
}

#[test]
fn new_candidate_addresses_are_tried_at_once() {
    let mut pair = Pair::new(Duration::from_millis(1));
    let kb = pair.b.public_key();
    let now = pair.now;
    // A knows B but not yet where it is: its first initiation goes nowhere.
    pair.a.upsert_peer(kb, B_IP, vec![], vec![], now);
    pair.a_sends(b"waiting");
    pair.drive(Duration::from_millis(500));
    assert!(!pair.a.has_session(&kb));
    let b_addr = pair.b_addr;
    let now = pair.now;
    pair.a.upsert_peer(kb, B_IP, vec![b_addr], vec![], now);
    pair.drive(Duration::from_millis(100));
    assert!(
        pair.a.has_session(&kb),
        "connected well before the 5 s retransmit"
    );
    assert_eq!(pair.b_tun.len(), 1, "the queued packet followed");
}

#[test]
fn a_filtered_first_initiation_is_retried_within_a_second() {
    let mut pair = Pair::new(Duration::from_millis(5)).with_probes();
    // A's side drops everything for the first 300 ms, as an address-dependent NAT does
    // before its host has sent to the peer.
    pair.a_filtered_until = Some(pair.now + Duration::from_millis(300));
    let ka = pair.a.public_key();
    pair.drive(Duration::from_millis(1_500));
    assert!(
        pair.b.has_session(&ka),
        "connected after the filter lifted, without waiting for the 5 s retransmit"
    );
}

#[test]
fn unanswered_peer_becomes_unreachable() {
    let mut pair = Pair::new(Duration::from_millis(1)).with_probes();
    pair.b_addr = "192.0.2.99:1".parse().expect("addr"); // B's datagrams go nowhere
    pair.a_addr = "192.0.2.98:1".parse().expect("addr");
    pair.drive(Duration::from_secs(2));
    assert_eq!(pair.a.peer_stats(pair.now)[0].path, PathKind::Connecting);
    pair.drive(Duration::from_secs(20));
    assert_eq!(pair.a.peer_stats(pair.now)[0].path, PathKind::Unreachable);
}

#[test]
fn random_wireguard_shaped_datagrams_never_panic() {
    let mut pair = Pair::new(Duration::from_millis(1));
    pair.a_sends(b"establish");
    pair.drive(Duration::from_millis(50));
    let mut rng = StdRng::seed_from_u64(7);
    let now = pair.now;
    let sizes = [148usize, 92, 64, 32, 33, 100, 1500];
    for i in 0..20_000u32 {
        let kind = u8::try_from(i % 4).expect("small") + 1;
        let len = sizes[usize::try_from(rng.next_u32()).unwrap_or(0) % sizes.len()];
        let mut d = vec![0u8; len];
        rng.fill_bytes(&mut d);
        d[0] = kind;
        d[1..4].copy_from_slice(&[0, 0, 0]);
        pair.b.handle_datagram(Route::Direct(pair.a_addr), &d, now);
    }
    let c = pair.b.counters();
    assert!(c.dropped_invalid + c.dropped_unknown_peer > 0);
    assert_eq!(pair.b_tun.len(), 1, "nothing forged reached the TUN");
    // The real session still works afterwards.
    pair.collect();
    pair.a_sends(b"still here");
    pair.drive(Duration::from_millis(50));
    assert_eq!(pair.b_tun.len(), 2);
}

fn hint(hard: bool, addr: &str) -> Option<NatHint> {
    Some(NatHint {
        hard,
        public_addr: addr.parse().expect("addr"),
    })
}

/// A pair whose only path counts as relayed (each side's candidate is marked as its TURN
/// relayed address), with the given NATs: A's and B's.
fn relayed_pair(a_nat: Option<NatHint>, b_nat: Option<NatHint>) -> Pair {
    let mut pair = Pair::new(Duration::from_millis(10)).with_probes();
    let (ka, kb) = (pair.a.public_key(), pair.b.public_key());
    let (a_addr, b_addr, now) = (pair.a_addr, pair.b_addr, pair.now);
    pair.a
        .upsert_peer(kb, B_IP, vec![b_addr], vec![b_addr], now);
    pair.b
        .upsert_peer(ka, A_IP, vec![a_addr], vec![a_addr], now);
    pair.a.set_nat(a_nat);
    pair.b.set_nat(b_nat);
    pair.a.set_peer_nat(&kb, b_nat);
    pair.b.set_peer_nat(&ka, a_nat);
    pair
}

/// Datagrams `from` sent on punching sockets, and to addresses other than the pair's.
fn spray_counts(pair: &Pair, from: SocketAddr) -> (usize, usize) {
    let sockets = pair
        .routes
        .iter()
        .filter(|(_, f, r)| *f == from && matches!(r, Route::Socket { .. }))
        .count();
    let guesses = pair
        .routes
        .iter()
        .filter(|(_, f, r)| {
            *f == from && matches!(r, Route::Direct(d) if *d != pair.a_addr && *d != pair.b_addr)
        })
        .count();
    (sockets, guesses)
}

#[test]
fn birthday_punching_between_hard_and_easy_is_bounded() {
    let mut pair = relayed_pair(
        hint(true, "198.51.100.2:40000"),
        hint(false, "192.0.2.9:50000"),
    );
    let start = pair.now;
    pair.drive(Duration::from_secs(60));
    // The hard side: 256 sockets, three times a round, three rounds, all to B's public
    // address; nothing guessed.
    let (sockets, guesses) = spray_counts(&pair, pair.a_addr);
    assert_eq!((sockets, guesses), (3 * 3 * 256, 0));
    for (t, _, r) in pair.routes.iter().filter(|(_, f, _)| *f == pair.a_addr) {
        if let Route::Socket { index, peer } = r {
            assert!(*index < SPRAY_SOCKETS);
            assert_eq!(peer.to_string(), "192.0.2.9:50000");
            assert!(
                *t - start >= SPRAY_AFTER,
                "sprayed before the candidates had a go"
            );
        }
    }
    // The easy side: 1024 guesses a round at A's public IP, from its one socket.
    let (sockets, guesses) = spray_counts(&pair, pair.b_addr);
    assert_eq!((sockets, guesses), (0, 3 * 1024));
    let mut ports = std::collections::HashSet::new();
    for (_, _, r) in pair.routes.iter().filter(|(_, f, _)| *f == pair.b_addr) {
        if let Route::Direct(d) = r
            && *d != pair.a_addr
        {
            assert_eq!(d.ip().to_string(), "198.51.100.2");
            assert!(d.port() >= SPRAY_PORT_MIN);
            ports.insert(d.port());
        }
    }
    assert!(
        ports.len() > 2_900,
        "guesses should spread: {}",
        ports.len()
    );
    // The guesses of a round come after the hard side's first burst.
    let first_socket = pair
        .routes
        .iter()
        .find(|(_, _, r)| matches!(r, Route::Socket { .. }))
        .map(|(t, _, _)| *t)
        .expect("sprayed");
    let first_guess = pair
        .routes
        .iter()
        .find(|(_, f, r)| *f == pair.b_addr && matches!(r, Route::Direct(d) if *d != pair.a_addr))
        .map(|(t, _, _)| *t)
        .expect("guessed");
    assert!(first_guess >= first_socket + Duration::from_millis(900));
    // Bounded: no more rounds later.
    let before = pair.routes.len();
    pair.drive(Duration::from_secs(60));
    let later = spray_counts(&pair, pair.a_addr).0 + spray_counts(&pair, pair.b_addr).1;
    assert_eq!(
        later,
        3 * 3 * 256 + 3 * 1024,
        "{} new routes",
        pair.routes.len() - before
    );
}

#[test]
fn no_birthday_punching_without_a_hard_and_an_easy_nat_or_with_a_direct_path() {
    let cases = [
        (hint(true, "198.51.100.2:1"), hint(true, "192.0.2.9:2")),
        (hint(false, "198.51.100.2:1"), hint(false, "192.0.2.9:2")),
        // Behind the same NAT: host candidates meet inside it.
        (hint(true, "198.51.100.2:1"), hint(false, "198.51.100.2:2")),
        (None, hint(true, "192.0.2.9:2")),
    ];
    for (a, b) in cases {
        let mut pair = relayed_pair(a, b);
        pair.drive(Duration::from_secs(30));
        assert_eq!(spray_counts(&pair, pair.a_addr), (0, 0), "{a:?} {b:?}");
        assert_eq!(spray_counts(&pair, pair.b_addr), (0, 0), "{a:?} {b:?}");
    }
    // Hard against easy, but the pair is already direct.
    let mut pair = Pair::new(Duration::from_millis(10)).with_probes();
    let (a, b) = (hint(true, "198.51.100.2:1"), hint(false, "192.0.2.9:2"));
    let (ka, kb) = (pair.a.public_key(), pair.b.public_key());
    pair.a.set_nat(a);
    pair.b.set_nat(b);
    pair.a.set_peer_nat(&kb, b);
    pair.b.set_peer_nat(&ka, a);
    pair.drive(Duration::from_secs(30));
    assert!(pair.a.has_session(&kb));
    assert_eq!(spray_counts(&pair, pair.a_addr), (0, 0));
    assert_eq!(spray_counts(&pair, pair.b_addr), (0, 0));
}

#[test]
fn a_broadcast_reaches_the_peer_once_and_is_never_sent_back() {
    let mut pair = Pair::new(Duration::from_millis(2));
    // Before any session: nobody is connected, so the announcement goes nowhere.
    let early = udp_packet(A_IP, Ipv4Addr::new(10, 66, 255, 255), b"too early");
    pair.a.handle_tun_packet(&early, pair.now);
    assert_eq!(
        pair.a.lan().trace().last().map(|e| e.skipped.clone()),
        Some(vec![(B_IP, lan::Drop::NotConnected)])
    );
    pair.a_sends(b"handshake first");
    pair.drive(Duration::from_millis(200));
    pair.b_tun.clear();
    let wire_before = pair.wire.len();
    let lobby = udp_packet(A_IP, Ipv4Addr::new(10, 66, 255, 255), b"lobby");
    pair.a.handle_tun_packet(&lobby, pair.now);
    pair.drive(Duration::from_millis(50));
    assert_eq!(pair.b_tun, vec![lobby.clone()], "delivered once, unchanged");
    assert_eq!(pair.wire.len(), wire_before + 1, "one copy on the wire");
    // B's kernel (or a reflector) hands the packet back to B's TUN reader: it is A's, so
    // B does not carry it anywhere.
    let wire_before = pair.wire.len();
    pair.b.handle_tun_packet(&lobby, pair.now);
    pair.drive(Duration::from_millis(50));
    assert_eq!(pair.wire.len(), wire_before);
    assert!(pair.a_tun.is_empty());
    let (a, b) = (pair.a.lan().counters(), pair.b.lan().counters());
    assert_eq!((a.forwarded, a.copies), (1, 1));
    assert_eq!((b.received, b.injected, b.captured), (1, 1, 0));
    // A port nobody forwards stays home.
    let mut other = lobby.clone();
    other[22..24].copy_from_slice(&9u16.to_be_bytes());
    pair.a.handle_tun_packet(&other, pair.now);
    pair.drive(Duration::from_millis(50));
    assert_eq!(pair.b_tun.len(), 1);
    assert_eq!(pair.a.lan().counters().not_forwarded, 1);
}

#[test]
fn game_packets_overtake_bulk_both_ways_and_are_flagged_for_dscp() {
    let mut pair = Pair::new(Duration::from_millis(2));
    pair.a_sends(b"handshake first");
    pair.drive(Duration::from_millis(200));
    pair.b_tun.clear();
    let ports = crate::games::Ports::new([lanrage_proto::games::PortRange::one(27960)]);
    pair.a.set_priority_ports(ports.clone());
    pair.b.set_priority_ports(ports);
    let on_port = |p: &[u8], port: u16| {
        let mut p = p.to_vec();
        p[22..24].copy_from_slice(&port.to_be_bytes());
        p
    };
    // 50 bulk packets queued, then one game packet: it leaves first, flagged.
    for i in 0..50u8 {
        pair.a
            .handle_tun_packet(&udp_packet(A_IP, B_IP, &[i; 64]), pair.now);
    }
    let game = on_port(&udp_packet(A_IP, B_IP, b"game"), 27960);
    pair.a.handle_tun_packet(&game, pair.now);
    let first = pair.a.poll_transmit().expect("queued");
    assert!(
        first.priority,
        "the game packet is sent before the bulk ahead of it"
    );
    let rest: Vec<Transmit> = std::iter::from_fn(|| pair.a.poll_transmit()).collect();
    assert_eq!(rest.len(), 50);
    assert!(rest.iter().all(|t| !t.priority));
    // On B, the game packet is written to the TUN before the bulk decrypted with it.
    for t in rest {
        pair.b
            .handle_datagram(Route::Direct(pair.a_addr), &t.payload, pair.now);
    }
    pair.b
        .handle_datagram(Route::Direct(pair.a_addr), &first.payload, pair.now);
    assert_eq!(pair.b.poll_tun().as_deref(), Some(game.as_slice()));
    assert_eq!(std::iter::from_fn(|| pair.b.poll_tun()).count(), 50);
    // Without priority ports nothing is flagged.
    pair.a.set_priority_ports(crate::games::Ports::default());
    pair.a.handle_tun_packet(&game, pair.now);
    assert!(!pair.a.poll_transmit().expect("queued").priority);
}

// Handshake floods (issue 17, point 4; see `guard`).

/// A stranger's WireGuard engine aimed at `node`: its initiations carry a valid MAC1 (the
/// cheap check passes) but a key that is no party member, so each one that gets through
/// costs the node a Diffie-Hellman and then counts as `dropped_unknown_peer`.
struct Forger {
    tunn: Tunn,
    src: SocketAddr,
}

impl Forger {
    fn new(node: &Node, src: SocketAddr, seed: u64) -> Self {
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        seed_bytes[8] = 0xF0; // never one of the pair's keys ([1; 32], [2; 32])
        let secret = StaticSecret::from(seed_bytes);
        let public = PublicKey::from(&secret);
        let tunn = Tunn::new_with_rng(
            secret,
            PublicKey::from(*node.public_key().as_bytes()),
            None,
            None,
            IndexTable::from_rng(StdRng::seed_from_u64(seed)),
            Arc::new(RateLimiter::new(&public, u64::MAX)),
            StdRng::seed_from_u64(seed),
        );
        Self { tunn, src }
    }

    /// A fresh initiation (with the MAC2 of a cookie, once one was taken).
    fn init(&mut self) -> Vec<u8> {
        let init = self
            .tunn
            .format_handshake_initiation(true)
            .expect("an initiation is always made when forced");
        let bytes: Packet = WgKind::HandshakeInit(init).into();
        AsRef::<[u8]>::as_ref(&bytes).to_vec()
    }

    /// Hands a cookie reply the node sent to this forger's address to its engine.
    fn take_cookie(&mut self, reply: &[u8]) {
        let wg = Packet::from_bytes(BytesMut::from(reply))
            .try_into_wg()
            .expect("a WireGuard message");
        assert!(matches!(wg, WgKind::CookieReply(_)), "not a cookie reply");
        let r = self.tunn.handle_incoming_packet(wg);
        assert!(matches!(r, TunnResult::Done), "cookie refused: {r:?}");
    }
}

fn forged_src(i: u32) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(0xC633_0000 | i).into(), 40_000) // 198.51.0.0/16
}

/// `n` forged initiations (valid MAC1, unknown keys), each from its own source address.
fn forgers(node: &Node, n: u32) -> Vec<Forger> {
    (0..n)
        .map(|i| Forger::new(node, forged_src(i), u64::from(i) + 1000))
        .collect()
}

/// Cookie replies `node` sent since the last call, by destination.
fn cookie_replies(node: &mut Node) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(t) = node.poll_transmit() {
        if t.payload.first() == Some(&3) {
            out.push((t.dst.peer_addr(), t.payload));
        }
    }
    out
}

#[test]
fn past_a_hundred_handshakes_a_second_from_anywhere_the_node_demands_cookies_for_a_second() {
    let mut pair = Pair::new(Duration::from_millis(1));
    let t0 = pair.now;
    let mut f = forgers(&pair.b, 150);
    // 100 initiations from 100 addresses in one second: each is processed (a DH each).
    for (i, forger) in f.iter_mut().take(100).enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 9);
        let init = forger.init();
        pair.b
            .handle_datagram(Route::Direct(forger.src), &init, now);
    }
    let c = pair.b.counters();
    assert_eq!(c.dropped_unknown_peer, 100, "{c:?}");
    assert_eq!(c.handshakes_cookied, 0, "{c:?}");
    assert!(!pair.b.under_load(t0 + Duration::from_millis(900)));
    // The 101st in that second, from a new address: cookie reply, no DH. No single
    // address sent more than one: a per-address limit never would have tripped.
    let now = t0 + Duration::from_millis(950);
    let init = f[100].init();
    pair.b
        .handle_datagram(Route::Direct(f[100].src), &init, now);
    let c = pair.b.counters();
    assert_eq!(
        (c.dropped_unknown_peer, c.handshakes_cookied),
        (100, 1),
        "{c:?}"
    );
    assert!(pair.b.under_load(now));
    let replies = cookie_replies(&mut pair.b);
    assert_eq!(replies.len(), 1);
    assert_eq!(
        replies[0].0, f[100].src,
        "the cookie goes to the sender's address"
    );
    // Still under load just under a second later, even in a quiet new window…
    let now = t0 + Duration::from_millis(1_900);
    let init = f[101].init();
    pair.b
        .handle_datagram(Route::Direct(f[101].src), &init, now);
    assert_eq!(pair.b.counters().handshakes_cookied, 2);
    // …and no longer a second after the last window that went past the threshold.
    let now = t0 + Duration::from_millis(1_951);
    assert!(!pair.b.under_load(now));
    let init = f[102].init();
    pair.b
        .handle_datagram(Route::Direct(f[102].src), &init, now);
    let c = pair.b.counters();
    assert_eq!(
        (c.dropped_unknown_peer, c.handshakes_cookied),
        (101, 2),
        "{c:?}"
    );
}

#[test]
fn one_address_rekeying_for_hours_never_accumulates_into_cookies() {
    // Eight friends behind one public IP, each rekeying every two minutes with this node,
    // for ten hours: 2 400 handshakes from one address, far past gotatun's 100. Nothing
    // else runs (no `handle_timeout`, so not even gotatun's own timers reset its counts).
    let mut pair = Pair::new(Duration::from_millis(1));
    let t0 = pair.now;
    let mut friends: Vec<Forger> = (0..8)
        .map(|i| {
            let src = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 2).into(), 40_000 + i);
            Forger::new(&pair.b, src, u64::from(i) + 1)
        })
        .collect();
    let mut sent = 0;
    for round in 0..300u64 {
        for (i, f) in friends.iter_mut().enumerate() {
            let now = t0 + Duration::from_secs(round * 120) + Duration::from_millis(i as u64 * 15);
            let init = f.init();
            pair.b.handle_datagram(Route::Direct(f.src), &init, now);
            sent += 1;
        }
    }
    let c = pair.b.counters();
    assert_eq!(sent, 2_400);
    assert_eq!(c.handshakes_cookied, 0, "{c:?}");
    assert_eq!(c.handshakes_dropped, 0, "{c:?}");
    assert_eq!(
        c.dropped_unknown_peer, 2_400,
        "every one was processed: {c:?}"
    );
}

#[test]
fn under_load_one_address_with_a_cookie_gets_twenty_a_second_after_a_burst_of_five() {
    let mut pair = Pair::new(Duration::from_millis(1));
    let t0 = pair.now;
    // 101 junk handshake-shaped datagrams (bad MAC1) put the node under load: they are
    // counted, refused by one hash each, and cost no DH.
    let junk = {
        let mut d = vec![0x55u8; 148];
        d[..4].copy_from_slice(&[1, 0, 0, 0]);
        d
    };
    for i in 0..101 {
        pair.b
            .handle_datagram(Route::Direct(forged_src(5_000 + i)), &junk, t0);
    }
    assert!(pair.b.under_load(t0));
    assert_eq!(pair.b.counters().dropped_invalid, 101);
    let mut f = Forger::new(&pair.b, forged_src(1), 1);
    let init = f.init();
    pair.b.handle_datagram(Route::Direct(f.src), &init, t0);
    let replies = cookie_replies(&mut pair.b);
    assert_eq!(replies.len(), 1);
    f.take_cookie(&replies[0].1);
    // With the cookie: a burst of five, then one per 50 ms.
    for _ in 0..10 {
        let init = f.init();
        pair.b.handle_datagram(Route::Direct(f.src), &init, t0);
    }
    let c = pair.b.counters();
    assert_eq!(
        (c.dropped_unknown_peer, c.handshakes_dropped),
        (5, 5),
        "{c:?}"
    );
    assert_eq!(c.handshakes_cookied, 1, "the cookie was accepted: {c:?}");
    let now = t0 + Duration::from_millis(50);
    for _ in 0..2 {
        let init = f.init();
        pair.b.handle_datagram(Route::Direct(f.src), &init, now);
    }
    let c = pair.b.counters();
    assert_eq!(
        (c.dropped_unknown_peer, c.handshakes_dropped),
        (6, 6),
        "{c:?}"
    );
    // The same cookie from another port of the address is not valid (it covers IP and
    // port): a cookie reply again.
    let other = SocketAddr::new(f.src.ip(), 40_001);
    let init = f.init();
    pair.b.handle_datagram(Route::Direct(other), &init, now);
    assert_eq!(pair.b.counters().handshakes_cookied, 2);
}

#[test]
fn at_most_two_hundred_handshakes_a_second_reach_the_diffie_hellman() {
    let mut pair = Pair::new(Duration::from_millis(1));
    let t0 = pair.now;
    // 300 addresses that each obtained a cookie (they receive at their addresses), all
    // sending within one second: the per-address buckets let each through, the DH budget
    // does not.
    let mut f = forgers(&pair.b, 300);
    for forger in &mut f {
        let init = forger.init();
        pair.b.handle_datagram(Route::Direct(forger.src), &init, t0);
    }
    let c = pair.b.counters();
    assert_eq!(
        (c.dropped_unknown_peer, c.handshakes_cookied),
        (100, 200),
        "{c:?}"
    );
    for (to, reply) in cookie_replies(&mut pair.b) {
        let forger = f.iter_mut().find(|x| x.src == to).expect("a forger");
        forger.take_cookie(&reply);
    }
    let now = t0 + Duration::from_millis(10);
    for forger in &mut f {
        let init = forger.init();
        pair.b
            .handle_datagram(Route::Direct(forger.src), &init, now);
    }
    // This window: 100 processed before the load began, then 100 more of those with a
    // cookie; the other 100 with a cookie and the 100 without are not processed.
    let c = pair.b.counters();
    assert_eq!(c.dropped_unknown_peer, 200, "{c:?}");
    assert_eq!(c.handshakes_dropped, 100, "{c:?}");
    assert_eq!(c.handshakes_cookied, 300, "{c:?}");
    // The next second has a fresh budget.
    let now = t0 + Duration::from_millis(1_005);
    for forger in f.iter_mut().skip(200) {
        let init = forger.init();
        pair.b
            .handle_datagram(Route::Direct(forger.src), &init, now);
    }
    assert_eq!(pair.b.counters().dropped_unknown_peer, 300);
}

#[test]
fn a_real_peer_connects_while_forged_initiations_flood_in_from_many_addresses() {
    let mut pair = Pair::new(Duration::from_millis(5));
    let ka = pair.a.public_key();
    // 150 sources, 14 000 initiations a second (the flood the issue measured), for 10 s of
    // virtual time; A starts talking to B a second into it.
    let pool: Vec<(SocketAddr, Vec<u8>)> = forgers(&pair.b, 150)
        .into_iter()
        .flat_map(|mut f| {
            let src = f.src;
            [(src, f.init()), (src, f.init())]
        })
        .collect();
    let t0 = pair.now;
    let mut next = 0usize;
    let mut connected_at = None;
    let mut dropped_before = None;
    for ms in 0..10_000u64 {
        if ms == 1_000 {
            dropped_before = Some(pair.b.counters().dropped_unknown_peer);
            pair.a_sends(b"hello under fire");
        }
        let now = t0 + Duration::from_millis(ms);
        for _ in 0..14 {
            let (src, init) = &pool[next % pool.len()];
            next += 1;
            pair.b.handle_datagram(Route::Direct(*src), init, now);
        }
        // Cookie replies to the spoofed addresses go nowhere.
        while let Some(t) = pair.b.poll_transmit() {
            if t.dst == Route::Direct(pair.a_addr) {
                pair.in_flight.push((now + pair.delay, pair.b_addr, t));
            }
        }
        pair.drive(Duration::from_millis(1));
        if connected_at.is_none() && pair.b.has_session(&ka) {
            connected_at = Some(ms);
        }
    }
    let c = pair.b.counters();
    // Only the first 100 of the flood ever reached the DH; the rest got cookies.
    assert_eq!(dropped_before, Some(100), "{c:?}");
    assert_eq!(c.dropped_unknown_peer, 100, "{c:?}");
    assert!(c.handshakes_cookied > 130_000, "{c:?}");
    // A was answered with a cookie, retried with it within its 1 s punching interval, and
    // got through; its packet followed.
    let at = connected_at.expect("A never got a session with B during the flood");
    assert!(at <= 2_500, "connected only at {at} ms");
    assert!(pair.b_tun.iter().any(|p| p.ends_with(b"hello under fire")));
}
