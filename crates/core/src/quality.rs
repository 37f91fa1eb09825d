//! Per-peer connection quality: latency, jitter, loss, trend and a 0–100 score, from the
//! round trips of the probes the mesh node already sends.
//!
//! How to drive it (the [`crate::Node`] does, once per peer):
//! - [`Quality::on_sent`] for every probe sent on the path in use, [`Quality::on_rtt`] for
//!   every answer to one: the consent probes that keep the path alive are the passive source,
//!   so measuring costs no extra packets while a session is up;
//! - [`Quality::tick`] on every timer tick: it closes each one-second interval, whose median
//!   RTT feeds an exponential moving average (α = 0.3), the trend and the score;
//! - [`Quality::active_probe_due`]: whether to send a burst of [`ACTIVE_BURST`] extra probes
//!   now. Bursts come every [`ACTIVE_GOOD`] while the connection is good and stable and every
//!   [`ACTIVE_DEGRADED`] while it is not (a median of several back-to-back probes needs no
//!   passive traffic, and answers fast when something changed);
//! - [`Quality::path_changed`] when traffic moves to another path: a relay and a direct path
//!   have nothing in common, so the average starts again from the new path's samples.
//!
//! The score (see [`score`]) weighs latency 45 %, loss 35 % and jitter 20 %, each mapped to
//! 0–100 on the scale a game feels: 10 ms and below is perfect, 200 ms is unplayable; 5 %
//! loss is unplayable; 20 ms of jitter is unplayable.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use lanrage_proto::local::Trend;

/// Weight of a new interval's median in the moving average (the seeds' rule:
/// `new = 0.7 · old + 0.3 · measured`).
pub const EMA_ALPHA: f64 = 0.3;
/// Length of one measurement interval: its RTTs are reduced to their median.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Extra probes sent back to back when an active measurement is due.
pub const ACTIVE_BURST: usize = 3;
/// Active bursts while the connection is good and stable...
pub const ACTIVE_GOOD: Duration = Duration::from_secs(60);
/// ...and while it is degraded (the score under [`GOOD_SCORE`], or the trend degrading).
pub const ACTIVE_DEGRADED: Duration = Duration::from_secs(10);
/// Scores at or above this are "good".
pub const GOOD_SCORE: u8 = 70;
/// Loss is counted over this many intervals (30 s): long enough for a few lost probes to
/// show as a percentage, short enough to clear soon after a bad patch ends.
const LOSS_WINDOW: usize = 30;
/// Below this many probes in the loss window, loss is not reported (one lost probe of two
/// is not "50 % loss").
const LOSS_MIN_PROBES: u32 = 8;
/// Interval medians kept for the trend (10 s).
const TREND_WINDOW: usize = 10;
/// The trend compares the newest [`TREND_RECENT`] medians with the older ones of the
/// window; a change smaller than [`TREND_RATIO`] or [`TREND_MIN_MS`] is "stable".
const TREND_RECENT: usize = 3;
const TREND_RATIO: f64 = 0.10;
const TREND_MIN_MS: f64 = 1.0;
/// RTT samples kept for one interval's median (a burst on top of 4 consent probes a
/// second fits easily; anything past this is dropped, not grown).
const MAX_INTERVAL_SAMPLES: usize = 32;

/// One peer's quality estimator. See the module documentation for how to drive it.
#[derive(Debug, Clone)]
pub struct Quality {
    interval_end: Option<Instant>,
    samples: Vec<f64>,
    /// The previous RTT sample, for jitter.
    last_ms: Option<f64>,
    ema_ms: Option<f64>,
    jitter_ms: Option<f64>,
    medians: VecDeque<f64>,
    /// Probes sent and answered per closed interval, newest last.
    loss: VecDeque<(u32, u32)>,
    sent: u32,
    answered: u32,
    next_active: Option<Instant>,
}

/// What a [`Quality`] says now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Moving average of the interval medians, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Mean deviation between consecutive RTTs (RFC 3550 §6.4.1's estimator, on round
    /// trips), in milliseconds.
    pub jitter_ms: Option<f64>,
    /// Probes unanswered over the last 30 s, in percent.
    pub loss_pct: Option<f64>,
    /// 0–100, see [`score`]; `None` until a latency is known.
    pub score: Option<u8>,
    pub trend: Trend,
}

