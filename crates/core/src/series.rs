//! Bounded metric history: a [`Series`] keeps one metric's samples as 1 s, 1 min and 1 h
//! buckets in fixed-capacity rings, so it never holds more than [`Series::MAX_BYTES`] however
//! long the daemon runs; a [`Store`] keys series (per peer and metric) and expires those of
//! peers that left.
//!
//! Sans-IO: time is `ts`/`now`, Unix seconds passed in by the caller. The caller persists the
//! minute and hour buckets that [`Series::push`] hands back as [`Closed`] (the daemon keeps
//! them in its SQLite) and gives them back to [`Series::restore`] after a restart.
//!
//! Written by hand: the metrics crates either keep no history (counters, histograms of
//! "now") or own the storage and the clock (round-robin databases); what is needed here is
//! three small rings of min/max/sum buckets with no IO.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The bound: no tier of a series ever holds more points than this.
pub const MAX_POINTS: usize = 10_000;
/// 1 s buckets kept: one hour, so the 5 min and 1 h views are at full resolution.
pub const SECONDS_KEPT: usize = 3_600;
/// 1 min buckets kept: 24 hours, the day view at one point per minute.
pub const MINUTES_KEPT: usize = 1_440;
/// 1 h buckets kept: 30 days, the longest view; nothing older is kept in memory.
pub const HOURS_KEPT: usize = 720;

const _: () = assert!(
    SECONDS_KEPT <= MAX_POINTS && MINUTES_KEPT <= MAX_POINTS && HOURS_KEPT <= MAX_POINTS,
    "a tier exceeds the per-series point bound"
);

/// Samples aggregated over one period: count, sum, min and max merge exactly, so a coarser
/// bucket or a chart point made of several buckets has the true mean and extremes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Unix seconds at which the period starts, a multiple of its resolution.
    pub start: u64,
    /// Samples in the period; at least 1 in every bucket this module makes.
    pub count: u32,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Bucket {
    /// A bucket of one sample.
    pub fn new(start: u64, value: f64) -> Self {
        Self {
            start,
            count: 1,
            sum: value,
            min: value,
            max: value,
        }
    }

    /// The mean of the samples; NaN for an empty bucket, which this module never makes.
    pub fn mean(&self) -> f64 {
        self.sum / f64::from(self.count)
    }

    /// Adds `other`'s samples to this bucket, which keeps its own `start`: merging always
    /// goes into the later bucket of a ring, so starts stay in order.
    pub fn merge(&mut self, other: &Bucket) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    fn add(&mut self, value: f64) {
        self.merge(&Bucket::new(self.start, value));
    }

    /// What storage may hand back: rows are outside input, so a corrupt one is skipped
    /// rather than trusted.
    fn is_well_formed(&self, resolution: Resolution) -> bool {
        self.count > 0
            && self.sum.is_finite()
            && self.min.is_finite()
            && self.max.is_finite()
            && self.min <= self.max
            && self.start.is_multiple_of(resolution.secs())
    }
}

/// The width of a tier's buckets. Stored as `"1s"`, `"1m"`, `"1h"` (serde and
/// [`Resolution::as_str`] agree, and never change: they are in the daemon's database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resolution {
    #[serde(rename = "1s")]
    Second,
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
}

impl Resolution {
    /// Finest first.
    pub const ALL: [Resolution; 3] = [Resolution::Second, Resolution::Minute, Resolution::Hour];

    /// The bucket width in seconds.
    pub const fn secs(self) -> u64 {
        match self {
            Resolution::Second => 1,
            Resolution::Minute => 60,
            Resolution::Hour => 3_600,
        }
    }

