//! A writer of the Prometheus text exposition format, version 0.0.4.
//!
//! Written by hand on purpose: in host mode one process runs the daemon, a control plane and
//! a relay, and each serves `/metrics` for its own component only. A process-global recorder
//! (the `metrics` crate and its Prometheus exporter) would mix the three, so each component
//! keeps its own numbers and renders them with this writer. The format is a handful of
//! escaping and spelling rules; no crate writes it without a registry of its own.
//!
//! ```
//! use lanrage_proto::metrics::{Exposition, Kind};
//!
//! let mut e = Exposition::new();
//! e.family("lanrage_example_requests_total", Kind::Counter, "Requests answered.")
//!     .sample(&[("status", "200")], 3u64)
//!     .sample(&[("status", "404")], 1u64);
//! e.family("lanrage_example_uptime_seconds", Kind::Gauge, "Seconds since start.")
//!     .sample(&[], 12.5);
//! let text = e.finish();
//! assert!(text.contains("lanrage_example_requests_total{status=\"200\"} 3\n"));
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The `Content-Type` of a `/metrics` answer in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type, as `# TYPE` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the process restarts); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into fixed buckets, written with [`Exposition::histogram`].
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value. Integers stay integers, so a counter past 2^53 is written exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Unsigned(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Unsigned(u64::from(v))
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Unsigned(u64::try_from(v).unwrap_or(u64::MAX))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Signed(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Unsigned(u64::from(v))
    }
}

/// Observations counted into fixed buckets, with their sum and count: the state behind one
/// histogram series. Pure data; the caller measures and calls [`Histogram::observe`].
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds, ascending, without the implicit `+Inf`.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending and finite; `+Inf` is implicit).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(
            bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must be finite and strictly ascending"
        );
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Counts one observation (Prometheus buckets are inclusive: `le` is "≤").
    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observations so far.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, observations ≤ it)` per bucket, ending with `+Inf` and the count.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        bounds.zip(&self.counts).scan(0u64, |total, (bound, n)| {
            *total += n;
            Some((bound, *total))
        })
    }
}

/// One `/metrics` answer being written: families, each with `# HELP`, `# TYPE` and its
/// samples, in the order they are added.
///
/// Names are checked with `debug_assert!` (they are constants in the code, never input):
/// metric names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*`
/// without the reserved `__` prefix, counters end in `_total`, and no family appears twice.
/// Label values are any text; they are escaped here.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    current: Option<(String, Kind)>,
    seen: BTreeSet<String>,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: writes its `# HELP` and `# TYPE` lines. Samples added next belong
    /// to it.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_metric_name(name), "invalid metric name {name:?}");
        debug_assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name:?} must end in _total"
        );
        debug_assert!(!self.seen.contains(name), "family {name:?} written twice");
        self.seen.insert(name.to_owned());
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(&mut self.out, help);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
        self.current = Some((name.to_owned(), kind));
        self
    }

    /// Writes `name{labels} value` for the current counter or gauge family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        let Some((name, kind)) = self.current.take() else {
            debug_assert!(false, "a sample needs a family first");
            return self;
        };
        debug_assert!(
            kind != Kind::Histogram,
            "histogram {name:?} takes Exposition::histogram"
        );
        self.line(&name, "", labels, None, value.into());
        self.current = Some((name, kind));
        self
    }

    /// Writes one histogram series of the current histogram family: its `_bucket` lines
    /// (cumulative, `le` last among the labels), `_sum` and `_count`.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let Some((name, kind)) = self.current.take() else {
            debug_assert!(false, "a histogram needs a family first");
            return self;
        };
        debug_assert!(
            kind == Kind::Histogram,
            "{name:?} is not a histogram family"
        );
        debug_assert!(
            labels.iter().all(|(k, _)| *k != "le"),
            "\"le\" is the histogram's own label"
        );
        for (bound, total) in h.cumulative() {
            let mut le = String::new();
            write_float(&mut le, bound);
            self.line(&name, "_bucket", labels, Some(&le), Value::Unsigned(total));
        }
        self.line(&name, "_sum", labels, None, Value::Float(h.sum()));
        self.line(&name, "_count", labels, None, Value::Unsigned(h.count()));
        self.current = Some((name, kind));
        self
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }

    fn line(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        le: Option<&str>,
        value: Value,
    ) {
        let out = &mut self.out;
        out.push_str(name);
        out.push_str(suffix);
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (key, val)) in all.enumerate() {
            debug_assert!(valid_label_name(key), "invalid label name {key:?}");
            out.push(if i == 0 { '{' } else { ',' });
            out.push_str(key);
            out.push_str("=\"");
            escape_label_value(out, val);
            out.push('"');
        }
        if !labels.is_empty() || le.is_some() {
            out.push('}');
        }
        out.push(' ');
        match value {
            // Writing to a String cannot fail.
            Value::Unsigned(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Signed(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Float(v) => write_float(out, v),
        }
        out.push('\n');
    }
}

