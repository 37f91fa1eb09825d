//! `/api/v1/events`: a WebSocket that pushes every change the UI shows, as it happens.
//!
//! One hub task wakes when the supervisor, the game detector or a settings change says
//! something changed (and four times a second for LAN broadcasts), builds what the API
//! would answer, and sends each part only if it differs from what it last sent. Once a
//! second it also records every member's latency and path: the `sample` event, and the
//! five-minute history `/api/v1/quality` serves.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use lanrage_proto::DeviceKey;
use lanrage_proto::local::{Event, PeerSample, PeerSeries, Quality, QualitySample, Sample, Status};
use tokio::sync::{Mutex, broadcast};

use super::{ApiState, error, routes};

/// Samples kept per member: five minutes at one a second.
pub const HISTORY: usize = 300;
/// How often LAN counters and the broadcast trace are looked at.
const LAN_EVERY: Duration = Duration::from_millis(250);
/// Samples are taken every this many LAN ticks (one second).
const SAMPLE_EVERY: u32 = 4;
/// Messages a slow client may fall behind before it is sent everything afresh.
const BACKLOG: usize = 256;

/// What the hub shares with the WebSocket handlers.
pub struct Hub {
    tx: broadcast::Sender<Utf8Bytes>,
    quality: Mutex<Series>,
}

#[derive(Default)]
struct Series {
    peers: HashMap<DeviceKey, (String, VecDeque<QualitySample>)>,
    /// Display order: as members were first seen.
    order: Vec<DeviceKey>,
}

impl Hub {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(BACKLOG).0,
            quality: Mutex::default(),
        }
    }

    pub async fn quality(&self) -> Quality {
        let q = self.quality.lock().await;
        Quality {
            peers: q
                .order
                .iter()
                .filter_map(|k| {
                    q.peers.get(k).map(|(name, samples)| PeerSeries {
                        public_key: *k,
                        name: name.clone(),
                        samples: samples.iter().cloned().collect(),
                    })
                })
                .collect(),
        }
    }

    /// Records one sample per member; members who left lose their series.
    async fn record(&self, status: &Status, at_unix_ms: u64) -> Sample {
        let members = status.party.as_ref().map_or(&[][..], |p| &p.members[..]);
        let mut q = self.quality.lock().await;
        q.peers
            .retain(|k, _| members.iter().any(|m| m.public_key == *k));
        let Series { peers, order } = &mut *q;
        order.retain(|k| peers.contains_key(k));
        let mut sample = Sample {
            at_unix_ms,
            peers: Vec::with_capacity(members.len()),
        };
        for m in members {
            let (name, series) = peers.entry(m.public_key).or_insert_with(|| {
                order.push(m.public_key);
                (m.name.clone(), VecDeque::with_capacity(HISTORY))
            });
            name.clone_from(&m.name);
            if series.len() == HISTORY {
                series.pop_front();
            }
            series.push_back(QualitySample {
                at_unix_ms,
                latency_ms: m.latency_ms,
                path: m.path,
            });
            sample.peers.push(PeerSample {
                public_key: m.public_key,
                latency_ms: m.latency_ms,
                path: m.path,
            });
        }
        sample
    }
}

fn encode(e: &Event) -> Option<Utf8Bytes> {
    serde_json::to_string(e).ok().map(Utf8Bytes::from)
}