    /// The storage name: `"1s"`, `"1m"` or `"1h"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Resolution::Second => "1s",
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
        }
    }

    /// How many closed buckets of this width a series keeps.
    pub const fn kept(self) -> usize {
        match self {
            Resolution::Second => SECONDS_KEPT,
            Resolution::Minute => MINUTES_KEPT,
            Resolution::Hour => HOURS_KEPT,
        }
    }

    /// The finest tier whose kept buckets span `window_secs`: up to 1 h → 1 s, up to 24 h
    /// → 1 min, longer → 1 h.
    pub const fn for_window(window_secs: u64) -> Self {
        if window_secs <= SECONDS_KEPT as u64 * Resolution::Second.secs() {
            Resolution::Second
        } else if window_secs <= MINUTES_KEPT as u64 * Resolution::Minute.secs() {
            Resolution::Minute
        } else {
            Resolution::Hour
        }
    }

    const fn index(self) -> usize {
        match self {
            Resolution::Second => 0,
            Resolution::Minute => 1,
            Resolution::Hour => 2,
        }
    }

    fn align(self, ts: u64) -> u64 {
        ts - ts % self.secs()
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Resolution {
    type Err = ParseResolutionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Resolution::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ParseResolutionError(s.to_owned()))
    }
}

/// A stored resolution name that is not `1s`, `1m` or `1h`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown resolution {0:?} (expected 1s, 1m or 1h)")]
pub struct ParseResolutionError(String);

/// A minute or hour bucket that has just closed: what the shell persists, as an upsert on
/// (series, resolution, `bucket.start`). 1 s buckets are not handed out: one row per series
/// per second is more writing than an hour of fine history is worth across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    pub resolution: Resolution,
    pub bucket: Bucket,
}

/// The answer to [`Series::query`]: chart points and a summary of the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// The tier the points were read from.
    pub resolution: Resolution,
    /// The width of each point: `resolution.secs()`, or a multiple of it when points were
    /// merged down to `max_points`.
    pub step_secs: u64,
    /// Oldest first; periods without samples have no point (a chart draws a gap).
    pub points: Vec<Bucket>,
    /// Count, sum, min and max over every bucket in the window (before merging for the
    /// chart); `start` is the oldest bucket's. `None` if the window holds no samples.
    pub summary: Option<Bucket>,
}

/// One metric's history in three tiers of fixed capacity: [`SECONDS_KEPT`] 1 s buckets,
/// [`MINUTES_KEPT`] 1 min buckets and [`HOURS_KEPT`] 1 h buckets, plus the one open bucket
/// of each tier. Every sample goes into all three open buckets, so a coarse bucket is exact
/// (not an average of averages). When a period ends, its bucket closes into its ring; a full
/// ring drops its oldest bucket. The rings are allocated once, in [`Series::new`], and never
/// grow, so [`Series::memory_bytes`] is [`Series::MAX_BYTES`] from the first sample on.
///
/// How to drive it:
/// - at startup, before the first sample, [`restore`](Series::restore) the minute and hour
///   buckets kept in storage;
/// - [`push`](Series::push) every sample with its time, and persist each [`Closed`] it
///   returns (an empty `Vec` does not allocate, so the usual push allocates nothing);
/// - on shutdown, persist [`open`](Series::open) minute and hour buckets too if the partial
///   period matters: after the restart the period's new samples are merged into the
///   restored bucket when it closes, and the `Closed` then carries the whole period;
/// - [`query`](Series::query) for charts and summaries.
///
/// Time only moves forward here. A sample stamped before the open 1 s bucket (the wall clock
/// stepped back, or a late sample) is merged into the open buckets, not dropped: the value
/// was measured and summaries should count it, only its stamp is off. After a large step
/// back, samples pile into one bucket until the clock passes it again.
#[derive(Debug)]
pub struct Series {
    /// Indexed by [`Resolution::index`].
    tiers: [Tier; 3],
}

impl Series {
    /// The memory one series uses, all rings allocated: the struct plus
    /// (3 600 + 1 440 + 720) buckets of 40 bytes.
    pub const MAX_BYTES: usize =
        size_of::<Series>() + (SECONDS_KEPT + MINUTES_KEPT + HOURS_KEPT) * size_of::<Bucket>();

    /// An empty series with its rings allocated at full capacity.
    pub fn new() -> Self {
        Self {
            tiers: Resolution::ALL.map(Tier::new),
        }
    }

    /// Adds a sample taken at `ts`; NaN and infinite values are ignored (a metric with no
    /// measurement this second, like latency under total loss, has no point rather than a
    /// poisoned mean). Returns the minute and hour buckets this sample closed, at most one
    /// each, for the shell to persist.
    pub fn push(&mut self, ts: u64, value: f64) -> Vec<Closed> {
        let mut closed = Vec::new();
        if !value.is_finite() {
            return closed;
        }
        for tier in &mut self.tiers {
            if let Some(bucket) = tier.add(ts, value)
                && tier.resolution != Resolution::Second
            {
                closed.push(Closed {
                    resolution: tier.resolution,
                    bucket,
                });
            }
        }
        closed
    }

