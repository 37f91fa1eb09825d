//! The daemon's metrics: every member's latency, jitter, loss and score as bounded series
//! (`lanrage_core::series`, one sample a second), kept in SQLite through the write-behind;
//! alerts when a member crosses the latency or loss threshold; and the Prometheus text of
//! `GET /metrics`.

use std::collections::BTreeMap;

use lanrage_core::series::{Closed, Resolution, Store};
use lanrage_proto::DeviceKey;
use lanrage_proto::local::{
    Alert, HistoryPoint, LanCounters, MemberStatus, MetricHistory, PeerHistory, QualityHistory,
    Status,
};
use lanrage_proto::metrics::{Exposition, Kind};
use tokio::sync::Mutex;

use crate::store::WriteBehind;

/// Reads one number from a member's status.
type Read = fn(&MemberStatus) -> Option<f64>;

/// The series recorded per member, and how each is read from its status.
const SERIES: [(&str, Read); 4] = [
    ("latency_ms", |m| m.latency_ms),
    ("jitter_ms", |m| m.jitter_ms),
    ("loss_pct", |m| m.loss_pct),
    ("quality", |m| m.quality.map(f64::from)),
];
/// A member gone this long loses its history (a short reconnect keeps it).
pub const DEPARTED_TTL_SECS: u64 = 600;
/// Points a history answer holds at most per metric (a chart's width).
pub const HISTORY_POINTS: usize = 360;
/// An alert clears only once the value is this far back under its threshold, so a value
/// hovering at the line does not flap.
const CLEAR_RATIO: f64 = 0.9;

/// When a member's connection is bad enough to say so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub latency_ms: f64,
    pub loss_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        // 150 ms is where fast games start to feel it; 5 % loss is where they break.
        Self {
            latency_ms: 150.0,
            loss_pct: 5.0,
        }
    }
}

pub struct Metrics {
    pub thresholds: Thresholds,
    writes: WriteBehind,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    series: Store<String>,
    names: BTreeMap<DeviceKey, String>,
    /// Alerts raised and not yet cleared: (member, metric).
    raised: BTreeMap<(DeviceKey, &'static str), ()>,
    last_prune: u64,
}

impl Metrics {
    pub fn new(writes: WriteBehind, thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            writes,
            inner: Mutex::default(),
        }
    }

    /// Loads the history saved in the database (finished minutes and hours).
    pub async fn restore(&self, pool: &sqlx::SqlitePool) {
        let saved = match crate::store::load_points(pool).await {
            Ok(saved) => saved,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the saved quality history is unreadable; starting afresh");
                return;
            }
        };
        let mut inner = self.inner.lock().await;
        for (series, tiers) in saved {
            for (res, buckets) in tiers {
                inner.series.restore(&series, res, buckets);
            }
        }
    }

    /// Records one sample of every member at `now` (Unix seconds); returns the alerts
    /// raised or cleared by it.
    pub async fn record(&self, now: u64, status: &Status) -> Vec<Alert> {
        let members = status.party.as_ref().map_or(&[][..], |p| &p.members[..]);
        let mut inner = self.inner.lock().await;
        let mut closed: Vec<(String, Closed)> = Vec::new();
        for m in members {
            inner.names.insert(m.public_key, m.name.clone());
            for (metric, read) in SERIES {
                if let Some(v) = read(m) {
                    let key = series_key(&m.public_key, metric);
                    for c in inner.series.push(&key, now, v) {
                        closed.push((key.clone(), c));
                    }
                }
            }
        }
        let departed = inner.series.expire(now, DEPARTED_TTL_SECS);
        let alerts = self.alerts(&mut inner, members, now);
        let prune = now.saturating_sub(inner.last_prune) >= 3600;
        if prune {
            inner.last_prune = now;
        }
        let present: Vec<DeviceKey> = inner.series.keys().filter_map(|k| peer_of(k)).collect();
        inner.names.retain(|k, _| present.contains(k));
        drop(inner);
        // Only finished minutes and hours are saved: the seconds tier is the last hour
        // at most, and rebuilt within it.
        for (key, c) in closed {
            if c.resolution != Resolution::Second {
                self.writes.points(&key, c.resolution, &[c.bucket]).await;
            }
        }
        for key in departed {
            self.writes.forget(&key).await;
        }
        if prune {
            for res in [Resolution::Minute, Resolution::Hour] {
                let kept = res.secs() * res.kept() as u64;
                self.writes.prune(res, now.saturating_sub(kept)).await;
            }
        }
        alerts
    }

    fn alerts(&self, inner: &mut Inner, members: &[MemberStatus], now: u64) -> Vec<Alert> {
        let mut out = Vec::new();
        for m in members {
            let checks = [
                ("latency", m.latency_ms, self.thresholds.latency_ms),
                ("loss", m.loss_pct, self.thresholds.loss_pct),
            ];
            for (metric, value, threshold) in checks {
                let Some(value) = value else { continue };
                let key = (m.public_key, metric);
                let was = inner.raised.contains_key(&key);
                let now_raised = if was {
                    value >= threshold * CLEAR_RATIO
                } else {
                    value > threshold
                };
                if was == now_raised {
                    continue;
                }
                if now_raised {
                    inner.raised.insert(key, ());
                } else {
                    inner.raised.remove(&key);
                }
                // A friend's bad connection is news, not a fault of this daemon: INFO.
                tracing::info!(
                    peer = %m.public_key, name = %m.name, metric, value, threshold,
                    raised = now_raised, "quality alert"
                );
                out.push(Alert {
                    public_key: m.public_key,
                    name: m.name.clone(),
                    metric: metric.to_owned(),
                    value,
                    threshold,
                    raised: now_raised,
                    at_unix_ms: now * 1000,
                });
            }
        }
        inner
            .raised
            .retain(|(k, _), _| members.iter().any(|m| m.public_key == *k));
        out
    }

    /// Every member's series over the last `window_secs`.
    pub async fn history(&self, now: u64, window_secs: u64, status: &Status) -> QualityHistory {
        let members = status.party.as_ref().map_or(&[][..], |p| &p.members[..]);
        let inner = self.inner.lock().await;
        let mut peers: BTreeMap<DeviceKey, PeerHistory> = BTreeMap::new();
        let mut step_secs = Resolution::for_window(window_secs).secs();
        for key in inner.series.keys() {
            let (Some(peer), Some(metric)) = (peer_of(key), key.rsplit_once('/').map(|x| x.1))
            else {
                continue;
            };
            let Some(w) = inner.series.query(key, now, window_secs, HISTORY_POINTS) else {
                continue;
            };
            step_secs = w.step_secs;
            let point = |b: &lanrage_core::series::Bucket| HistoryPoint {
                at_unix_s: b.start,
                mean: crate::api::round2(b.mean()),
                min: b.min,
                max: b.max,
                count: b.count,
            };
            let entry = peers.entry(peer).or_insert_with(|| PeerHistory {
                public_key: peer,
                name: inner.names.get(&peer).cloned().unwrap_or_default(),
                present: members.iter().any(|m| m.public_key == peer),
                metrics: Vec::new(),
            });
            entry.metrics.push(MetricHistory {
                metric: metric.to_owned(),
                summary: w.summary.as_ref().map(point),
                points: w.points.iter().map(point).collect(),
            });
        }
        QualityHistory {
            window_secs,
            step_secs,
            peers: peers.into_values().collect(),
        }
    }

    /// Series held and their memory, for `/metrics`.
    pub async fn footprint(&self) -> (usize, usize) {
        let inner = self.inner.lock().await;
        (inner.series.len(), inner.series.memory_bytes())
    }
}