impl Default for Quality {
    fn default() -> Self {
        Self::new()
    }
}

impl Quality {
    pub fn new() -> Self {
        Self {
            interval_end: None,
            samples: Vec::with_capacity(MAX_INTERVAL_SAMPLES),
            last_ms: None,
            ema_ms: None,
            jitter_ms: None,
            medians: VecDeque::with_capacity(TREND_WINDOW),
            loss: VecDeque::with_capacity(LOSS_WINDOW),
            sent: 0,
            answered: 0,
            next_active: None,
        }
    }

    /// A probe went out on the path in use.
    pub fn on_sent(&mut self) {
        self.sent = self.sent.saturating_add(1);
    }

    /// A probe sent on the path in use came back after `rtt`.
    pub fn on_rtt(&mut self, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1e3;
        self.answered = self.answered.saturating_add(1);
        if let Some(last) = self.last_ms {
            let d = (ms - last).abs();
            let j = self.jitter_ms.unwrap_or(0.0);
            // RFC 3550 §6.4.1: J += (|D| − J) / 16.
            self.jitter_ms = Some(j + (d - j) / 16.0);
        }
        self.last_ms = Some(ms);
        if self.samples.len() < MAX_INTERVAL_SAMPLES {
            self.samples.push(ms);
        }
    }

    /// Traffic moved to another path: latency and trend start again from its samples (loss
    /// and jitter carry on: they describe what the player saw).
    pub fn path_changed(&mut self) {
        self.ema_ms = None;
        self.medians.clear();
        self.samples.clear();
        self.last_ms = None;
        self.next_active = None;
    }

    /// Closes the intervals that ended by `now`.
    pub fn tick(&mut self, now: Instant) {
        let end = *self.interval_end.get_or_insert(now + INTERVAL);
        if now < end {
            return;
        }
        // A long pause (a suspended laptop) closes one interval, not thousands.
        self.interval_end = Some(if now.saturating_duration_since(end) > INTERVAL {
            now + INTERVAL
        } else {
            end + INTERVAL
        });
        if self.loss.len() == LOSS_WINDOW {
            self.loss.pop_front();
        }
        self.loss.push_back((self.sent, self.answered));
        self.sent = 0;
        self.answered = 0;
        let Some(median) = median(&mut self.samples) else {
            return;
        };
        self.samples.clear();
        self.ema_ms = Some(match self.ema_ms {
            Some(ema) => (1.0 - EMA_ALPHA) * ema + EMA_ALPHA * median,
            None => median,
        });
        if self.medians.len() == TREND_WINDOW {
            self.medians.pop_front();
        }
        self.medians.push_back(median);
    }

    /// Whether an active burst of [`ACTIVE_BURST`] probes is due; if so, schedules the next.
    pub fn active_probe_due(&mut self, now: Instant) -> bool {
        let due = self.next_active.is_none_or(|t| now >= t);
        if due {
            self.next_active = Some(now + self.active_interval());
        }
        due
    }

    /// The adaptive interval between active bursts (the seeds' rule: good and stable, 60 s;
    /// otherwise 10 s).
    pub fn active_interval(&self) -> Duration {
        let r = self.report();
        match r.score {
            Some(s) if s >= GOOD_SCORE && r.trend != Trend::Degrading => ACTIVE_GOOD,
            _ => ACTIVE_DEGRADED,
        }
    }

    pub fn report(&self) -> Report {
        let loss_pct = {
            let (sent, answered) = self
                .loss
                .iter()
                .fold((0u32, 0u32), |(s, a), (ds, da)| (s + ds, a + da));
            // An answer may land in the interval after its probe's: clamp, and let the
            // window's edges cancel out.
            (sent >= LOSS_MIN_PROBES)
                .then(|| 100.0 * f64::from(sent - answered.min(sent)) / f64::from(sent))
        };
        let latency_ms = self.ema_ms;
        let jitter_ms = self.jitter_ms;
        Report {
            latency_ms,
            jitter_ms,
            loss_pct,
            score: latency_ms.map(|l| score(l, jitter_ms.unwrap_or(0.0), loss_pct.unwrap_or(0.0))),
            trend: self.trend(),
        }
    }