/// A float as Prometheus reads it: `NaN`, `+Inf`, `-Inf`, whole numbers without a decimal
/// point or exponent, fractions in plain decimals. Only magnitudes beyond what a plain
/// decimal writes sensibly (≥ 1e21, or below 1e-6) take an exponent, which Prometheus also
/// reads.
fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v != 0.0 && !(1e-6..1e21).contains(&v.abs()) {
        let _ = write!(out, "{v:e}");
    } else {
        // Rust's `Display` is the shortest text that reads back to the same float, with no
        // exponent; `-0.0` becomes plain 0.
        let _ = write!(out, "{}", if v == 0.0 { 0.0 } else { v });
    }
}

/// Label values escape backslash, double quote and newline (format 0.0.4).
fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Help text escapes backslash and newline only (format 0.0.4).
fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_labelled_samples() {
        let mut e = Exposition::new();
        e.family("lanrage_test_requests_total", Kind::Counter, "Requests.")
            .sample(
                &[("route", "/v1/parties/{id}/join"), ("status", "200")],
                7u64,
            )
            .sample(&[], 0u64);
        e.family("lanrage_test_parties", Kind::Gauge, "Parties now.")
            .sample(&[], 3usize)
            .sample(&[("state", "away")], -2i64);
        assert_eq!(
            e.finish(),
            "# HELP lanrage_test_requests_total Requests.\n\
             # TYPE lanrage_test_requests_total counter\n\
             lanrage_test_requests_total{route=\"/v1/parties/{id}/join\",status=\"200\"} 7\n\
             lanrage_test_requests_total 0\n\
             # HELP lanrage_test_parties Parties now.\n\
             # TYPE lanrage_test_parties gauge\n\
             lanrage_test_parties 3\n\
             lanrage_test_parties{state=\"away\"} -2\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new();
        e.family("lanrage_test_x", Kind::Gauge, "a \\ b\nc \"q\"")
            .sample(&[("v", "back\\slash \"quoted\"\nnext")], 1u64);
        let text = e.finish();
        assert!(text.starts_with("# HELP lanrage_test_x a \\\\ b\\nc \"q\"\n"));
        assert!(text.ends_with("lanrage_test_x{v=\"back\\\\slash \\\"quoted\\\"\\nnext\"} 1\n"));
        assert_eq!(text.lines().count(), 3, "no raw newline escapes a line");
    }

    #[test]
    fn numbers_are_spelled_the_way_prometheus_reads_them() {
        let spell = |v: Value| {
            let mut e = Exposition::new();
            e.family("lanrage_test_v", Kind::Gauge, "v").sample(&[], v);
            let text = e.finish();
            let last = text.lines().last().expect("a sample line").to_owned();
            last.rsplit(' ').next().expect("a value").to_owned()
        };
        assert_eq!(spell(Value::Unsigned(u64::MAX)), "18446744073709551615");
        assert_eq!(spell(Value::Signed(i64::MIN)), "-9223372036854775808");
        assert_eq!(spell(Value::Float(3.0)), "3");
        assert_eq!(spell(Value::Float(1e20)), "100000000000000000000");
        assert_eq!(spell(Value::Float(0.25)), "0.25");
        assert_eq!(spell(Value::Float(0.000_001)), "0.000001");
        assert_eq!(spell(Value::Float(1e-9)), "1e-9");
        assert_eq!(spell(Value::Float(1e300)), "1e300");
        assert_eq!(spell(Value::Float(-0.0)), "0");
        assert_eq!(spell(Value::Float(f64::NAN)), "NaN");
        assert_eq!(spell(Value::Float(f64::INFINITY)), "+Inf");
        assert_eq!(spell(Value::Float(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(spell(true.into()), "1");
    }

    #[test]
    fn histograms_write_cumulative_buckets_sum_and_count() {
        static BOUNDS: [f64; 3] = [0.25, 0.5, 1.0];
        let mut h = Histogram::new(&BOUNDS);
        // Binary fractions, so the sum is exact.
        for v in [0.125, 0.25, 0.375, 0.75, 7.0] {
            h.observe(v);
        }
        assert_eq!(h.count(), 5);
        let mut e = Exposition::new();
        e.family("lanrage_test_seconds", Kind::Histogram, "Latency.")
            .histogram(&[("route", "/x")], &h);
        let text = e.finish();
        let expected = "lanrage_test_seconds_bucket{route=\"/x\",le=\"0.25\"} 2\n\
             lanrage_test_seconds_bucket{route=\"/x\",le=\"0.5\"} 3\n\
             lanrage_test_seconds_bucket{route=\"/x\",le=\"1\"} 4\n\
             lanrage_test_seconds_bucket{route=\"/x\",le=\"+Inf\"} 5\n\
             lanrage_test_seconds_sum{route=\"/x\"} 8.5\n\
             lanrage_test_seconds_count{route=\"/x\"} 5\n";
        assert!(text.ends_with(expected), "{text}");
        assert!(text.contains("# TYPE lanrage_test_seconds histogram\n"));
    }

    #[test]
    fn the_output_parses_as_prometheus_text() {
        static BOUNDS: [f64; 2] = [0.1, 1.0];
        let mut h = Histogram::new(&BOUNDS);
        h.observe(0.5);
        let mut e = Exposition::new();
        e.family("lanrage_test_events_total", Kind::Counter, "Events.")
            .sample(&[("kind", "a")], 2u64)
            .sample(&[("kind", "b")], 5u64);
        e.family("lanrage_test_ratio", Kind::Gauge, "A ratio.")
            .sample(&[], 0.75);
        e.family("lanrage_test_seconds", Kind::Histogram, "Latency.")
            .histogram(&[], &h);
        let text = e.finish();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("the text parses");
        let value = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| s.value.clone())
        };
        assert_eq!(
            value("lanrage_test_events_total", Some(("kind", "b"))),
            Some(prometheus_parse::Value::Counter(5.0))
        );
        assert_eq!(
            value("lanrage_test_ratio", None),
            Some(prometheus_parse::Value::Gauge(0.75))
        );
        let Some(prometheus_parse::Value::Histogram(buckets)) = value("lanrage_test_seconds", None)
        else {
            panic!("a histogram in {text}");
        };
        assert_eq!(buckets.len(), 3);
        for name in [
            "lanrage_test_events_total",
            "lanrage_test_ratio",
            "lanrage_test_seconds",
        ] {
            assert!(scrape.docs.contains_key(name), "HELP of {name}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_metric_name("lanrage_relay_bytes_total"));
        assert!(valid_metric_name("ns:sub_metric"));
        assert!(!valid_metric_name(""));
        assert!(!valid_metric_name("9lives"));
        assert!(!valid_metric_name("lanrage-relay"));
        assert!(!valid_metric_name("lanrage relay"));
        assert!(valid_label_name("route"));
        assert!(valid_label_name("_x1"));
        assert!(!valid_label_name("__name__"));
        assert!(!valid_label_name("a:b"));
        assert!(!valid_label_name("1a"));
        assert!(!valid_label_name(""));
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "must end in _total")]
    fn a_counter_without_total_is_a_bug() {
        Exposition::new().family("lanrage_test_requests", Kind::Counter, "x");
    }
}