fn series_key(peer: &DeviceKey, metric: &str) -> String {
    format!("{peer}/{metric}")
}

fn peer_of(key: &str) -> Option<DeviceKey> {
    // Base64 keys may hold '/', metric names never do.
    key.rsplit_once('/').and_then(|(k, _)| k.parse().ok())
}

/// Parses `5m`, `1h`, `24h`, `90s` or plain seconds; a longer window than the 30 days the
/// series keep is those 30 days.
pub fn parse_window(s: &str) -> Option<u64> {
    // The shape the API document gives: `^[1-9][0-9]{0,6}[smhd]?$`.
    let (n, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    if n.is_empty() || n.len() > 7 || n.starts_with('0') {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    // Seven digits of days fit a u64 many times over; the series keep 30 days.
    Some((n * unit).min(30 * 86_400))
}

/// What `GET /metrics` shows, gathered by the API.
pub struct Scrape<'a> {
    pub status: &'a Status,
    pub peers: &'a [lanrage_core::PeerStats],
    pub lan: Option<&'a LanCounters>,
    pub dropped_spoofed: u64,
    /// WireGuard's handshake guard: answered with a cookie, and dropped unprocessed.
    pub handshakes_cookied: u64,
    pub handshakes_dropped: u64,
    pub store_transactions: u64,
    pub store_failures: u64,
    pub series: (usize, usize),
    pub thresholds: Thresholds,
}

/// The Prometheus text of the daemon.
pub fn render(s: &Scrape<'_>) -> String {
    let mut e = Exposition::new();
    let members = s.status.party.as_ref().map_or(&[][..], |p| &p.members[..]);
    e.family(
        "lanrage_peers",
        Kind::Gauge,
        "Party members by the path traffic to them takes.",
    );
    for path in ["direct", "relay", "connecting", "unreachable"] {
        let n = members.iter().filter(|m| m.path.as_str() == path).count();
        e.sample(&[("path", path)], n as u64);
    }
    let gauges: [(&str, &str, Read); 4] = [
        (
            "lanrage_peer_latency_milliseconds",
            "Round-trip time to the member through the tunnel (moving average of each second's median).",
            |m| m.latency_ms,
        ),
        (
            "lanrage_peer_jitter_milliseconds",
            "Variation between consecutive round trips to the member (RFC 3550 estimator).",
            |m| m.jitter_ms,
        ),
        (
            "lanrage_peer_loss_ratio",
            "Share of probes to the member lost over the last 30 seconds (0-1).",
            |m| m.loss_pct.map(|p| p / 100.0),
        ),
        (
            "lanrage_peer_quality_score",
            "Connection quality 0-100 (docs/observability.md gives the formula).",
            |m| m.quality.map(f64::from),
        ),
    ];
    for (name, help, read) in gauges {
        e.family(name, Kind::Gauge, help);
        for m in members {
            if let Some(v) = read(m) {
                let key = m.public_key.to_string();
                e.sample(&[("peer", &key), ("name", &m.name)], v);
            }
        }
    }
    type Count = fn(&lanrage_core::PeerStats) -> u64;
    let counters: [(&str, &str, Count); 6] = [
        (
            "lanrage_peer_received_bytes_total",
            "Bytes received from the member through the tunnel.",
            |p| p.rx_bytes,
        ),
        (
            "lanrage_peer_sent_bytes_total",
            "Bytes sent to the member through the tunnel.",
            |p| p.tx_bytes,
        ),
        (
            "lanrage_peer_received_packets_total",
            "Packets received from the member through the tunnel.",
            |p| p.rx_packets,
        ),
        (
            "lanrage_peer_sent_packets_total",
            "Packets sent to the member through the tunnel.",
            |p| p.tx_packets,
        ),
        (
            "lanrage_peer_handshakes_total",
            "Authenticated WireGuard handshake messages accepted from the member.",
            |p| p.handshakes,
        ),
        (
            "lanrage_peer_path_changes_total",
            "Times traffic to the member moved to another path.",
            |p| p.path_changes,
        ),
    ];
    for (name, help, read) in counters {
        e.family(name, Kind::Counter, help);
        for m in members {
            if let Some(p) = s.peers.iter().find(|p| p.key == m.public_key) {
                let key = m.public_key.to_string();
                e.sample(&[("peer", &key), ("name", &m.name)], read(p));
            }
        }
    }
    if let Some(c) = s.lan {
        e.family(
            "lanrage_lan_packets_total",
            Kind::Counter,
            "LAN broadcast and multicast packets by what happened to them.",
        );
        for (event, v) in [
            ("captured", c.captured),
            ("captured_physical", c.captured_physical),
            ("forwarded", c.forwarded),
            ("received", c.received),
            ("injected", c.injected),
            ("not_forwarded", c.not_forwarded),
            ("deduplicated", c.deduplicated),
            ("rate_limited", c.rate_limited),
            ("unsupported", c.unsupported),
        ] {
            e.sample(&[("event", event)], v);
        }
        e.family(
            "lanrage_lan_fanout_copies_total",
            Kind::Counter,
            "Copies of captured LAN packets sent to members (one per recipient).",
        );
        e.sample(&[], c.copies);
    }
    e.family(
        "lanrage_dropped_spoofed_packets_total",
        Kind::Counter,
        "Decrypted packets dropped because their inner source was not the sender's address.",
    );
    e.sample(&[], s.dropped_spoofed);
    e.family(
        "lanrage_handshakes_cookied_total",
        Kind::Counter,
        "Handshake messages answered with a cookie reply while under load (no key exchange done).",
    );
    e.sample(&[], s.handshakes_cookied);
    e.family(
        "lanrage_handshakes_dropped_total",
        Kind::Counter,
        "Handshake messages dropped under load: over their address's rate or the second's key-exchange budget.",
    );
    e.sample(&[], s.handshakes_dropped);
    e.family(
        "lanrage_store_transactions_total",
        Kind::Counter,
        "Write transactions committed to the daemon's database.",
    );
    e.sample(&[], s.store_transactions);
    e.family(
        "lanrage_store_failures_total",
        Kind::Counter,
        "Write transactions that failed and were retried.",
    );
    e.sample(&[], s.store_failures);
    e.family(
        "lanrage_metric_series",
        Kind::Gauge,
        "Quality series held in memory (four per member).",
    );
    e.sample(&[], s.series.0 as u64);
    e.family(
        "lanrage_metric_series_bytes",
        Kind::Gauge,
        "Memory held by the quality series.",
    );
    e.sample(&[], s.series.1 as u64);
    e.family(
        "lanrage_alert_threshold_latency_milliseconds",
        Kind::Gauge,
        "Latency above which a member raises an alert.",
    );
    e.sample(&[], s.thresholds.latency_ms);
    e.family(
        "lanrage_alert_threshold_loss_ratio",
        Kind::Gauge,
        "Loss above which a member raises an alert (0-1).",
    );
    e.sample(&[], s.thresholds.loss_pct / 100.0);
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_window("5m"), Some(300));
        assert_eq!(parse_window("1h"), Some(3600));
        assert_eq!(parse_window("24h"), Some(86_400));
        assert_eq!(parse_window("90"), Some(90));
        // Longer than what is kept answers what is kept.
        assert_eq!(parse_window("31d"), Some(30 * 86_400));
        assert_eq!(parse_window("9999999d"), Some(30 * 86_400));
        for bad in [
            "",
            "0",
            "05m",
            "5x",
            "-1h",
            "h",
            "1hh",
            "99999999999999999999",
        ] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }
}
