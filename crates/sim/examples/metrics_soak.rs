//! Metric history soak (run by `benches/metrics_soak.sh`): PEERS peers × 6 series, one
//! sample per series per simulated second on a virtual clock (no sleeping), for HOURS
//! simulated hours. At checkpoints (30 min, 1 h, 6 h, 24 h, 48 h) it prints the store's
//! memory against the fixed bound (series × `Series::MAX_BYTES`), the process RSS and the
//! latency of window queries; then half the peers leave and their series expire.
//! Exits 1 if the bound or a tier's cap is ever exceeded.
//!
//! Env: PEERS=64 HOURS=48 QUERIES=1000 POINTS=300 (chart points per query).

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use lanrage_core::series::{Resolution, Series, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const METRICS: [&str; 6] = [
    "latency_ms",
    "jitter_ms",
    "loss_pct",
    "quality",
    "rx_bytes",
    "tx_bytes",
];
/// 2026-01-01T00:00:00Z: the virtual clock's start, on an hour boundary.
const T0: u64 = 1_767_225_600;
/// How long a departed peer's series live on before `expire` removes them.
const TTL_SECS: u64 = 300;
const MIB: f64 = 1024.0 * 1024.0;

type Key = (u32, &'static str);

fn main() -> ExitCode {
    let peers = env_or("PEERS", 64);
    let hours = env_or("HOURS", 48);
    let queries = env_or("QUERIES", 1_000).max(1);
    let points = usize::try_from(env_or("POINTS", 300)).unwrap_or(usize::MAX);
    let keys: Vec<Key> = (0..u32::try_from(peers).unwrap_or(u32::MAX))
        .flat_map(|p| METRICS.map(|m| (p, m)))
        .collect();
    let bound = keys.len() * Series::MAX_BYTES;
    let end = hours * 3_600;
    let mut checkpoints: Vec<u64> = [1_800, 3_600, 6 * 3_600, 24 * 3_600, 48 * 3_600]
        .into_iter()
        .filter(|&c| c < end)
        .collect();
    checkpoints.push(end);

    println!(
        "metrics soak: {peers} peers x {} series = {} series, 1 sample/s each, virtual clock, {hours} h simulated",
        METRICS.len(),
        keys.len()
    );
    println!(
        "bound: {} series x Series::MAX_BYTES ({} B) = {bound} B ({:.1} MiB); RSS before the store: {:.1} MiB",
        keys.len(),
        Series::MAX_BYTES,
        bound as f64 / MIB,
        rss_bytes() as f64 / MIB
    );
    println!(
        "queries: {queries} per window, round-robin over all series, at most {points} points each"
    );
    println!();
    println!(
        "{:>9} {:>6} {:>14} {:>5} {:>8}  {:>20}  {:>20}  {:>9} {:>7}",
        "sim time",
        "series",
        "store bytes",
        "bound",
        "RSS MiB",
        "1h query us med/max",
        "24h query us med/max",
        "persisted",
        "push ns"
    );

    let mut store: Store<Key> = Store::new();
    let mut rng = StdRng::seed_from_u64(1);
    let mut persisted = 0_usize;
    let mut pushing = Duration::ZERO;
    let mut pushes = 0_u64;
    let mut held = true;
    let mut at = 0;
    for &checkpoint in &checkpoints {
        let t = wall();
        while at < checkpoint {
            for key in &keys {
                persisted += store.push(key, T0 + at, sample(key.1, &mut rng)).len();
            }
            at += 1;
        }
        pushing += t.elapsed();
        pushes = at * keys.len() as u64;
        let now = T0 + at - 1;
        let bytes = store.memory_bytes();
        let caps = caps_hold(&store, &keys);
        held &= caps && bytes <= bound;
        let hour = time_queries(&store, &keys, now, 3_600, points, queries);
        let day = time_queries(&store, &keys, now, 86_400, points, queries);
        println!(
            "{:>9} {:>6} {:>14} {:>5} {:>8.1}  {:>20}  {:>20}  {:>9} {:>7.0}",
            hms(at),
            store.len(),
            bytes,
            if caps && bytes <= bound { "ok" } else { "OVER" },
            rss_bytes() as f64 / MIB,
            hour,
            day,
            persisted,
            pushing.as_nanos() as f64 / pushes as f64
        );
    }

    // Half the peers leave; the rest keep sending until the departed ones expire.
    let stay: Vec<Key> = keys
        .iter()
        .copied()
        .filter(|(p, _)| u64::from(*p) < peers / 2)
        .collect();
    for _ in 0..TTL_SECS {
        for key in &stay {
            store.push(key, T0 + at, sample(key.1, &mut rng));
        }
        at += 1;
    }
    let gone = store.expire(T0 + at, TTL_SECS);
    let bytes = store.memory_bytes();
    held &= bytes <= stay.len() * Series::MAX_BYTES;
    println!();
    println!(
        "expiry: peers {}..{} silent for {TTL_SECS} s, expire removed {} series; {} left, store {} B ({:.1} MiB), RSS {:.1} MiB",
        peers / 2,
        peers,
        gone.len(),
        store.len(),
        bytes,
        bytes as f64 / MIB,
        rss_bytes() as f64 / MIB
    );
    println!(
        "pushed {pushes} samples in {:.2} s of wall time ({} simulated); bound {}",
        pushing.as_secs_f64(),
        hms(end),
        if held { "held" } else { "EXCEEDED" }
    );
    if held {
        ExitCode::SUCCESS
    } else {
        eprintln!("metrics_soak: memory bound exceeded");
        ExitCode::FAILURE
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A plausible value for the metric; latency is now and then missing (a lost probe).
fn sample(metric: &str, rng: &mut StdRng) -> f64 {
    match metric {
        "latency_ms" if rng.random_bool(0.001) => f64::NAN,
        "latency_ms" => 20.0 + rng.random_range(0.0..15.0),
        "jitter_ms" => rng.random_range(0.0..5.0),
        "loss_pct" => {
            if rng.random_bool(0.05) {
                rng.random_range(0.0..3.0)
            } else {
                0.0
            }
        }
        "quality" => rng.random_range(60.0..100.0),
        _ => rng.random_range(1e3..2e6),
    }
}

/// No series holds more closed buckets than its tier keeps.
fn caps_hold(store: &Store<Key>, keys: &[Key]) -> bool {
    keys.iter().all(|k| {
        store
            .get(k)
            .is_some_and(|s| Resolution::ALL.iter().all(|&r| s.held(r) <= r.kept()))
    })
}

/// Median and maximum wall time of `n` queries of `window` seconds, as "med/max" in µs.
fn time_queries(
    store: &Store<Key>,
    keys: &[Key],
    now: u64,
    window: u64,
    points: usize,
    n: u64,
) -> String {
    let mut took: Vec<Duration> = keys
        .iter()
        .cycle()
        .take(usize::try_from(n).unwrap_or(usize::MAX))
        .map(|key| {
            let t = wall();
            black_box(store.query(key, now, window, points));
            t.elapsed()
        })
        .collect();
    took.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    format!(
        "{:.1}/{:.1}",
        us(took[took.len() / 2]),
        us(took[took.len() - 1])
    )
}

/// Resident set size from /proc/self/statm (pages) × the kernel's page size.
fn rss_bytes() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

/// From /proc/self/smaps ("KernelPageSize: 4 kB"), so no libc call (and no unsafe) is needed.
fn page_size() -> u64 {
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(4_096, |kib| kib * 1_024)
}

fn hms(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3_600, secs / 60 % 60, secs % 60)
}

/// Timing the simulation itself is what this example is for; the samples stay on the
/// virtual clock.
#[allow(clippy::disallowed_methods)]
fn wall() -> Instant {
    Instant::now()
}
