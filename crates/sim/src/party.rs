//! A long party on the virtual clock: several members behind one NAT (so, to everyone
//! outside it, one public IP) and one member outside, every pair rekeying every two minutes
//! as WireGuard does (whitepaper §6.2, REKEY_AFTER_TIME), for hours.
//!
//! It checks what a per-source-IP handshake limit got wrong: every handshake from the
//! shared public IP counts against one source, so a limit that is not per second (or too
//! low) sends a long party's rekeys on the cookie detour, or fails them. Here every rekey
//! must succeed at its first attempt: no cookie reply on the wire, no handshake refused,
//! and no pair ever without a session it can use.
//!
//! The nodes' own latency probes are off (four per path per second over eight hours is
//! tens of millions of events); instead each member sends one in-tunnel packet to every
//! other member every [`Party::traffic_every`], like a game's state updates. Traffic is what
//! makes WireGuard rekey: the initiator of a session starts a new handshake on its first
//! send after REKEY_AFTER_TIME.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lanrage_core::Counters;
use lanrage_core::packet::{self, Probe, ProbeKind};
use rand::RngCore;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{Nat, NatModel, Player, World, nat};

/// WireGuard's REKEY_AFTER_TIME (whitepaper §6.1): sessions are renewed this often.
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// WireGuard's REKEY_TIMEOUT (whitepaper §6.1): an unanswered initiation is retried after
/// this long, so a pair whose session ever got older than `REKEY_AFTER + REKEY_TIMEOUT`
/// (plus the traffic interval that triggers the rekey) needed a second attempt.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// WireGuard's REJECT_AFTER_TIME (whitepaper §6.1): a session this old carries nothing.
pub const REJECT_AFTER: Duration = Duration::from_secs(180);
/// Every pair must have its first session by then.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
/// How often every pair's session is checked.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct Party {
    /// Members behind the one shared NAT (the party's LAN, seen outside as one IP).
    pub behind_nat: u8,
    pub seed: u64,
    pub duration: Duration,
    /// Each member sends one packet to every other member this often.
    pub traffic_every: Duration,
    /// One way, between a NAT and the internet core.
    pub wan_delay: Duration,
}

/// How a party went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyOutcome {
    /// From the start until every ordered pair had a session.
    pub connected_after: Option<Duration>,
    /// Once connected, the oldest any pair's current session got (sampled every second);
    /// every rekey succeeding at once keeps it just above [`REKEY_AFTER`].
    pub max_session_age: Duration,
    /// Samples (per ordered pair, every second once connected) at which a pair had no
    /// session it could use (none, or one older than [`REJECT_AFTER`]).
    pub lapses: u64,
    /// Handshake messages each ordered pair accepted, smallest over all pairs.
    pub min_handshakes: u64,
    /// WireGuard cookie replies (whitepaper §5.4.7, type 3) that reached a member directly.
    pub cookie_replies: u64,
    /// Every node's counters, summed.
    pub counters: Counters,
    /// Events (datagram arrivals and timer rounds) simulated.
    pub steps: u64,
}

/// Runs a party to its end.
pub fn run(p: &Party) -> PartyOutcome {
    let t0 = nat::epoch();
    let mut rng = StdRng::seed_from_u64(p.seed);
    let nats = vec![
        Nat::new(
            NatModel::CONE,
            Ipv4Addr::new(198, 51, 100, 2),
            rng.next_u64(),
        ),
        Nat::new(NatModel::CONE, Ipv4Addr::new(192, 0, 2, 2), rng.next_u64()),
    ];
    let listen = super::listen_addrs();
    let mut players: Vec<Player> = (0..p.behind_nat)
        .map(|i| {
            Player::new(
                i,
                Ipv4Addr::new(192, 168, 1, 2 + i),
                0,
                &listen,
                &mut rng,
                t0,
            )
        })
        .collect();
    players.push(Player::new(
        p.behind_nat,
        Ipv4Addr::new(192, 168, 2, 2),
        1,
        &listen,
        &mut rng,
        t0,
    ));
    for pl in &mut players {
        pl.node.set_probing(false);
    }
    let mut w = World::new(t0, p.wan_delay, nats, players, rng, true);
    let n = w.players.len();
    for i in 0..n {
        w.flush(i);
    }
    let end = t0 + p.duration;
    let mut next_traffic = t0;
    let mut next_sample = t0;
    let mut seq = 0u32;
    let mut out = PartyOutcome {
        connected_after: None,
        max_session_age: Duration::ZERO,
        lapses: 0,
        min_handshakes: 0,
        cookie_replies: 0,
        counters: Counters::default(),
        steps: 0,
    };
    loop {
        let next = w.next_wake(&[next_traffic, next_sample], end);
        if next > end {
            break;
        }
        w.now = w.now.max(next);
        let now = w.now;
        w.step();
        out.steps += 1;
        if now >= next_traffic {
            next_traffic = now + p.traffic_every;
            seq = seq.wrapping_add(1);
            send_traffic(&mut w, seq);
        }
        if now >= next_sample {
            next_sample = now + SAMPLE_EVERY;
            sample(&w, now, t0, &mut out);
        }
    }
    let now = w.now;
    out.cookie_replies = w.cookie_replies;
    out.min_handshakes = w
        .players
        .iter()
        .flat_map(|pl| pl.node.peer_stats(now))
        .map(|s| s.handshakes)
        .min()
        .unwrap_or(0);
    for pl in &w.players {
        let c = pl.node.counters();
        let sum = &mut out.counters;
        sum.dropped_spoofed += c.dropped_spoofed;
        sum.dropped_no_route += c.dropped_no_route;
        sum.dropped_wrong_destination += c.dropped_wrong_destination;
        sum.dropped_invalid += c.dropped_invalid;
        sum.dropped_unknown_peer += c.dropped_unknown_peer;
    }
    out
}

/// One in-tunnel packet from every member to every other (an echo request, which the
/// receiver answers: traffic both ways, as in a game).
fn send_traffic(w: &mut World, seq: u32) {
    let now = w.now;
    let vips: Vec<Ipv4Addr> = w.players.iter().map(|pl| pl.virtual_ip).collect();
    for i in 0..w.players.len() {
        for (j, dst) in vips.iter().enumerate() {
            if i == j {
                continue;
            }
            let ping = Probe {
                kind: ProbeKind::Ping,
                seq,
                sent_ns: 0,
            };
            let bytes = packet::build_probe(vips[i], *dst, ping);
            w.players[i].node.handle_tun_packet(&bytes, now);
        }
        w.flush(i);
    }
}

/// Checks every ordered pair's current session.
fn sample(w: &World, now: Instant, t0: Instant, out: &mut PartyOutcome) {
    let n = w.players.len();
    let ages: Vec<Option<Duration>> = w
        .players
        .iter()
        .flat_map(|pl| pl.node.peer_stats(now))
        .map(|s| s.last_handshake)
        .collect();
    let all = ages.len() == n * (n - 1) && ages.iter().all(Option::is_some);
    if out.connected_after.is_none() {
        if all {
            out.connected_after = Some(now - t0);
        } else if now - t0 > CONNECT_WITHIN {
            // Never connected: every later sample is a lapse.
            out.lapses += (n * (n - 1)) as u64;
        }
        return;
    }
    for age in ages {
        match age {
            Some(a) if a < REJECT_AFTER => out.max_session_age = out.max_session_age.max(a),
            _ => out.lapses += 1,
        }
    }
}