    /// Loads persisted buckets of one tier, in any order. Buckets already held win over
    /// restored ones with the same start, and only the newest [`Resolution::kept`] stay.
    /// Returns how many of `buckets` were well formed; the rest (empty, non-finite,
    /// min > max, start not a multiple of the resolution) are skipped.
    pub fn restore(
        &mut self,
        resolution: Resolution,
        buckets: impl IntoIterator<Item = Bucket>,
    ) -> usize {
        let tier = &mut self.tiers[resolution.index()];
        let mut all: Vec<Bucket> = buckets
            .into_iter()
            .filter(|b| b.is_well_formed(resolution))
            .collect();
        let well_formed = all.len();
        // Held buckets go last so that, after the stable sort, they are the ones kept.
        all.extend(tier.closed.drain(..));
        all.sort_by_key(|b| b.start);
        let mut unique: Vec<Bucket> = Vec::with_capacity(all.len());
        for b in all {
            match unique.last_mut() {
                Some(last) if last.start == b.start => *last = b,
                _ => unique.push(b),
            }
        }
        let skip = unique.len().saturating_sub(resolution.kept());
        // At most `kept` buckets into a ring of that capacity: no reallocation.
        tier.closed.extend(unique.into_iter().skip(skip));
        well_formed
    }

    /// The buckets that start within the last `window_secs` before `now` (those with
    /// `start > now - window_secs`, and any stamped after `now` by a clock stepped back),
    /// from the finest tier that spans the window (see
    /// [`Resolution::for_window`]), the open bucket included. When there are more than
    /// `max_points` (at least 1), adjacent points are merged into groups aligned to
    /// multiples of `step_secs`, so a chart's points do not shift between refreshes.
    /// Costs O(points in the window).
    pub fn query(&self, now: u64, window_secs: u64, max_points: usize) -> Window {
        let resolution = Resolution::for_window(window_secs);
        let tier = &self.tiers[resolution.index()];
        let inside = |b: &Bucket| b.start.saturating_add(window_secs) > now;
        // Rings are in start order: walk back from the newest while inside.
        let n = tier.closed.iter().rev().take_while(|b| inside(b)).count();
        let mut points = Vec::with_capacity(n + 1);
        points.extend(tier.closed.range(tier.closed.len() - n..).copied());
        if let Some(open) = tier.open.filter(inside) {
            append_in_order(&mut points, open);
        }
        let summary = points.iter().copied().reduce(|mut all, b| {
            all.merge(&b);
            all
        });
        let (points, step_secs) = merge_down(points, resolution, max_points);
        Window {
            resolution,
            step_secs,
            points,
            summary,
        }
    }

    /// The bucket of the period in progress at `resolution`, if any sample reached it.
    pub fn open(&self, resolution: Resolution) -> Option<Bucket> {
        self.tiers[resolution.index()].open
    }

    /// How many closed buckets the series holds at `resolution` (never more than
    /// [`Resolution::kept`]).
    pub fn held(&self, resolution: Resolution) -> usize {
        self.tiers[resolution.index()].closed.len()
    }

    /// Heap bytes of the rings, from their capacities, plus the struct itself.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self
                .tiers
                .iter()
                .map(|t| t.closed.capacity() * size_of::<Bucket>())
                .sum::<usize>()
    }

    fn newest_closed(&self, resolution: Resolution) -> Option<u64> {
        self.tiers[resolution.index()]
            .closed
            .back()
            .map(|b| b.start)
    }
}

