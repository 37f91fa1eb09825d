//! The TURN server against LANrage's TURN client, both sans-IO, on a virtual clock.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use lanrage_core::turn::{self, AllocationState, Credentials, TurnClient};
use stun_codec::rfc5389::attributes::UnknownAttributes;
use stun_codec::rfc5766::attributes::XorRelayAddress;

use super::*;

const UNIX: u64 = 1_800_000_000;
const SECRET: &[u8] = b"relay-secret";

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn listen() -> SocketAddr {
    a("203.0.113.10:3478")
}

fn relays() -> Vec<SocketAddr> {
    (50_000..50_004)
        .map(|p| SocketAddr::new(listen().ip(), p))
        .collect()
}

fn server(config: Config) -> Server {
    Server::new(
        Config {
            secret: SECRET.to_vec(),
            ..config
        },
        &[listen()],
        &relays(),
        [3; 32],
    )
}

fn creds(user: &str) -> Credentials {
    turn::rest_credentials(SECRET, user, UNIX + 3600)
}

struct Pair {
    client: TurnClient,
    addr: SocketAddr,
    now: Instant,
}

impl Pair {
    fn new(addr: &str, creds: Credentials) -> Self {
        let now = Instant::now();
        Self {
            client: TurnClient::new(listen(), creds, 1, now),
            addr: a(addr),
            now,
        }
    }

    /// Delivers everything the client has queued to the server and the answers back.
    fn pump(&mut self, server: &mut Server) {
        for _ in 0..50 {
            let Some(bytes) = self.client.poll_transmit() else {
                return;
            };
            if let Some(out) = server.handle_client(listen(), self.addr, &bytes, self.now, UNIX) {
                assert_eq!(out.to, self.addr);
                assert_eq!(out.from, listen());
                assert!(
                    self.client
                        .handle_datagram(&out.payload, self.now)
                        .is_none()
                );
            }
        }
        panic!("the client kept sending");
    }

    fn advance(&mut self, server: &mut Server, by: Duration) {
        self.now += by;
        self.client.handle_timeout(self.now);
        server.handle_timeout(self.now);
        self.pump(server);
    }

    fn allocated(&mut self, server: &mut Server) -> SocketAddr {
        self.pump(server);
        self.client.relayed().expect("an allocation")
    }
}

#[test]
fn allocates_permits_and_relays_both_ways_then_moves_to_a_channel() {
    let mut s = server(Config::default());
    let mut p = Pair::new("198.51.100.2:40000", creds("alice"));
    let relayed = p.allocated(&mut s);
    assert!(relays().contains(&relayed));
    assert_eq!(p.client.mapped(), Some(p.addr));
    let peer = a("192.0.2.2:51820");

    // Before the permission, the peer's datagrams go nowhere.
    assert_eq!(s.handle_peer(relayed, peer, b"early", p.now, [0; 12]), None);
    p.client.set_peers([peer.ip()], p.now);
    p.pump(&mut s);

    // Peer → client as a Data indication.
    let out = s
        .handle_peer(relayed, peer, b"lobby?", p.now, [1; 12])
        .expect("forwarded");
    assert_eq!((out.from, out.to), (listen(), p.addr));
    assert_eq!(
        p.client.handle_datagram(&out.payload, p.now),
        Some((peer, b"lobby?".to_vec()))
    );

    // Client → peer: first a Send indication (and a ChannelBind goes out)...
    let framed = p.client.send(peer, b"here", p.now).expect("allocated");
    assert!(turn::parse_channel_data(&framed).is_none());
    let out = s
        .handle_client(listen(), p.addr, &framed, p.now, UNIX)
        .expect("relayed");
    assert_eq!(
        (out.from, out.to, out.payload.as_slice()),
        (relayed, peer, &b"here"[..])
    );
    p.pump(&mut s);
    // ...then ChannelData, 4 bytes of overhead instead of 36.
    let framed = p.client.send(peer, b"again", p.now).expect("allocated");
    let (channel, _) = turn::parse_channel_data(&framed).expect("channel data");
    let out = s
        .handle_client(listen(), p.addr, &framed, p.now, UNIX)
        .expect("relayed");
    assert_eq!((out.to, out.payload.as_slice()), (peer, &b"again"[..]));
    // And the peer's data comes back on the channel.
    let out = s
        .handle_peer(relayed, peer, b"pong", p.now, [2; 12])
        .expect("forwarded");
    assert_eq!(
        turn::parse_channel_data(&out.payload),
        Some((channel, &b"pong"[..]))
    );
    assert_eq!(
        p.client.handle_datagram(&out.payload, p.now),
        Some((peer, b"pong".to_vec()))
    );

    // A forged ChannelData from another source, on the same channel, goes nowhere.
    let forged = turn::channel_data(channel, b"spoof");
    for other in ["198.51.100.66:40000", "198.51.100.2:40001"] {
        assert_eq!(
            s.handle_client(listen(), a(other), &forged, p.now, UNIX),
            None
        );
    }
    // So does a peer without a permission.
    assert_eq!(
        s.handle_peer(relayed, a("192.0.2.99:9"), b"x", p.now, [0; 12]),
        None
    );
    assert!(s.counters().no_permission >= 2);
    assert!(s.counters().no_allocation >= 2);
}

