//! Shared pieces of the fuzz targets: the relay harness replays a script of datagrams
//! against one TURN server, with fixed keys and clock so a corpus of valid, signed
//! requests (written by `seeds`) stays valid.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lanrage_relay::turn::{Config, Server};

/// The wall clock every script runs at (credentials in the corpus expire after it).
pub const UNIX: u64 = 1_800_000_000;
pub const SECRET: &[u8] = b"fuzz-secret";
pub const NONCE_KEY: [u8; 32] = [7; 32];

pub fn listen() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 10], 3478))
}

pub fn relay_ports() -> Vec<SocketAddr> {
    (50_000..50_004)
        .map(|p| SocketAddr::from(([203, 0, 113, 10], p)))
        .collect()
}

/// Script sources: two clients and two peers.
pub fn source(i: u8) -> SocketAddr {
    match i % 4 {
        0 => SocketAddr::from(([198, 51, 100, 2], 40_000)),
        1 => SocketAddr::from(([198, 51, 100, 3], 40_001)),
        2 => SocketAddr::from(([192, 0, 2, 2], 51_820)),
        _ => SocketAddr::from(([192, 0, 2, 3], 51_821)),
    }
}

pub fn server() -> Server {
    Server::new(
        Config {
            secret: SECRET.to_vec(),
            user_quota: 2,
            rate_bytes_per_sec: 10_000,
            ..Config::default()
        },
        &[listen()],
        &relay_ports(),
        NONCE_KEY,
    )
}

/// One step of a script: `[op, source, len_hi, len_lo, payload…]`.
/// op % 3: 0 = datagram from `source(src)` to the listen address, 1 = datagram from
/// `source(src)` to relay port `(src / 4) % 4`, 2 = advance the clock by `len_lo` seconds.
pub fn step(op: u8, src: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut out = vec![op, src];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..usize::from(len)]);
    out
}

/// Replays a script; the properties checked are the server's own: no panic, and nothing
/// sent to an address that did not send to the server first.
pub fn replay(data: &[u8]) {
    let mut server = server();
    let start = Instant::now();
    let mut now = start;
    let mut rest = data;
    let mut heard_from = Vec::new();
    while rest.len() >= 4 {
        let (op, src) = (rest[0], rest[1]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let end = (4 + len).min(rest.len());
        let payload = &rest[4..end];
        rest = &rest[end..];
        let from = source(src);
        let out = match op % 3 {
            0 => {
                heard_from.push(from);
                server.handle_client(listen(), from, payload, now, UNIX)
            }
            1 => {
                heard_from.push(from);
                let relay = relay_ports()[usize::from((src / 4) % 4)];
                server.handle_peer(relay, from, payload, now, [src; 12])
            }
            _ => {
                now += Duration::from_secs(u64::from(len as u8));
                server.handle_timeout(now);
                None
            }
        };
        if let Some(t) = out {
            assert!(
                heard_from.contains(&t.to) || source_is_peer(t.to),
                "sent to {} which never sent anything",
                t.to
            );
        }
    }
}

/// Peers get data only after a permission, which names their IP; the script's peers are
/// the fixed sources, so anything else is a bug.
fn source_is_peer(addr: SocketAddr) -> bool {
    (0..4).any(|i| source(i).ip() == addr.ip())
}