    fn trend(&self) -> Trend {
        if self.medians.len() < TREND_RECENT * 2 {
            return Trend::Stable;
        }
        let split = self.medians.len() - TREND_RECENT;
        let mean = |it: &mut dyn Iterator<Item = &f64>, n: usize| it.sum::<f64>() / n as f64;
        let older = mean(&mut self.medians.iter().take(split), split);
        let recent = mean(&mut self.medians.iter().skip(split), TREND_RECENT);
        let change = recent - older;
        if change.abs() < TREND_MIN_MS || change.abs() < older * TREND_RATIO {
            Trend::Stable
        } else if change > 0.0 {
            Trend::Degrading
        } else {
            Trend::Improving
        }
    }
}

/// The quality score, 0–100:
///
/// ```text
/// latency part = clamp(100 − (latency_ms − 10) / 1.9, 0, 100)   10 ms → 100, 200 ms → 0
/// jitter part  = clamp(100 − 5 · jitter_ms, 0, 100)              20 ms → 0
/// loss part    = clamp(100 − 20 · loss_pct, 0, 100)              5 % → 0
/// score        = round(0.45 · latency + 0.20 · jitter + 0.35 · loss)
/// ```
pub fn score(latency_ms: f64, jitter_ms: f64, loss_pct: f64) -> u8 {
    let part = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 100.0) };
    let latency = part(100.0 - (latency_ms - 10.0) / 1.9);
    let jitter = part(100.0 - 5.0 * jitter_ms);
    let loss = part(100.0 - 20.0 * loss_pct);
    (0.45 * latency + 0.20 * jitter + 0.35 * loss).round() as u8
}