impl Default for Series {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for Series {
    fn clone(&self) -> Self {
        Self {
            tiers: self.tiers.each_ref().map(Tier::clone_full),
        }
    }
}

/// Series by key (a peer and a metric, say), each stamped with the time of its last push so
/// that [`Store::expire`] can drop the series of peers that left. Memory is
/// [`Series::MAX_BYTES`] per series; the number of series is the caller's (peers × metrics).
#[derive(Debug, Clone)]
pub struct Store<K> {
    series: BTreeMap<K, (Series, u64)>,
}

impl<K: Ord + Clone> Store<K> {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            series: BTreeMap::new(),
        }
    }

    /// [`Series::push`] into `key`'s series, created on first use. Every push, even of a
    /// NaN, counts as the key being seen: the peer is there, its metric just has no value.
    pub fn push(&mut self, key: &K, ts: u64, value: f64) -> Vec<Closed> {
        // Looked up before inserting so that the usual push does not clone the key.
        if let Some((series, seen)) = self.series.get_mut(key) {
            *seen = ts;
            return series.push(ts, value);
        }
        let mut series = Series::new();
        let closed = series.push(ts, value);
        self.series.insert(key.clone(), (series, ts));
        closed
    }

    /// [`Series::query`] on `key`'s series; `None` if there is no such series.
    pub fn query(&self, key: &K, now: u64, window_secs: u64, max_points: usize) -> Option<Window> {
        self.series
            .get(key)
            .map(|(series, _)| series.query(now, window_secs, max_points))
    }

    /// [`Series::restore`] into `key`'s series, created if any bucket is well formed. A
    /// created series counts as seen at the newest restored bucket's start, so history of a
    /// peer that never comes back expires like a live series would.
    pub fn restore(
        &mut self,
        key: &K,
        resolution: Resolution,
        buckets: impl IntoIterator<Item = Bucket>,
    ) -> usize {
        if let Some((series, seen)) = self.series.get_mut(key) {
            let n = series.restore(resolution, buckets);
            if let Some(newest) = series.newest_closed(resolution) {
                *seen = (*seen).max(newest);
            }
            return n;
        }
        let mut series = Series::new();
        let n = series.restore(resolution, buckets);
        if let Some(newest) = series.newest_closed(resolution) {
            self.series.insert(key.clone(), (series, newest));
        }
        n
    }

    /// Removes the series not pushed to for `ttl_secs` or longer before `now` (peers that
    /// left), and returns their keys so the shell can delete their stored buckets too.
    pub fn expire(&mut self, now: u64, ttl_secs: u64) -> Vec<K> {
        let mut gone = Vec::new();
        self.series.retain(|key, (_, seen)| {
            let keep = now.saturating_sub(*seen) < ttl_secs;
            if !keep {
                gone.push(key.clone());
            }
            keep
        });
        gone
    }

    /// `key`'s series, if there is one.
    pub fn get(&self, key: &K) -> Option<&Series> {
        self.series.get(key).map(|(series, _)| series)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.series.keys()
    }

    /// How many series there are.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether there are no series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The sum of [`Series::memory_bytes`]: at most `len() × Series::MAX_BYTES`. The map's
    /// own nodes (keys, last-seen stamps: tens of bytes per series against ~225 KiB) are
    /// not counted.
    pub fn memory_bytes(&self) -> usize {
        self.series
            .values()
            .map(|(series, _)| series.memory_bytes())
            .sum()
    }
}

impl<K: Ord + Clone> Default for Store<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// One resolution's closed ring and open bucket.
#[derive(Debug)]
struct Tier {
    resolution: Resolution,
    /// In start order, at most `resolution.kept()` long, capacity reserved once.
    closed: VecDeque<Bucket>,
    open: Option<Bucket>,
}

impl Tier {
    fn new(resolution: Resolution) -> Self {
        Self {
            resolution,
            closed: VecDeque::with_capacity(resolution.kept()),
            open: None,
        }
    }

    /// Adds a sample to the open bucket, first closing it if `ts` is in a later period;
    /// returns the closed bucket as it now stands in the ring.
    fn add(&mut self, ts: u64, value: f64) -> Option<Bucket> {
        let start = self.resolution.align(ts);
        if let Some(open) = self.open.as_mut()
            && start <= open.start
        {
            // Same period, or an older one: merged (see `Series`).
            open.add(value);
            return None;
        }
        let done = self.open.replace(Bucket::new(start, value))?;
        Some(self.append(done))
    }

