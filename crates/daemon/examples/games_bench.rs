//! Game detection costs, printed (run by `benches/games.sh`):
//! - loading and validating every shipped profile, and building the match index;
//! - one scan (processes, sockets, matching) with PROCS extra processes running, as CPU
//!   time of the scanning thread, and what that is as a share of one core at the default
//!   5 s interval.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lanrage_core::games::{Detector, Index};
use lanrage_daemon::games::{Scanner, Sources, load};

fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).expect("clock");
    Duration::new(
        u64::try_from(t.tv_sec()).unwrap_or(0),
        u32::try_from(t.tv_nsec()).unwrap_or(0),
    )
}

struct Kids(Vec<Child>);
impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn main() {
    let procs: usize = std::env::var("PROCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rounds: u32 = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);

    let mut best = Duration::MAX;
    let mut count = 0;
    for _ in 0..rounds {
        let t0 = Instant::now();
        let (profiles, errors) = load(&Sources::default());
        assert!(errors.is_empty(), "{errors:?}");
        count = profiles.len();
        let index = Index::new(profiles);
        std::hint::black_box(&index);
        best = best.min(t0.elapsed());
    }
    println!(
        "profiles: {count} loaded, validated and indexed in {:.2} ms (best of {rounds})",
        best.as_secs_f64() * 1e3
    );

    let kids = Kids(
        (0..procs)
            .map(|_| {
                Command::new("sleep")
                    .arg("300")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("spawn sleep")
            })
            .collect(),
    );
    let (profiles, _) = load(&Sources::default());
    let mut detector = Detector::new(Index::new(profiles));
    let mut scanner = Scanner::new();
    // The first scan reads every command line and fills the caches; the daemon does it once.
    let c0 = thread_cpu();
    let obs = scanner.observe(detector.index());
    detector.scan(&obs);
    let first = thread_cpu() - c0;
    let c0 = thread_cpu();
    let mut seen = 0;
    for _ in 0..rounds {
        let obs = scanner.observe(detector.index());
        seen = obs.processes.len();
        std::hint::black_box(detector.scan(&obs));
    }
    let per = (thread_cpu() - c0) / rounds;
    drop(kids);
    println!(
        "scan: {seen} processes, first scan {:.2} ms CPU, then {:.2} ms CPU per scan (mean of {rounds})",
        first.as_secs_f64() * 1e3,
        per.as_secs_f64() * 1e3
    );
    println!(
        "cost at the default 5 s interval: {:.3} % of one core",
        per.as_secs_f64() / 5.0 * 100.0
    );
}