fn median(samples: &mut [f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable_by(f64::total_cmp);
    let n = samples.len();
    Some(if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1e3)
    }

    /// Feeds `per_second` answered probes of `rtt` ms a second for `secs` seconds.
    fn run(q: &mut Quality, t: &mut Instant, secs: u32, rtts: &[f64], answered: bool) {
        for _ in 0..secs {
            for &r in rtts {
                q.on_sent();
                if answered {
                    q.on_rtt(ms(r));
                }
            }
            *t += INTERVAL;
            q.tick(*t);
        }
    }

    #[test]
    fn median_of_an_interval_ignores_one_outlier_and_feeds_the_ema() {
        let mut q = Quality::new();
        let mut t = start();
        q.tick(t);
        run(&mut q, &mut t, 1, &[20.0, 21.0, 500.0, 19.0, 20.0], true);
        assert_eq!(q.report().latency_ms, Some(20.0));
        // 0.7 · 20 + 0.3 · 40 = 26.
        run(&mut q, &mut t, 1, &[40.0, 40.0, 40.0], true);
        let l = q.report().latency_ms.expect("latency");
        assert!((l - 26.0).abs() < 1e-9, "{l}");
    }

    #[test]
    fn jitter_follows_rfc3550_and_is_zero_for_a_steady_path() {
        let mut q = Quality::new();
        let mut t = start();
        q.tick(t);
        run(&mut q, &mut t, 5, &[10.0, 10.0, 10.0, 10.0], true);
        assert_eq!(q.report().jitter_ms, Some(0.0));
        let mut q = Quality::new();
        // Alternating 10/20: |D| = 10 each time; J converges on 10.
        run(&mut q, &mut t, 60, &[10.0, 20.0, 10.0, 20.0], true);
        let j = q.report().jitter_ms.expect("jitter");
        assert!((j - 10.0).abs() < 0.1, "{j}");
    }

    #[test]
    fn loss_counts_unanswered_probes_over_the_window() {
        let mut q = Quality::new();
        let mut t = start();
        q.tick(t);
        // Too few probes: no figure yet.
        run(&mut q, &mut t, 1, &[10.0, 10.0], true);
        assert_eq!(q.report().loss_pct, None);
        run(&mut q, &mut t, 29, &[10.0, 10.0, 10.0, 10.0], true);
        assert_eq!(q.report().loss_pct, Some(0.0));
        // 3 s of silence: 12 of the window's 120 probes lost.
        run(&mut q, &mut t, 3, &[10.0, 10.0, 10.0, 10.0], false);
        let loss = q.report().loss_pct.expect("loss");
        assert!((loss - 10.0).abs() < 1e-9, "{loss}");
        // The window forgets the bad patch after 30 s.
        run(&mut q, &mut t, 30, &[10.0, 10.0, 10.0, 10.0], true);
        assert_eq!(q.report().loss_pct, Some(0.0));
    }

    #[test]
    fn trend_sees_a_path_getting_worse_then_better_then_settling() {
        let mut q = Quality::new();
        let mut t = start();
        q.tick(t);
        run(&mut q, &mut t, 10, &[20.0; 4], true);
        assert_eq!(q.report().trend, Trend::Stable);
        run(&mut q, &mut t, 3, &[60.0; 4], true);
        assert_eq!(q.report().trend, Trend::Degrading);
        run(&mut q, &mut t, 7, &[60.0; 4], true);
        run(&mut q, &mut t, 3, &[20.0; 4], true);
        assert_eq!(q.report().trend, Trend::Improving);
        run(&mut q, &mut t, 10, &[20.0; 4], true);
        assert_eq!(q.report().trend, Trend::Stable);
        // Small wobble is not a trend.
        run(&mut q, &mut t, 3, &[20.5; 4], true);
        assert_eq!(q.report().trend, Trend::Stable);
    }

    #[test]
    fn active_probes_adapt_between_sixty_and_ten_seconds() {
        let mut q = Quality::new();
        let mut t = start();
        q.tick(t);
        // Nothing known: measure now, and again soon.
        assert!(q.active_probe_due(t));
        assert!(!q.active_probe_due(t + Duration::from_secs(9)));
        assert!(q.active_probe_due(t + ACTIVE_DEGRADED));
        run(&mut q, &mut t, 15, &[12.0; 4], true);
        assert_eq!(q.active_interval(), ACTIVE_GOOD);
        let next = t + ACTIVE_DEGRADED;
        assert!(q.active_probe_due(next));
        assert!(!q.active_probe_due(next + Duration::from_secs(59)));
        assert!(q.active_probe_due(next + ACTIVE_GOOD));
        // 150 ms: degraded; back to every 10 s.
        run(&mut q, &mut t, 15, &[150.0; 4], true);
        assert_eq!(q.active_interval(), ACTIVE_DEGRADED);
        // Good latency but 25 % loss: degraded too.
        run(&mut q, &mut t, 30, &[12.0; 4], true);
        for _ in 0..30 {
            run(&mut q, &mut t, 1, &[12.0; 3], true);
            q.on_sent();
        }
        assert!(q.report().score.expect("score") < GOOD_SCORE);
        assert_eq!(q.active_interval(), ACTIVE_DEGRADED);
    }

    #[test]
    fn score_follows_the_documented_formula() {
        assert_eq!(score(5.0, 0.0, 0.0), 100);
        assert_eq!(score(200.0, 20.0, 5.0), 0);
        // latency 50 ms → 78.947…; jitter 2 → 90; loss 1 % → 80: 35.53 + 18 + 28 = 81.5.
        assert_eq!(score(50.0, 2.0, 1.0), 82);
        assert_eq!(score(f64::NAN, 0.0, 0.0), 55);
        assert!(score(30.0, 1.0, 0.0) > score(80.0, 1.0, 0.0));
        assert!(score(30.0, 1.0, 0.0) > score(30.0, 1.0, 2.0));
    }

    #[test]
    fn a_path_change_restarts_the_average_and_a_pause_closes_one_interval() {
        let mut q = Quality::new();
        let mut t = start();
        q.tick(t);
        run(&mut q, &mut t, 5, &[80.0; 4], true);
        q.path_changed();
        assert_eq!(q.report().latency_ms, None);
        run(&mut q, &mut t, 1, &[8.0; 4], true);
        assert_eq!(q.report().latency_ms, Some(8.0));
        let before = q.loss.len();
        t += Duration::from_secs(3600);
        q.tick(t);
        assert_eq!(q.loss.len(), (before + 1).min(LOSS_WINDOW));
    }
}