    /// Closes `b` into the ring. A bucket not after the newest one (a restored partial
    /// period, or a clock step back across a restart) is merged into it, so the ring stays
    /// in order and the returned bucket is the whole period to persist.
    fn append(&mut self, b: Bucket) -> Bucket {
        if let Some(last) = self.closed.back_mut()
            && last.start >= b.start
        {
            last.merge(&b);
            return *last;
        }
        if self.closed.len() == self.resolution.kept() {
            self.closed.pop_front();
        }
        self.closed.push_back(b);
        b
    }

    /// A derived `Clone` would allocate only `len()` slots, and the clone's ring would then
    /// reallocate (doubling, past its cap's allocation) as it fills.
    fn clone_full(&self) -> Self {
        let mut closed = VecDeque::with_capacity(self.resolution.kept());
        closed.extend(self.closed.iter().copied());
        Self {
            resolution: self.resolution,
            closed,
            open: self.open,
        }
    }
}

/// Pushes `b` after `points`, merging it into the last point if that one does not start
/// before it (a ring's newest bucket and the open one can share a period after a restore).
fn append_in_order(points: &mut Vec<Bucket>, b: Bucket) {
    match points.last_mut() {
        Some(last) if last.start >= b.start => last.merge(&b),
        _ => points.push(b),
    }
}

