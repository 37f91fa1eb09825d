//! The TURN server against LANrage's TURN client, both sans-IO, on a virtual clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanrage_core::turn::{self, AllocationState, Credentials, TurnClient};

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
