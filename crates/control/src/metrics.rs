//! `GET /metrics` and the request middleware behind it: per-request correlation ids, one
//! span per request, request counts and latencies by route template.
//!
//! The numbers are this control plane's own (see `lanrage_proto::metrics` for why there is
//! no global recorder). Label sets stay bounded whatever clients send: routes are axum's
//! route templates (`/v1/parties/{id}/join`, never a raw path; `unmatched` otherwise),
//! methods outside the standard ones count as `other`, and status codes are the server's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lanrage_proto::metrics::{self, Exposition, Histogram, Kind};
use tracing::Instrument as _;

use crate::parties::Service;
use crate::store;

/// The header a request's correlation id travels in, both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-supplied request id kept; longer ones are replaced.
const MAX_REQUEST_ID: usize = 64;
/// The route label of requests no route matched (404s of the fallback).
const UNMATCHED: &str = "unmatched";
/// Request latency buckets, seconds: most answers take a millisecond; a write waiting on
/// SQLite's lock can take up to its 5 s busy timeout.
static LATENCY_BUCKETS: [f64; 7] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0];
/// Methods counted by name; anything else is `other`, so made-up methods add no series.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Request counts and latencies since start, by route template.
pub struct RequestStats {
    started: Instant,
    routes: Mutex<BTreeMap<String, RouteStats>>,
}

struct RouteStats {
    /// Requests by (method, status).
    counts: BTreeMap<(&'static str, u16), u64>,
    latency: Histogram,
}

impl Default for RequestStats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            routes: Mutex::default(),
        }
    }
}

impl RequestStats {
    fn record(&self, route: &str, method: &'static str, status: StatusCode, took: Duration) {
        let mut routes = self.lock();
        if !routes.contains_key(route) {
            routes.insert(
                route.to_owned(),
                RouteStats {
                    counts: BTreeMap::new(),
                    latency: Histogram::new(&LATENCY_BUCKETS),
                },
            );
        }
        let stats = routes
            .get_mut(route)
            .expect("the route's entry was inserted just above");
        *stats.counts.entry((method, status.as_u16())).or_default() += 1;
        stats.latency.observe(took.as_secs_f64());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RouteStats>> {
        // Each update is a single increment; a panic elsewhere leaves the map consistent.
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The middleware around every route: takes or makes the request id, runs the handler in
/// the request's span, counts the outcome and echoes the id on the response.
pub async fn track(State(svc): State<Arc<Service>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let method = method_label(req.method());
    let id = request_id(req.headers());
    // Made of token characters only, so always a valid header value.
    let id_header = HeaderValue::from_str(&id).ok();
    if let Some(v) = &id_header {
        req.headers_mut().insert(X_REQUEST_ID.clone(), v.clone());
    }
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        route = %route,
        party = tracing::field::Empty,
    );
    let mut response = next.run(req).instrument(span.clone()).await;
    let took = started.elapsed();
    let status = response.status();
    svc.requests.record(&route, method, status, took);
    if let Some(v) = id_header {
        response.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    let duration_ms = took.as_secs_f64() * 1e3;
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), duration_ms, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), duration_ms, "request");
        }
    });
    response
}

/// `GET /metrics`.
pub async fn handler(State(svc): State<Arc<Service>>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        render(&svc).await,
    )
        .into_response()
}

/// The control plane's metrics in the Prometheus text format.
pub async fn render(svc: &Service) -> String {
    let census = match svc.store.pool.acquire().await {
        Ok(mut c) => store::census(&mut c).await,
        Err(e) => Err(e),
    };
    let census = census
        .inspect_err(|e| tracing::warn!(error = %e, "metrics: cannot count parties"))
        .ok();
    let mut e = Exposition::new();
    e.family(
        "lanrage_control_database_up",
        Kind::Gauge,
        "1 if the last metrics scrape could read the database, else 0.",
    )
    .sample(&[], census.is_some());
    if let Some(c) = census {
        e.family(
            "lanrage_control_parties",
            Kind::Gauge,
            "Parties that exist.",
        )
        .sample(&[], c.parties);
        e.family(
            "lanrage_control_members",
            Kind::Gauge,
            "Party members, by state (away: no heartbeat for the away interval).",
        )
        .sample(&[("state", "online")], c.online)
        .sample(&[("state", "away")], c.away);
    }
    e.family(
        "lanrage_control_websockets",
        Kind::Gauge,
        "Open WebSocket connections of daemons.",
    )
    .sample(&[], svc.hub.connections());
    e.family(
        "lanrage_control_relays",
        Kind::Gauge,
        "Relays with a live registration.",
    )
    .sample(&[], svc.relays.live(Instant::now()).len());
    e.family(
        "lanrage_control_uptime_seconds",
        Kind::Gauge,
        "Seconds since this control plane started.",
    )
    .sample(&[], svc.requests.started.elapsed().as_secs_f64());
    let routes = svc.requests.lock();
    e.family(
        "lanrage_control_requests_total",
        Kind::Counter,
        "HTTP requests answered, by route template, method and status.",
    );
    for (route, stats) in routes.iter() {
        for ((method, status), n) in &stats.counts {
            let status = status.to_string();
            e.sample(
                &[
                    ("route", route.as_str()),
                    ("method", method),
                    ("status", &status),
                ],
                *n,
            );
        }
    }
    e.family(
        "lanrage_control_request_duration_seconds",
        Kind::Histogram,
        "Time from a request's arrival to its response's head, by route template.",
    );
    for (route, stats) in routes.iter() {
        e.histogram(&[("route", route.as_str())], &stats.latency);
    }
    drop(routes);
    e.finish()
}

/// The request's own id if it is a sane token (1 to 64 of `A-Za-z0-9-_.`), otherwise a
/// new UUID v7 (time-ordered, so ids sort by arrival in logs).
fn request_id(headers: &HeaderMap) -> String {
    let supplied = headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=MAX_REQUEST_ID).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    match supplied {
        Some(id) => id.to_owned(),
        None => uuid::Uuid::now_v7().to_string(),
    }
}

fn method_label(method: &Method) -> &'static str {
    KNOWN_METHODS
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            X_REQUEST_ID.clone(),
            HeaderValue::from_str(v).expect("value"),
        );
        h
    }

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        let long = "a".repeat(MAX_REQUEST_ID);
        for keep in ["abc-DEF_1.2", "7", long.as_str()] {
            assert_eq!(request_id(&with_id(keep)), keep);
        }
        let too_long = "a".repeat(MAX_REQUEST_ID + 1);
        for bad in ["", "a b", "x/y", "id;drop", "\"q\"", too_long.as_str()] {
            let id = request_id(&with_id(bad));
            let uuid = uuid::Uuid::parse_str(&id).expect("a UUID instead");
            assert_eq!(uuid.get_version_num(), 7, "{bad:?} → {id}");
        }
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }

    #[test]
    fn methods_outside_the_standard_ones_are_other() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let brew = Method::from_bytes(b"BREW").expect("an extension method");
        assert_eq!(method_label(&brew), "other");
    }
}