/// Merges adjacent points into groups `step` wide, aligned to multiples of `step`, with the
/// smallest step that leaves at most `max_points`; returns the points and their width.
fn merge_down(
    points: Vec<Bucket>,
    resolution: Resolution,
    max_points: usize,
) -> (Vec<Bucket>, u64) {
    let width = resolution.secs();
    let max = max_points.max(1);
    let (Some(first), Some(last)) = (points.first().copied(), points.last().copied()) else {
        return (points, width);
    };
    if points.len() <= max {
        return (points, width);
    }
    // Periods from the first point to the last, gaps included.
    let slots = (last.start - first.start) / width + 1;
    if max == 1 {
        let mut all = first;
        for b in &points[1..] {
            all.merge(b);
        }
        return (vec![all], slots.saturating_mul(width));
    }
    // Aligned groups of `per` slots over `slots` slots number at most
    // floor((slots - 1) / per) + 2, which is <= max when per >= slots / (max - 1).
    let per = slots.div_ceil(u64::try_from(max - 1).unwrap_or(u64::MAX));
    let step = per.saturating_mul(width);
    let mut merged: Vec<Bucket> = Vec::with_capacity(max);
    for b in points {
        let start = b.start - b.start % step;
        match merged.last_mut() {
            Some(group) if group.start == start => group.merge(&b),
            _ => merged.push(Bucket { start, ..b }),
        }
    }
    (merged, step)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// An hour boundary, so tier boundaries in the tests are easy to reason about.
    const T0: u64 = 1_700_000_000 - 1_700_000_000 % 3_600;

    /// Count, sum, min and max of the values whose stamp satisfies `keep`, computed directly.
    fn brute(samples: &[(u64, f64)], keep: impl Fn(u64) -> bool) -> Option<(u32, f64, f64, f64)> {
        let mut out: Option<(u32, f64, f64, f64)> = None;
        for &(_, v) in samples.iter().filter(|(ts, _)| keep(*ts)) {
            out = Some(match out {
                None => (1, v, v, v),
                Some((n, s, lo, hi)) => (n + 1, s + v, lo.min(v), hi.max(v)),
            });
        }
        out
    }

    fn assert_bucket(b: &Bucket, expect: Option<(u32, f64, f64, f64)>) {
        let (count, sum, min, max) = expect.expect("samples expected in this bucket");
        assert_eq!(b.count, count, "count of {b:?}");
        assert_eq!(b.min, min, "min of {b:?}");
        assert_eq!(b.max, max, "max of {b:?}");
        let mean = sum / f64::from(count);
        assert!(
            (b.mean() - mean).abs() <= 1e-9 * mean.abs().max(1.0),
            "mean of {b:?}: want {mean}"
        );
    }

    /// One sample a second from `from` for `secs` seconds, values from a seeded RNG.
    fn fill(
        series: &mut Series,
        from: u64,
        secs: u64,
        seed: u64,
    ) -> (Vec<(u64, f64)>, Vec<Closed>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut samples = Vec::new();
        let mut closed = Vec::new();
        for ts in from..from + secs {
            let v = rng.random_range(0.0..200.0);
            samples.push((ts, v));
            closed.extend(series.push(ts, v));
        }
        (samples, closed)
    }

    #[test]
    fn caps_hold_for_ten_days_of_seconds() {
        let mut s = Series::new();
        let start_bytes = s.memory_bytes();
        assert_eq!(start_bytes, Series::MAX_BYTES);
        for ts in T0..T0 + 10 * 86_400 {
            s.push(ts, (ts % 97) as f64);
            if ts.is_multiple_of(3_600) {
                for r in Resolution::ALL {
                    assert!(s.held(r) <= r.kept(), "{r} over its cap");
                }
                assert_eq!(s.memory_bytes(), Series::MAX_BYTES, "a ring grew");
            }
        }
        assert_eq!(s.held(Resolution::Second), SECONDS_KEPT);
        assert_eq!(s.held(Resolution::Minute), MINUTES_KEPT);
        // 240 hours pushed, the last still open.
        assert_eq!(s.held(Resolution::Hour), 239);
        assert_eq!(s.memory_bytes(), Series::MAX_BYTES);
    }

    #[test]
    fn downsampled_buckets_are_exact() {
        let mut s = Series::new();
        let mut rng = StdRng::seed_from_u64(11);
        let mut samples = Vec::new();
        let mut closed = Vec::new();
        let mut ts = T0 + 17;
        // Three hours, with several samples in some seconds and gaps of up to 90 s.
        while ts < T0 + 3 * 3_600 + 200 {
            let v = rng.random_range(-50.0..500.0);
            samples.push((ts, v));
            closed.extend(s.push(ts, v));
            ts += match rng.random_range(0..10) {
                0 => 0,
                1 => rng.random_range(2..90),
                _ => 1,
            };
        }
        let minutes: Vec<_> = closed
            .iter()
            .filter(|c| c.resolution == Resolution::Minute)
            .collect();
        let hours: Vec<_> = closed
            .iter()
            .filter(|c| c.resolution == Resolution::Hour)
            .collect();
        assert_eq!(hours.len(), 3);
        assert!(minutes.len() > 150, "{} minutes closed", minutes.len());
        for c in closed {
            let (from, to) = (c.bucket.start, c.bucket.start + c.resolution.secs());
            assert!(from.is_multiple_of(c.resolution.secs()));
            assert_bucket(&c.bucket, brute(&samples, |t| (from..to).contains(&t)));
        }
        // The 1 s tier: every closed second equals its samples.
        let w = s.query(ts, 3_600, usize::MAX);
        assert_eq!(w.resolution, Resolution::Second);
        for b in &w.points {
            assert_bucket(b, brute(&samples, |t| t == b.start));
        }
    }

    #[test]
    fn windows_pick_the_tier_and_count() {
        let mut s = Series::new();
        let (samples, _) = fill(&mut s, T0, 2 * 86_400, 3);
        let now = T0 + 2 * 86_400 - 1;
        for (window, resolution, points) in [
            (300, Resolution::Second, 300),
            (3_600, Resolution::Second, 3_600),
            (86_400, Resolution::Minute, 1_440),
            (7 * 86_400, Resolution::Hour, 48),
        ] {
            let w = s.query(now, window, usize::MAX);
            assert_eq!(w.resolution, resolution, "window {window}");
            assert_eq!(w.step_secs, resolution.secs());
            assert_eq!(w.points.len(), points, "window {window}");
            assert!(w.points.windows(2).all(|p| p[0].start < p[1].start));
            let summary = w.summary.expect("summary");
            assert_bucket(
                &summary,
                brute(&samples, |t| resolution.align(t) + window > now),
            );
            assert_eq!(summary.start, w.points[0].start);
        }
        // Nothing pushed in the last 5 minutes: an empty window.
        let w = s.query(now + 600, 300, 100);
        assert!(w.points.is_empty());
        assert_eq!(w.summary, None);
    }

    #[test]
    fn merging_for_a_chart_keeps_extremes() {
        let mut s = Series::new();
        let (samples, _) = fill(&mut s, T0 + 5, 2 * 3_600, 5);
        let now = T0 + 2 * 3_600 + 4;
        let full = s.query(now, 3_600, usize::MAX);
        for max_points in [1, 2, 7, 100, 299, 3_599] {
            let w = s.query(now, 3_600, max_points);
            assert!(
                w.points.len() <= max_points,
                "{} > {max_points}",
                w.points.len()
            );
            assert_eq!(w.summary, full.summary);
            assert!(w.step_secs.is_multiple_of(Resolution::Second.secs()));
            let count: u32 = w.points.iter().map(|b| b.count).sum();
            assert_eq!(Some(count), full.summary.map(|b| b.count));
            let lo = w.points.iter().map(|b| b.min).fold(f64::INFINITY, f64::min);
            let hi = w
                .points
                .iter()
                .map(|b| b.max)
                .fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(Some(lo), full.summary.map(|b| b.min));
            assert_eq!(Some(hi), full.summary.map(|b| b.max));
            if max_points > 1 {
                let first = full.points[0].start;
                for p in &w.points {
                    assert!(p.start.is_multiple_of(w.step_secs));
                    let (from, to) = (p.start.max(first), p.start + w.step_secs);
                    assert_bucket(p, brute(&samples, |t| (from..to).contains(&t)));
                }
            }
        }
    }

    #[test]
    fn restore_round_trips() {
        let mut live = Series::new();
        let (_, closed) = fill(&mut live, T0, 5 * 3_600, 9);
        let now = T0 + 5 * 3_600 - 1;

        // Stored rows come back in any order, some twice, one corrupt.
        let mut rows: Vec<Closed> = closed.iter().rev().copied().collect();
        rows.extend(closed.iter().take(10).copied());
        let mut bad = closed[0].bucket;
        bad.min = f64::NAN;
        let mut restored = Series::new();
        for r in [Resolution::Minute, Resolution::Hour] {
            let mine = rows.iter().filter(|c| c.resolution == r).map(|c| c.bucket);
            let extra = if r == Resolution::Minute {
                Some(bad)
            } else {
                None
            };
            let n = restored.restore(r, mine.chain(extra));
            let expected = rows.iter().filter(|c| c.resolution == r).count();
            assert_eq!(n, expected, "well-formed {r} rows");
        }
        for (window, r) in [(86_400, Resolution::Minute), (7 * 86_400, Resolution::Hour)] {
            let mut want = live.query(now, window, usize::MAX).points;
            let open = live.open(r).expect("open bucket");
            assert_eq!(want.pop(), Some(open), "the open bucket is not persisted");
            assert_eq!(restored.query(now, window, usize::MAX).points, want);
            assert_eq!(restored.held(r), live.held(r));
        }

        // More rows than a tier keeps: the newest stay.
        let many = (0..2_000).map(|i| Bucket::new(T0 + i * 60, i as f64));
        let mut s = Series::new();
        assert_eq!(s.restore(Resolution::Minute, many), 2_000);
        assert_eq!(s.held(Resolution::Minute), MINUTES_KEPT);
        assert_eq!(s.memory_bytes(), Series::MAX_BYTES);
        let w = s.query(T0 + 1_999 * 60, 86_400, usize::MAX);
        assert_eq!(w.points.len(), MINUTES_KEPT);
        assert_eq!(w.points[0].start, T0 + (2_000 - 1_440) * 60);
    }

    #[test]
    fn a_partial_period_saved_at_shutdown_is_completed_after_restart() {
        let mut before = Series::new();
        let (samples, _) = fill(&mut before, T0, 90, 1);
        let partial = before.open(Resolution::Minute).expect("open minute");
        assert_eq!(partial.start, T0 + 60);

        let mut after = Series::new();
        after.restore(Resolution::Minute, [partial]);
        let (more, _) = fill(&mut after, T0 + 95, 20, 2);
        let closed = after.push(T0 + 120, 1.0);
        let minute = closed
            .iter()
            .find(|c| c.resolution == Resolution::Minute)
            .expect("minute closed");
        let all: Vec<_> = samples.iter().chain(&more).copied().collect();
        assert_bucket(
            &minute.bucket,
            brute(&all, |t| (T0 + 60..T0 + 120).contains(&t)),
        );
    }

    #[test]
    fn expiry_drops_departed_peers() {
        let mut store: Store<(u8, &str)> = Store::new();
        for ts in T0..T0 + 100 {
            store.push(&(1, "latency_ms"), ts, 20.0);
            if ts < T0 + 10 {
                store.push(&(2, "latency_ms"), ts, 30.0);
            }
            // Loss without a latency sample still means peer 3 is there.
            store.push(&(3, "latency_ms"), ts, f64::NAN);
        }
        assert_eq!(store.len(), 3);
        assert_eq!(store.memory_bytes(), 3 * Series::MAX_BYTES);
        assert_eq!(store.expire(T0 + 100, 60), vec![(2, "latency_ms")]);
        assert_eq!(store.len(), 2);
        assert!(store.query(&(2, "latency_ms"), T0 + 100, 300, 10).is_none());
        let w = store
            .query(&(3, "latency_ms"), T0 + 100, 300, 10)
            .expect("series");
        assert_eq!(w.summary, None);
        assert_eq!(store.expire(T0 + 500, 60).len(), 2);
        assert!(store.is_empty());
        assert_eq!(store.memory_bytes(), 0);

        // Restored history of a peer that never returns expires too.
        let old = Bucket::new(T0, 1.0);
        assert_eq!(store.restore(&(4, "quality"), Resolution::Minute, [old]), 1);
        assert_eq!(store.restore(&(5, "quality"), Resolution::Minute, []), 0);
        assert_eq!(store.keys().collect::<Vec<_>>(), [&(4u8, "quality")]);
        assert_eq!(store.expire(T0 + 86_400, 3_600), vec![(4, "quality")]);
    }

    #[test]
    fn non_finite_samples_are_ignored() {
        let mut s = Series::new();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(s.push(T0, v).is_empty());
        }
        assert_eq!(s.open(Resolution::Second), None);
        s.push(T0, 4.0);
        s.push(T0, f64::NAN);
        s.push(T0, 8.0);
        let w = s.query(T0, 300, 10);
        assert_eq!(
            w.points,
            [Bucket {
                start: T0,
                count: 2,
                sum: 12.0,
                min: 4.0,
                max: 8.0
            }]
        );
        assert_eq!(w.summary.map(|b| b.mean()), Some(6.0));
    }

    #[test]
    fn late_samples_merge_into_the_open_bucket() {
        let mut s = Series::new();
        s.push(T0 + 100, 1.0);
        s.push(T0 + 40, 5.0);
        let open = s.open(Resolution::Second).expect("open");
        assert_eq!((open.start, open.count, open.max), (T0 + 100, 2, 5.0));
        let minute = s.open(Resolution::Minute).expect("open");
        assert_eq!((minute.start, minute.count), (T0 + 60, 2));
        assert_eq!(s.held(Resolution::Second), 0);
    }

    #[test]
    fn sixty_four_series_for_thirty_minutes_stay_in_bound() {
        let mut store: Store<u16> = Store::new();
        for ts in T0..T0 + 30 * 60 {
            for peer in 0..64 {
                store.push(&peer, ts, f64::from(peer) + (ts % 7) as f64);
            }
        }
        assert_eq!(store.len(), 64);
        assert!(store.memory_bytes() <= 64 * Series::MAX_BYTES);
        let w = store.query(&5, T0 + 30 * 60 - 1, 300, 60).expect("series");
        assert_eq!(w.summary.map(|b| b.count), Some(300));
        assert!(w.points.len() <= 60);
    }

    #[test]
    fn resolution_names_are_stable() {
        for (r, name) in [
            (Resolution::Second, "1s"),
            (Resolution::Minute, "1m"),
            (Resolution::Hour, "1h"),
        ] {
            assert_eq!(r.as_str(), name);
            assert_eq!(r.to_string(), name);
            assert_eq!(name.parse::<Resolution>(), Ok(r));
        }
        assert!("5m".parse::<Resolution>().is_err());
        assert_eq!(Resolution::for_window(300), Resolution::Second);
        assert_eq!(Resolution::for_window(3_600), Resolution::Second);
        assert_eq!(Resolution::for_window(3_601), Resolution::Minute);
        assert_eq!(Resolution::for_window(86_400), Resolution::Minute);
        assert_eq!(Resolution::for_window(86_401), Resolution::Hour);
    }
}