#[test]
fn expired_or_forged_credentials_are_refused() {
    let mut s = server(Config::default());
    let expired = turn::rest_credentials(SECRET, "bob", UNIX - 1);
    let mut p = Pair::new("198.51.100.3:40000", expired);
    p.pump(&mut s);
    assert_eq!(p.client.state(), AllocationState::Failed);
    let forged = turn::rest_credentials(b"not-the-secret", "mallory", UNIX + 3600);
    let mut q = Pair::new("198.51.100.4:40000", forged);
    q.pump(&mut s);
    assert_eq!(q.client.state(), AllocationState::Failed);
    assert_eq!(s.allocations(), 0);
    // Each client's first request carries no credentials; its retry, the wrong ones.
    assert!(s.counters().challenged >= 2);
    assert!(s.counters().bad_credentials >= 2);
    assert_eq!(s.counters().stale_nonce, 0);
}

#[test]
fn unauthenticated_answers_are_never_larger_than_the_request() {
    let mut s = server(Config::default());
    let from = a("198.51.100.5:40000");
    // A bare Allocate: 20-byte header + REQUESTED-TRANSPORT.
    let mut bare = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    bare.extend_from_slice(&[7; 12]);
    bare.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    assert!(turn::decode(&bare).is_some());
    assert_eq!(
        s.handle_client(listen(), from, &bare, Instant::now(), UNIX),
        None
    );
    // The client's first request is padded enough to get its 401.
    let mut c = TurnClient::new(listen(), creds("carol"), 2, Instant::now());
    let first = c.poll_transmit().expect("an Allocate");
    let answer = s
        .handle_client(listen(), from, &first, Instant::now(), UNIX)
        .expect("a 401");
    assert!(answer.payload.len() <= first.len());
}

#[test]
fn quotas_capacity_and_rate_limits_hold() {
    let mut s = server(Config {
        user_quota: 1,
        rate_bytes_per_sec: 1_000,
        ..Config::default()
    });
    let mut first = Pair::new("198.51.100.6:40000", creds("dave"));
    let relayed = first.allocated(&mut s);
    let mut second = Pair::new("198.51.100.6:40001", creds("dave"));
    second.pump(&mut s);
    assert_eq!(second.client.state(), AllocationState::Failed, "486: quota");

    let peer = a("192.0.2.2:51820");
    first.client.set_peers([peer.ip()], first.now);
    first.pump(&mut s);
    let chunk = [0u8; 400];
    let forwarded = (0..5)
        .filter(|i| {
            s.handle_peer(relayed, peer, &chunk, first.now, [*i; 12])
                .is_some()
        })
        .count();
    assert_eq!(
        forwarded, 2,
        "1000 B/s with a one-second burst passes two 400-byte datagrams"
    );
    assert_eq!(s.counters().rate_limited, 3);
    // A second later the bucket has refilled.
    first.now += Duration::from_secs(1);
    assert!(
        s.handle_peer(relayed, peer, &chunk, first.now, [9; 12])
            .is_some()
    );

    // Other users fill the remaining relay ports, then the server is full (508).
    for i in 0..3 {
        let mut p = Pair::new(
            &format!("198.51.100.7:{}", 41_000 + i),
            creds(&format!("u{i}")),
        );
        p.allocated(&mut s);
    }
    assert_eq!(s.capacity(), 0);
    let mut late = Pair::new("198.51.100.8:40000", creds("late"));
    late.pump(&mut s);
    assert_eq!(late.client.state(), AllocationState::Failed);
}