/// The hub: runs until the API stops.
pub async fn run(st: ApiState) {
    let mut stop = st.stop.subscribe();
    let mut last: [Option<Utf8Bytes>; 4] = Default::default();
    let mut trace_seen: Option<Instant> = None;
    let mut tick = tokio::time::interval(LAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    loop {
        let ticked = tokio::select! {
            _ = st.changes.notified() => false,
            _ = tick.tick() => true,
            _ = stop.changed() => return,
        };
        let sample_now = ticked && {
            ticks = ticks.wrapping_add(1);
            ticks.is_multiple_of(SAMPLE_EVERY)
        };
        let Some(view) = st.dataplane.lan().await else {
            return;
        };
        let mut parts = vec![(0, Event::Lan(routes::lan_status_of(&view)))];
        // Membership, control and names come with a wake-up; path and latency are read
        // with the per-second sample.
        let status = if !ticked || sample_now {
            Some(routes::build_status(&st).await)
        } else {
            None
        };
        if let Some(status) = &status {
            parts.push((1, Event::Status(status.clone())));
            parts.push((2, Event::Games(routes::build_games(&st).await)));
            if let Some(s) = routes::build_settings(&st).await {
                parts.push((3, Event::Settings(s)));
            }
        }
        for (slot, event) in parts {
            let Some(msg) = encode(&event) else { continue };
            if last[slot].as_ref() != Some(&msg) {
                last[slot] = Some(msg.clone());
                let _ = st.hub.tx.send(msg);
            }
        }
        let fresh = routes::trace_events(&st, &view, trace_seen).await;
        if let Some(newest) = view.trace.last() {
            trace_seen = Some(newest.at);
        }
        if !fresh.is_empty()
            && let Some(msg) = encode(&Event::LanEvents(fresh))
        {
            let _ = st.hub.tx.send(msg);
        }
        if sample_now && let Some(status) = &status {
            let now_ms = crate::games::now_ms();
            let sample = st.hub.record(status, now_ms).await;
            if let Some(msg) = encode(&Event::Sample(sample)) {
                let _ = st.hub.tx.send(msg);
            }
            for alert in st.metrics.record(now_ms / 1000, status).await {
                if let Some(msg) = encode(&Event::Alert(alert)) {
                    let _ = st.hub.tx.send(msg);
                }
            }
        }
    }
}

/// Everything a client needs to draw every page, sent on connect (and after falling
/// behind).
async fn snapshot(st: &ApiState) -> Vec<Utf8Bytes> {
    let mut events = vec![
        Event::Status(routes::build_status(st).await),
        Event::Games(routes::build_games(st).await),
    ];
    if let Some(view) = st.dataplane.lan().await {
        events.push(Event::Lan(routes::lan_status_of(&view)));
    }
    if let Some(s) = routes::build_settings(st).await {
        events.push(Event::Settings(s));
    }
    events.push(Event::Quality(st.hub.quality().await));
    events.iter().filter_map(encode).collect()
}

/// Live changes: `status`, `games`, `lan`, `settings`, `quality` on connect, then each as
/// it changes, `sample` every second and `lan_events` as broadcasts pass. Messages are
/// `{"type", "data"}` (the `Event` schema).
#[utoipa::path(get, path = "/api/v1/events", tag = "status",
    // The WebSocket handshake (RFC 6455 §4.1): without these headers it is a 400.
    params(
        ("connection" = String, Header, description = "a list with `Upgrade` in it",
            pattern = "^(?:.*,)?[ \\t]*[Uu][Pp][Gg][Rr][Aa][Dd][Ee][ \\t]*(?:,.*)?$"),
        ("upgrade" = String, Header, description = "`websocket`", pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"),
        ("sec-websocket-version" = String, Header, description = "`13`", pattern = "^13$"),
        ("sec-websocket-key" = String, Header, description = "16 random bytes in base64 (any value is taken)"),
    ),
    responses((status = 101, description = "WebSocket of `Event` messages"),
        (status = 400, description = "not a WebSocket upgrade", body = lanrage_proto::local::LocalError)))]
pub(super) async fn events(
    State(st): State<ApiState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => ws
            .max_message_size(64 * 1024)
            .on_upgrade(move |socket| stream(st, socket))
            .into_response(),
        Err(e) => error(
            400,
            "bad_request",
            format!("{}/events is a WebSocket: {}", super::PREFIX, e.body_text()),
        ),
    }
}

async fn stream(st: ApiState, mut socket: WebSocket) {
    let mut rx = st.hub.tx.subscribe();
    let mut stop = st.stop.subscribe();
    if *stop.borrow_and_update() {
        return; // upgraded after the daemon began stopping
    }
    let mut pending = snapshot(&st).await;
    loop {
        for msg in pending.drain(..) {
            // A client that stops reading must not hold the daemon's shutdown.
            tokio::select! {
                r = socket.send(Message::Text(msg)) => if r.is_err() { return },
                _ = stop.changed() => return,
            }
        }
        tokio::select! {
            r = rx.recv() => match r {
                Ok(msg) => pending.push(msg),
                Err(broadcast::error::RecvError::Lagged(_)) => pending = snapshot(&st).await,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                // The client only ever closes; anything else it sends is ignored.
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = stop.changed() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}