#[test]
fn allocations_expire_and_a_restarted_relay_is_noticed() {
    let mut s = server(Config::default());
    let mut p = Pair::new("198.51.100.9:40000", creds("erin"));
    p.allocated(&mut s);
    // Refreshes keep it alive well past its lifetime.
    for _ in 0..200 {
        p.advance(&mut s, Duration::from_secs(5));
    }
    assert_eq!(s.allocations(), 1);
    assert_eq!(p.client.allocations, 1);

    // The relay restarts: new state, new nonce key. The next refresh finds no allocation
    // and the client allocates again: within one refresh period (4 s) and a retry.
    let mut restarted = Server::new(
        Config {
            secret: SECRET.to_vec(),
            ..Config::default()
        },
        &[listen()],
        &relays(),
        [4; 32],
    );
    for _ in 0..10 {
        p.advance(&mut restarted, Duration::from_millis(500));
    }
    assert_eq!(p.client.allocations, 2);
    assert!(p.client.relayed().is_some());
    assert_eq!(restarted.allocations(), 1);

    // An allocation nobody refreshes is released and its port is free again.
    let before = restarted.capacity();
    restarted.handle_timeout(p.now + Duration::from_secs(601));
    assert_eq!(restarted.allocations(), 0);
    assert_eq!(restarted.capacity(), before + 1);
}

/// A server with `ports` relay ports on the listen IP and the given listen addresses.
fn server_on(config: Config, listen_addrs: &[SocketAddr], ports: u16) -> Server {
    let relays: Vec<SocketAddr> = (50_000..50_000 + ports)
        .map(|p| SocketAddr::new(listen().ip(), p))
        .collect();
    Server::new(
        Config {
            secret: SECRET.to_vec(),
            ..config
        },
        listen_addrs,
        &relays,
        [3; 32],
    )
}

/// A client speaking raw TURN with valid credentials (the nonce taken straight from the
/// server), to see every error code.
struct Raw {
    addr: SocketAddr,
    creds: Credentials,
    now: Instant,
    next_txid: u8,
}

impl Raw {
    fn new(addr: &str, user: &str) -> Self {
        Self::with(addr, creds(user))
    }

    fn with(addr: &str, creds: Credentials) -> Self {
        Self {
            addr: a(addr),
            creds,
            now: Instant::now(),
            next_txid: 0,
        }
    }

    fn build(
        &mut self,
        s: &Server,
        method: Method,
        add: impl FnOnce(&mut turn::TurnMessage),
    ) -> turn::TurnMessage {
        self.next_txid = self.next_txid.wrapping_add(1);
        let mut msg = Message::new(
            MessageClass::Request,
            method,
            stun_codec::TransactionId::new([self.next_txid; 12]),
        );
        add(&mut msg);
        let nonce = s.nonce(UNIX, self.addr);
        turn::sign(
            &mut msg,
            &self.creds.username,
            turn::REALM,
            &nonce,
            &self.creds.password,
        )
        .expect("signed");
        msg
    }

    /// Sends a signed request; the answer's error code, or 0 for success.
    fn call(
        &mut self,
        s: &mut Server,
        method: Method,
        add: impl FnOnce(&mut turn::TurnMessage),
    ) -> u16 {
        let msg = self.build(s, method, add);
        let bytes = turn::encode(msg).expect("encoded");
        self.send_raw(s, &bytes)
    }

    fn send_raw(&mut self, s: &mut Server, bytes: &[u8]) -> u16 {
        let out = s
            .handle_client(listen(), self.addr, bytes, self.now, UNIX)
            .expect("an answer");
        let reply = turn::decode(&out.payload).expect("a TURN answer");
        match reply.class() {
            MessageClass::SuccessResponse => 0,
            _ => reply
                .get_attribute::<ErrorCode>()
                .map_or(1, ErrorCode::code),
        }
    }

    fn allocate(&mut self, s: &mut Server) -> u16 {
        self.call(s, ALLOCATE, |m| {
            m.add_attribute(RequestedTransport::new(UDP_TRANSPORT));
        })
    }

    fn permit(&mut self, s: &mut Server, peer: IpAddr) -> u16 {
        self.call(s, CREATE_PERMISSION, |m| {
            m.add_attribute(XorPeerAddress::new(SocketAddr::new(peer, 0)));
        })
    }

    fn bind(&mut self, s: &mut Server, peer: SocketAddr, channel: u16) -> u16 {
        self.call(s, CHANNEL_BIND, |m| {
            m.add_attribute(
                stun_codec::rfc5766::attributes::ChannelNumber::new(channel).expect("n"),
            );
            m.add_attribute(XorPeerAddress::new(peer));
        })
    }

    /// A Send indication to `peer`: whether the server relays it.
    fn send(&self, s: &mut Server, peer: SocketAddr, data: &[u8]) -> bool {
        let bytes = turn::send_indication([9; 12], peer, data).expect("encoded");
        s.handle_client(listen(), self.addr, &bytes, self.now, UNIX)
            .is_some_and(|t| t.to == peer && t.payload == data)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn special_use_peers_and_the_relay_itself_are_refused() {
    let second_listen = a("203.0.113.11:3478");
    let mut s = server_on(Config::default(), &[listen(), second_listen], 4);
    let mut c = Raw::new("198.51.100.2:40000", "d1.p1");
    assert_eq!(c.allocate(&mut s), 0);
    let refused = [
        "10.77.0.2",
        "172.16.5.5",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "127.0.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "240.0.0.1",
        "255.255.255.255",
        "224.0.0.251",
        // The relay's own listen and relay IPs.
        "203.0.113.10",
        "203.0.113.11",
        "::1",
        "::",
        "::ffff:10.0.0.1",
        "::ffff:203.0.113.10",
        "::10.0.0.1",
        "fd00::1",
        "fe80::1",
        "ff02::1",
    ];
    for (i, peer) in refused.into_iter().enumerate() {
        let peer = ip(peer);
        assert_eq!(c.permit(&mut s, peer), 403, "CreatePermission {peer}");
        let channel = turn::CHANNEL_MIN + i as u16;
        let addr = SocketAddr::new(peer, 9);
        assert_eq!(c.bind(&mut s, addr, channel), 403, "ChannelBind {peer}");
        assert!(!c.send(&mut s, addr, b"x"), "Send to {peer}");
    }
    let n = refused.len() as u64;
    assert_eq!(s.counters().forbidden_peer_requests, 2 * n);
    assert_eq!(s.counters().forbidden_peer, n);
    assert_eq!(s.permissions(), 0);
    assert_eq!(s.channels(), 0);
    // One request naming an allowed and a refused peer installs neither.
    let mixed = c.call(&mut s, CREATE_PERMISSION, |m| {
        m.add_attribute(XorPeerAddress::new(a("192.0.2.2:0")));
        m.add_attribute(XorPeerAddress::new(a("10.0.0.1:0")));
    });
    assert_eq!(mixed, 403);
    assert_eq!(s.permissions(), 0);
    // A documentation-range peer works, both ways, by Send and by channel.
    let peer = a("192.0.2.2:51820");
    assert_eq!(c.permit(&mut s, peer.ip()), 0);
    assert!(c.send(&mut s, peer, b"hello"));
    assert_eq!(c.bind(&mut s, peer, 0x4100), 0);
    let framed = turn::channel_data(0x4100, b"ch");
    let out = s
        .handle_client(listen(), c.addr, &framed, c.now, UNIX)
        .expect("relayed");
    assert_eq!((out.to, out.payload.as_slice()), (peer, &b"ch"[..]));
    let relayed = out.from;
    assert!(
        s.handle_peer(relayed, peer, b"back", c.now, [1; 12])
            .is_some()
    );
    // Data from the relay's own address, even on a permitted IP, goes nowhere.
    assert!(
        s.handle_peer(relayed, a("203.0.113.10:50001"), b"loop", c.now, [1; 12])
            .is_none()
    );
    assert_eq!(s.counters().forbidden_peer, n + 1);
}

#[test]
fn allowed_ranges_open_special_ranges_but_not_the_relay_itself() {
    let config = Config {
        allow_peers: vec![
            "10.0.0.0/8".parse().expect("cidr"),
            "fd00::/8".parse().expect("cidr"),
            "203.0.113.0/24".parse().expect("cidr"),
        ],
        ..Config::default()
    };
    let mut s = server_on(config, &[listen()], 4);
    let mut c = Raw::new("198.51.100.2:40000", "d1.p1");
    assert_eq!(c.allocate(&mut s), 0);
    assert_eq!(c.permit(&mut s, ip("10.77.0.2")), 0);
    assert!(c.send(&mut s, a("10.77.0.2:9"), b"lan"));
    assert_eq!(c.permit(&mut s, ip("fd00::2")), 0);
    assert_eq!(c.permit(&mut s, ip("203.0.113.99")), 0);
    // Not opened: still refused; the relay's own IP: refused whatever the ranges say.
    assert_eq!(c.permit(&mut s, ip("192.168.1.1")), 403);
    assert_eq!(c.permit(&mut s, ip("203.0.113.10")), 403);
    assert!(!c.send(&mut s, a("203.0.113.10:3478"), b"me"));
}

#[test]
fn self_peers_reach_exactly_the_listed_address_on_the_relays_ip() {
    let host_wg = a("203.0.113.10:51820");
    let config = Config {
        self_peers: vec![host_wg],
        ..Config::default()
    };
    let mut s = server_on(config, &[listen()], 4);
    let mut c = Raw::new("198.51.100.2:40000", "d1.p1");
    assert_eq!(c.allocate(&mut s), 0);
    assert_eq!(c.permit(&mut s, host_wg.ip()), 0);
    assert!(c.send(&mut s, host_wg, b"handshake"));
    assert_eq!(c.bind(&mut s, host_wg, 0x4000), 0);
    // Other ports of the same IP: the listen port, another relay port.
    for other in ["203.0.113.10:3478", "203.0.113.10:50001"] {
        assert!(!c.send(&mut s, a(other), b"x"), "{other}");
        assert_eq!(c.bind(&mut s, a(other), 0x4001), 403, "{other}");
    }
}

#[test]
fn thirty_identities_from_one_ip_cannot_exhaust_the_relay() {
    let mut s = server_on(Config::default(), &[listen()], 64);
    let mut codes = Vec::new();
    for i in 0..30 {
        let mut c = Raw::new(
            &format!("198.51.100.66:{}", 40_000 + i),
            &format!("d{i:02}.bad"),
        );
        codes.push(c.allocate(&mut s));
    }
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 8, "{codes:?}");
    assert!(codes[8..].iter().all(|c| *c == 486), "{codes:?}");
    assert_eq!(s.counters().quota.ip, 22);
    // A real member, elsewhere, still allocates.
    let mut real = Raw::new("192.0.2.2:40000", "dev.goodparty");
    assert_eq!(real.allocate(&mut s), 0);
    assert_eq!(s.allocations(), 9);
    assert_eq!(
        s.capacity(),
        60 - 9,
        "the cap is 64 ports less a reserve of 4"
    );
}

#[test]
fn one_party_cannot_take_more_than_its_share() {
    let mut s = server_on(Config::default(), &[listen()], 64);
    assert_eq!(s.limits().total, 60);
    assert_eq!(s.limits().party, 30, "never more than half the relay");
    let mut granted = 0;
    for i in 0..40u16 {
        let mut c = Raw::new(
            &format!("198.51.{}.2:40000", i + 1),
            &format!("d{i:02}.party"),
        );
        match c.allocate(&mut s) {
            0 => granted += 1,
            code => assert_eq!(code, 486, "member {i}"),
        }
    }
    assert_eq!(granted, 30);
    assert_eq!(s.counters().quota.party, 10);
    // Another party, and a dotless id (its own party), still allocate.
    assert_eq!(
        Raw::new("192.0.2.50:40000", "d00.other").allocate(&mut s),
        0
    );
    assert_eq!(Raw::new("192.0.2.51:40000", "party").allocate(&mut s), 0);
}

#[test]
fn the_user_quota_and_the_relay_wide_cap_hold() {
    let config = Config {
        max_allocations: Some(10),
        ..Config::default()
    };
    let mut s = server_on(config, &[listen()], 64);
    assert_eq!(s.limits().party, 5, "half the relay-wide cap");
    // One user id: four allocations from four IPs, then 486.
    let codes: Vec<u16> = (0..5)
        .map(|i| Raw::new(&format!("198.51.100.{}:4000", i + 1), "dev.p").allocate(&mut s))
        .collect();
    assert_eq!(codes, vec![0, 0, 0, 0, 486]);
    assert_eq!(s.counters().quota.user, 1);
    assert_eq!(s.capacity(), 6);
    // The relay-wide cap: 508 (insufficient capacity) once ten are held, whoever asks.
    let codes: Vec<u16> = (0..7)
        .map(|i| {
            Raw::new(&format!("192.0.2.{}:4000", i + 1), &format!("u{i}.q{i}")).allocate(&mut s)
        })
        .collect();
    assert_eq!(codes, vec![0, 0, 0, 0, 0, 0, 508]);
    assert_eq!(s.counters().quota.total, 1);
    assert_eq!(s.capacity(), 0);
    assert_eq!(s.free_ports(), 54);
}

#[test]
fn user_and_relay_wide_byte_rates_hold_across_allocations() {
    let config = Config {
        rate_bytes_per_sec: 10_000,
        user_rate_bytes_per_sec: 1_000,
        total_rate_bytes_per_sec: 1_500,
        ..Config::default()
    };
    let mut s = server_on(config, &[listen()], 8);
    let peer = a("192.0.2.2:9");
    let mut one = Raw::new("198.51.100.2:40000", "alice.p");
    let mut two = Raw::new("198.51.100.2:40001", "alice.p");
    let mut bob = Raw::new("198.51.100.3:40000", "bob.p");
    for c in [&mut one, &mut two, &mut bob] {
        assert_eq!(c.allocate(&mut s), 0);
        assert_eq!(c.permit(&mut s, peer.ip()), 0);
    }
    let chunk = [0u8; 400];
    // alice's two allocations share 1000 B/s: two 400-byte datagrams in all.
    let sent = [&one, &two, &one, &two]
        .into_iter()
        .filter(|c| c.send(&mut s, peer, &chunk))
        .count();
    assert_eq!(sent, 2);
    // bob has his own 1000 B/s, but the relay has only 700 B left of its 1500.
    assert!(bob.send(&mut s, peer, &chunk));
    assert!(!bob.send(&mut s, peer, &chunk));
    assert_eq!(s.counters().rate_limited, 3);
    // A second later every bucket has refilled.
    bob.now += Duration::from_secs(1);
    assert!(bob.send(&mut s, peer, &chunk));
}

#[test]
fn revoked_users_lose_their_allocations_and_credentials() {
    let mut s = server_on(Config::default(), &[listen()], 8);
    let mut gone = Raw::new("198.51.100.2:40000", "kicked.p");
    let mut gone2 = Raw::new("198.51.100.2:40001", "kicked.p");
    let mut stays = Raw::new("198.51.100.3:40000", "stays.p");
    for c in [&mut gone, &mut gone2, &mut stays] {
        assert_eq!(c.allocate(&mut s), 0);
    }
    s.revoke("kicked.p", UNIX + 3600);
    assert_eq!(s.allocations(), 1);
    // The same credentials (expiry UNIX + 3600) no longer work, for any request.
    assert_eq!(gone.allocate(&mut s), 401);
    assert_eq!(gone.permit(&mut s, ip("192.0.2.2")), 401);
    assert_eq!(s.counters().revoked, 2);
    assert_eq!(stays.permit(&mut s, ip("192.0.2.2")), 0);
    // Credentials issued after the revocation (a later expiry) work again.
    let mut back = Raw::with(
        "198.51.100.2:40002",
        turn::rest_credentials(SECRET, "kicked.p", UNIX + 3601),
    );
    assert_eq!(back.allocate(&mut s), 0);
    // Hearing the same revocation again (the next heartbeat) leaves the newer allocation.
    s.revoke("kicked.p", UNIX + 3600);
    assert_eq!(s.allocations(), 2);
    assert_eq!(back.permit(&mut s, ip("192.0.2.2")), 0);
    // Revocations are forgotten once they end: a later one prunes it.
    assert_eq!(s.revoked.len(), 1);
    s.unix = UNIX + 3601;
    s.revoke("other.p", UNIX + 4000);
    assert!(!s.revoked.contains_key("kicked.p"));
}

#[test]
fn renewed_credentials_of_the_same_user_keep_the_allocation_and_others_get_441() {
    let mut s = server_on(Config::default(), &[listen()], 4);
    let mut c = Raw::new("198.51.100.2:40000", "dev.p");
    assert_eq!(c.allocate(&mut s), 0);
    // The daemon renews its credentials every minute: a later expiry, the same user id.
    c.creds = turn::rest_credentials(SECRET, "dev.p", UNIX + 7200);
    let refresh = |c: &mut Raw, s: &mut Server| {
        c.call(s, REFRESH, |m| {
            m.add_attribute(Lifetime::from_u32(600));
        })
    };
    assert_eq!(refresh(&mut c, &mut s), 0);
    assert_eq!(c.permit(&mut s, ip("192.0.2.2")), 0);
    // A revocation issued before the renewal does not cover the renewed credentials.
    s.revoke("dev.p", UNIX + 3600);
    assert_eq!(s.allocations(), 1);
    // Another user's valid credentials on the same 5-tuple: 441 (RFC 8656 §5).
    c.creds = turn::rest_credentials(SECRET, "other.p", UNIX + 3600);
    assert_eq!(refresh(&mut c, &mut s), 441);
}

#[test]
fn a_draining_relay_refuses_allocations_and_keeps_the_old_ones() {
    let mut s = server_on(Config::default(), &[listen()], 8);
    let mut old = Raw::new("198.51.100.2:40000", "old.p");
    assert_eq!(old.allocate(&mut s), 0);
    assert!(s.capacity() > 0);
    s.drain();
    assert!(s.draining());
    assert_eq!(s.capacity(), 0);
    assert_eq!(
        Raw::new("198.51.100.3:40000", "new.p").allocate(&mut s),
        508
    );
    assert_eq!(s.counters().quota.draining, 1);
    // The old allocation goes on: refresh, permission, data.
    let refresh = old.call(&mut s, REFRESH, |m| {
        m.add_attribute(Lifetime::from_u32(600));
    });
    assert_eq!(refresh, 0);
    assert_eq!(old.permit(&mut s, ip("192.0.2.2")), 0);
    assert!(old.send(&mut s, a("192.0.2.2:9"), b"still here"));
}

#[test]
fn unknown_required_attributes_get_420_once_authenticated() {
    let mut s = server_on(Config::default(), &[listen()], 4);
    let mut c = Raw::new("198.51.100.2:40000", "d1.p1");
    // An Allocate with DONT-FRAGMENT (0x001A), which this relay does not implement.
    let unsigned = {
        let mut m: turn::TurnMessage = Message::new(
            MessageClass::Request,
            ALLOCATE,
            stun_codec::TransactionId::new([42; 12]),
        );
        m.add_attribute(RequestedTransport::new(UDP_TRANSPORT));
        let mut bytes = turn::encode(m).expect("encoded");
        bytes.extend_from_slice(&[0x00, 0x1A, 0x00, 0x00]);
        let len = (bytes.len() - 20) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        bytes
    };
    // Without credentials: the usual 401 first (RFC 8489 checks credentials first).
    let out = s
        .handle_client(
            listen(),
            c.addr,
            &[&unsigned[..], &[0; 64]].concat(),
            c.now,
            UNIX,
        )
        .map(|t| turn::decode(&t.payload).expect("answer"));
    assert!(out.is_none_or(|m| m.get_attribute::<ErrorCode>().map(ErrorCode::code) == Some(401)));
    // With them: 420 naming EVEN-PORT, and no allocation.
    let mut msg = turn::decode(&unsigned).expect("decodes with an unknown attribute");
    let nonce = s.nonce(UNIX, c.addr);
    turn::sign(
        &mut msg,
        &c.creds.username,
        turn::REALM,
        &nonce,
        &c.creds.password,
    )
    .expect("signed");
    let bytes = turn::encode(msg).expect("encoded");
    let out = s
        .handle_client(listen(), c.addr, &bytes, c.now, UNIX)
        .expect("an answer");
    let reply = turn::decode(&out.payload).expect("a TURN answer");
    assert_eq!(
        reply.get_attribute::<ErrorCode>().map(ErrorCode::code),
        Some(420)
    );
    let listed: Vec<u16> = reply
        .get_attribute::<UnknownAttributes>()
        .expect("UNKNOWN-ATTRIBUTES")
        .unknowns()
        .iter()
        .map(|t| t.as_u16())
        .collect();
    assert_eq!(listed, vec![0x001A]);
    assert!(
        reply.get_attribute::<MessageIntegrity>().is_some(),
        "sealed"
    );
    assert_eq!(s.allocations(), 0);
    assert_eq!(s.counters().unknown_attributes, 1);
    assert_eq!(c.allocate(&mut s), 0, "without it, the Allocate succeeds");
}

#[test]
fn a_request_with_a_bad_fingerprint_is_dropped_silently() {
    let mut s = server_on(Config::default(), &[listen()], 4);
    let mut c = Raw::new("198.51.100.2:40000", "d1.p1");
    let mut msg = c.build(&s, ALLOCATE, |m| {
        m.add_attribute(RequestedTransport::new(UDP_TRANSPORT));
    });
    let fp = stun_codec::rfc5389::attributes::Fingerprint::new(&msg).expect("fingerprint");
    msg.add_attribute(fp);
    let good = turn::encode(msg).expect("encoded");
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    assert_eq!(s.handle_client(listen(), c.addr, &bad, c.now, UNIX), None);
    assert_eq!(s.allocations(), 0);
    assert_eq!(c.send_raw(&mut s, &good), 0);
    assert_eq!(s.allocations(), 1);
}

#[test]
fn even_port_and_address_family_are_honoured() {
    let mut s = server_on(Config::default(), &[listen()], 4);
    // Allocate with extra raw attributes, signed: the answer's code and relayed address.
    let allocate = |s: &mut Server, from: &str, extra: &[u8]| {
        // A party of its own per client: only the ports are in short supply here.
        let c = Raw::new(from, &format!("dev.{}", from.replace(['.', ':'], "-")));
        let mut m: turn::TurnMessage = Message::new(
            MessageClass::Request,
            ALLOCATE,
            stun_codec::TransactionId::new([5; 12]),
        );
        m.add_attribute(RequestedTransport::new(UDP_TRANSPORT));
        let mut bytes = turn::encode(m).expect("encoded");
        bytes.extend_from_slice(extra);
        let len = (bytes.len() - 20) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        let mut msg = turn::decode(&bytes).expect("decodes");
        let nonce = s.nonce(UNIX, c.addr);
        turn::sign(
            &mut msg,
            &c.creds.username,
            turn::REALM,
            &nonce,
            &c.creds.password,
        )
        .expect("signed");
        let out = s
            .handle_client(
                listen(),
                c.addr,
                &turn::encode(msg).expect("encoded"),
                c.now,
                UNIX,
            )
            .expect("an answer");
        let reply = turn::decode(&out.payload).expect("a TURN answer");
        let code = reply
            .get_attribute::<ErrorCode>()
            .map_or(0, ErrorCode::code);
        let relayed = reply
            .get_attribute::<XorRelayAddress>()
            .map(|r| r.address());
        let token = reply
            .get_attribute::<stun_codec::rfc5766::attributes::ReservationToken>()
            .map(|t| t.token());
        (code, relayed, token)
    };
    let even_port = [0x00, 0x18, 0x00, 0x01, 0x00, 0, 0, 0];
    let v4 = [0x00, 0x17, 0x00, 0x04, 0x01, 0, 0, 0];
    let v6 = [0x00, 0x17, 0x00, 0x04, 0x02, 0, 0, 0];
    let bogus = [0x00, 0x17, 0x00, 0x04, 0x07, 0, 0, 0];
    // Ports 50000..50003: the even ones are 50000 and 50002.
    for from in ["198.51.100.2:1", "198.51.100.3:1"] {
        let (code, relayed, token) = allocate(&mut s, from, &[&even_port[..], &v4[..]].concat());
        assert_eq!((code, token), (0, None));
        assert_eq!(relayed.map(|r| r.port() % 2), Some(0), "{relayed:?}");
    }
    let (code, ..) = allocate(&mut s, "198.51.100.4:1", &even_port);
    assert_eq!(code, 508, "no even port left");
    assert_eq!(
        allocate(&mut s, "198.51.100.5:1", &v6).0,
        440,
        "no IPv6 relay"
    );
    assert_eq!(allocate(&mut s, "198.51.100.6:1", &bogus).0, 440);
    assert_eq!(allocate(&mut s, "198.51.100.7:1", &[]).0, 0);

    // EVEN-PORT with R: an even port, and the next one held for the token returned.
    let mut s = server_on(Config::default(), &[listen()], 4);
    let reserve = [0x00, 0x18, 0x00, 0x01, 0x80, 0, 0, 0];
    let (code, rtp, token) = allocate(&mut s, "198.51.100.2:1", &reserve);
    assert_eq!(code, 0);
    let (rtp, token) = (rtp.expect("relayed"), token.expect("a RESERVATION-TOKEN"));
    assert_eq!(rtp.port() % 2, 0);
    assert_eq!(s.free_ports(), 2, "one allocated, one reserved");
    let with_token = |t: u64| [&[0x00, 0x22, 0x00, 0x08][..], &t.to_be_bytes()].concat();
    let (code, ..) = allocate(&mut s, "198.51.100.3:1", &with_token(token ^ 1));
    assert_eq!(code, 508, "an unknown token");
    let both = [&with_token(token)[..], &even_port[..]].concat();
    assert_eq!(allocate(&mut s, "198.51.100.3:1", &both).0, 400);
    let (code, rtcp, _) = allocate(&mut s, "198.51.100.3:1", &with_token(token));
    assert_eq!(code, 0);
    assert_eq!(rtcp.map(|r| r.port()), Some(rtp.port() + 1));
    assert_eq!(
        allocate(&mut s, "198.51.100.4:1", &with_token(token)).0,
        508,
        "used"
    );
    // An unclaimed reservation lapses and its port is free again.
    let (_, _, token) = allocate(&mut s, "198.51.100.5:1", &reserve);
    assert!(token.is_some());
    assert_eq!(s.free_ports(), 0);
    s.handle_timeout(Instant::now() + Duration::from_secs(31));
    assert_eq!(s.free_ports(), 1);

    // A reservation lives with its allocation: allocating and releasing in a loop cannot
    // pile up reserved ports outside every quota.
    let mut s = server_on(Config::default(), &[listen()], 4);
    let (code, _, token) = allocate(&mut s, "198.51.100.8:1", &reserve);
    assert_eq!((code, token.is_some()), (0, true));
    assert_eq!(s.free_ports(), 2);
    s.revoke("dev.198-51-100-8-1", UNIX + 3600);
    assert_eq!(
        s.free_ports(),
        4,
        "the port and its reservation are free again"
    );
}
