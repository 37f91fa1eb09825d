//! The `/api/v1` handlers. Each one's `#[utoipa::path]` is its entry in the OpenAPI
//! document; the router is built from the same list, so the two cannot drift apart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use lanrage_proto::local::{
    BindingLifetime, CreateRequest, Done, GamesStatus, InviteResponse, JoinRequest, KickRequest,
    LanEvent, LanMember, LanSkipped, LanStatus, LanTrace, LanUpdate, LocalError as ErrorBody,
    LockRequest, MemberStatus, NatStatus, PartyStatus, PathKind, PortMappingStatus,
    ProfilesResponse, Quality, Settings, SettingsUpdate, Status, WireguardPeer, WireguardStatus,
};
use tokio::sync::oneshot;

use super::{ApiState, error};
use crate::dataplane::LanView;
use crate::supervisor::{Command, LocalError};

/// What `GET /status` and the `status` event show.
/// Two decimals: what a person reads, and stable JSON for the event stream's diffing.
pub(crate) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub(super) async fn build_status(st: &ApiState) -> Status {
    let shared = st.shared.read().await.clone();
    let (games, profiles) = {
        let g = st.games.read().await;
        (g.detected.clone(), Arc::clone(&g.profiles))
    };
    let game_name = |id: &String| lanrage_proto::local::PlayingGame {
        id: id.clone(),
        name: profiles
            .iter()
            .find(|p| &p.id == id)
            .map_or_else(|| id.clone(), |p| p.name.clone()),
    };
    let dp = st.dataplane.stats().await;
    let me = shared.key;
    let virtual_ip = shared.party.as_ref().and_then(|p| {
        p.members
            .iter()
            .find(|m| m.public_key == me)
            .map(|m| m.virtual_ip)
    });
    let party = shared.party.as_ref().map(|p| {
        let host = p.members.iter().find(|m| m.public_key == p.host);
        PartyStatus {
            id: p.id,
            name: p.name.clone(),
            host: host.map(|h| h.name.clone()).unwrap_or_default(),
            host_public_key: p.host,
            is_host: p.host == me,
            player_name: p
                .members
                .iter()
                .find(|m| m.public_key == me)
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            locked: p.locked,
            version: p.version,
            members: p
                .members
                .iter()
                .filter(|m| m.public_key != me)
                .map(|m| {
                    let stats = dp.peers.iter().find(|s| s.key == m.public_key);
                    MemberStatus {
                        name: m.name.clone(),
                        virtual_ip: m.virtual_ip,
                        public_key: m.public_key,
                        path: stats.map_or(PathKind::Connecting, |s| s.path),
                        // The moving average once a second has closed; until then the
                        // median of the first probes.
                        latency_ms: stats
                            .and_then(|s| {
                                s.quality
                                    .latency_ms
                                    .or(s.srtt.map(|d| d.as_secs_f64() * 1e3))
                            })
                            .map(round2),
                        jitter_ms: stats.and_then(|s| s.quality.jitter_ms).map(round2),
                        loss_pct: stats.and_then(|s| s.quality.loss_pct).map(round2),
                        quality: stats.and_then(|s| s.quality.score),
                        trend: stats.map(|s| s.quality.trend).unwrap_or_default(),
                        rx_bytes: stats.map_or(0, |s| s.rx_bytes),
                        tx_bytes: stats.map_or(0, |s| s.tx_bytes),
                        rx_packets: stats.map_or(0, |s| s.rx_packets),
                        tx_packets: stats.map_or(0, |s| s.tx_packets),
                        online: m.online,
                        endpoint: stats.and_then(|s| s.endpoint).map(|r| r.peer_addr()),
                        relay: stats.and_then(|s| s.relay),
                        path_changes: stats.map_or(0, |s| s.path_changes),
                        games: m.games.iter().map(game_name).collect(),
                    }
                })
                .collect(),
        }
    });
    let nat = dp.nat.as_ref().map(|n| NatStatus {
        mapping: serde_json::to_value(n.mapping)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        filtering: serde_json::to_value(n.filtering)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        public_addr: n.public_addr,
        port_preserved: n.port_preserved,
        binding_lifetime: dp.binding_lifetime.map(|l| BindingLifetime {
            at_least_s: l.at_least.as_secs_f64(),
            below_s: l.below.map(|b| b.as_secs_f64()),
            measuring: !l.done,
        }),
        keepalive_s: dp.keepalive.as_secs_f64(),
    });
    let now = std::time::Instant::now();
    let port_mapping = dp
        .port_mapping
        .zip(dp.gateway)
        .map(|(m, gateway)| PortMappingStatus {
            protocol: m.protocol.as_str().to_owned(),
            external: SocketAddr::V4(m.external),
            gateway,
            expires_in_s: m.expires.saturating_duration_since(now).as_secs(),
        });
    Status {
        games,
        nat,
        port_mapping,
        relayed: dp.relayed.clone(),
        virtual_ip,
        public_key: me,
        name: shared.name,
        host_mode: shared.host_mode,
        control_url: shared.control_url,
        control: shared.control,
        party,
        wireguard: WireguardStatus {
            listen_port: st.dataplane.port,
            interface: dp.interface,
            peers: dp
                .peers
                .iter()
                .map(|p| WireguardPeer {
                    public_key: p.key,
                    virtual_ip: p.virtual_ip,
                    endpoint: p.endpoint.map(|r| r.peer_addr()),
                    last_handshake_s: p.last_handshake.map(|d: Duration| d.as_secs()),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                })
                .collect(),
            dropped_spoofed: dp.dropped_spoofed,
        },
    }
}

/// This device, its party with each member's path and latency, NAT and WireGuard.
#[utoipa::path(get, path = "/api/v1/status", tag = "status",
    responses((status = 200, body = Status)))]
pub(super) async fn status(State(st): State<ApiState>) -> Json<Status> {
    Json(build_status(&st).await)
}

/// Sends a command to the supervisor and turns its answer into a response.
async fn ask<T: serde::Serialize>(
    st: &ApiState,
    make: impl FnOnce(oneshot::Sender<Result<T, LocalError>>) -> Command,
) -> Response {
    match ask_raw(st, make).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(e.status, &e.code, e.message),
    }
}

async fn ask_raw<T>(
    st: &ApiState,
    make: impl FnOnce(oneshot::Sender<Result<T, LocalError>>) -> Command,
) -> Result<T, LocalError> {
    let (tx, rx) = oneshot::channel();
    let gone = || LocalError::new(503, "unavailable", "the daemon is shutting down");
    st.cmds.send(make(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

/// A JSON body whose rejection is a 4xx in our error shape, naming the field at fault.
pub(super) struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let Json(value) = Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(|e| body_error(&e))?;
        // serde would also build a struct from `[]` or `null`; a body is one JSON object.
        if !value.is_object() {
            return Err(error(
                400,
                "bad_request",
                "invalid request body: expected a JSON object {…}",
            ));
        }
        serde_path_to_error::deserialize(integral_numbers(value))
            .map(Body)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = if path == "." {
                    format!("invalid request body: {inner}")
                } else {
                    format!("invalid request body: {path}: {inner}")
                };
                error(400, "bad_request", message)
            })
    }
}

/// JSON has one number type: `2.0` is the integer 2 (JSON Schema says so too), but serde
/// would refuse it for an integer field. Whole numbers become integers before the fields
/// are read; anything with a fraction stays as it is (and is refused where an integer is
/// expected).
fn integral_numbers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) => match n.as_f64() {
            // Only where f64 is exact, so no value changes on the way.
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                }
            }
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(integral_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, integral_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

fn body_error(e: &JsonRejection) -> Response {
    let text = e.body_text();
    // axum's wording around serde's (which names the field: `lan.ports[0]: invalid type …`).
    let detail = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .or_else(|| text.strip_prefix("Failed to parse the request body as JSON: "))
        .unwrap_or(&text);
    match e {
        JsonRejection::MissingJsonContentType(_) => error(
            415,
            "unsupported_media_type",
            "send the body as JSON with `content-type: application/json`",
        ),
        JsonRejection::BytesRejection(_) if e.status().as_u16() == 413 => error(
            413,
            "payload_too_large",
            format!(
                "the request body is larger than {} KiB",
                super::BODY_LIMIT / 1024
            ),
        ),
        _ => error(
            400,
            "bad_request",
            format!("invalid request body: {detail}"),
        ),
    }
}

const ERRORS: &str = "JSON `{\"error\": {\"code\", \"message\"}}`";

/// Creates a party with this device as host; the answer carries the invite code.
#[utoipa::path(post, path = "/api/v1/party/create", tag = "party", request_body = CreateRequest,
    security(("token" = [])),
    responses((status = 200, body = InviteResponse),
        (status = "4XX", description = ERRORS, body = ErrorBody),
        (status = 502, description = "the control plane cannot be reached", body = ErrorBody)))]
pub(super) async fn create(State(st): State<ApiState>, Body(req): Body<CreateRequest>) -> Response {
    let checked = lanrage_proto::local::check_name(&req.name, 64, "name").and_then(|()| {
        req.player_name
            .as_deref()
            .map_or(Ok(()), |n| check_player_name(n).map(drop))
    });
    if let Err(message) = checked {
        return error(400, "bad_request", message);
    }
    ask(&st, |tx| Command::Create(req, tx)).await
}

/// Joins the party an invite code names (leaving the current one only once admitted).
#[utoipa::path(post, path = "/api/v1/party/join", tag = "party", request_body = JoinRequest,
    security(("token" = [])),
    responses((status = 200, body = InviteResponse),
        (status = "4XX", description = "invite_invalid, invite_expired, party_full, party_locked, …", body = ErrorBody),
        (status = 502, description = "the control plane cannot be reached", body = ErrorBody)))]
pub(super) async fn join(State(st): State<ApiState>, Body(req): Body<JoinRequest>) -> Response {
    if let Err(e) = lanrage_proto::InviteCode::check_shape(&req.invite) {
        return error(
            400,
            "invite_invalid",
            format!("{e}; copy the whole code the host shared (it starts with lr1-)"),
        );
    }
    if let Some(Err(message)) = req.player_name.as_deref().map(check_player_name) {
        return error(400, "bad_request", message);
    }
    ask(&st, |tx| Command::Join(req.invite, req.player_name, tx)).await
}

/// Leaves the party.
#[utoipa::path(post, path = "/api/v1/party/leave", tag = "party", security(("token" = [])),
    responses((status = 200, body = Done), (status = "4XX", description = ERRORS, body = ErrorBody)))]
pub(super) async fn leave(State(st): State<ApiState>) -> Response {
    done(ask_raw(&st, Command::Leave).await)
}

/// Removes a member (by name or public key); host only.
#[utoipa::path(post, path = "/api/v1/party/kick", tag = "party", request_body = KickRequest,
    security(("token" = [])),
    responses((status = 200, body = Done), (status = "4XX", description = ERRORS, body = ErrorBody)))]
pub(super) async fn kick(State(st): State<ApiState>, Body(req): Body<KickRequest>) -> Response {
    done(ask_raw(&st, |tx| Command::Kick(req.member, tx)).await)
}

/// Locks (nobody new can join) or unlocks the party; host only.
#[utoipa::path(post, path = "/api/v1/party/lock", tag = "party", request_body = LockRequest,
    security(("token" = [])),
    responses((status = 200, body = Done), (status = "4XX", description = ERRORS, body = ErrorBody)))]
pub(super) async fn lock(State(st): State<ApiState>, Body(req): Body<LockRequest>) -> Response {
    done(ask_raw(&st, |tx| Command::Lock(req.locked, tx)).await)
}

fn done(r: Result<(), LocalError>) -> Response {
    match r {
        Ok(()) => Json(Done { ok: true }).into_response(),
        Err(e) => error(e.status, &e.code, e.message),
    }
}

/// The current party's invite code (it carries the party secret, hence the token).
#[utoipa::path(get, path = "/api/v1/party/invite", tag = "party", security(("token" = [])),
    responses((status = 200, body = InviteResponse), (status = "4XX", description = ERRORS, body = ErrorBody)))]
pub(super) async fn invite(State(st): State<ApiState>) -> Response {
    ask(&st, Command::Invite).await
}

/// What LAN emulation forwards, and its counters.
#[utoipa::path(get, path = "/api/v1/lan", tag = "lan",
    responses((status = 200, body = LanStatus), (status = 503, body = ErrorBody)))]
pub(super) async fn lan_status(State(st): State<ApiState>) -> Response {
    match st.dataplane.lan().await {
        Some(view) => Json(lan_status_of(&view)).into_response(),
        None => shutting_down(),
    }
}

fn shutting_down() -> Response {
    error(503, "unavailable", "the daemon is shutting down")
}

/// Adds or removes forwarded ports and groups (`lanrage lan …`): saved, then applied.
#[utoipa::path(post, path = "/api/v1/lan/settings", tag = "lan", request_body = LanUpdate,
    security(("token" = [])),
    responses((status = 200, body = LanStatus), (status = "4XX", description = ERRORS, body = ErrorBody)))]
pub(super) async fn lan_settings(
    State(st): State<ApiState>,
    Body(update): Body<LanUpdate>,
) -> Response {
    let _guard = st.settings_lock.lock().await;
    let Some(view) = st.dataplane.lan().await else {
        return shutting_down();
    };
    let settings = match crate::lan::apply_update(&view.settings, &update) {
        Ok(s) => s,
        Err(message) => return error(400, "bad_request", message),
    };
    if let Err(e) = st
        .state
        .set_lan_settings(&crate::lan::from_core(&settings))
        .await
    {
        return storage_error(&e);
    }
    st.dataplane.set_lan(settings).await;
    st.changes.notify_one();
    lan_status(State(st.clone())).await
}

fn storage_error(e: &anyhow::Error) -> Response {
    error(
        500,
        "storage",
        format!("could not save the settings, nothing changed (is the disk full?): {e:#}"),
    )
}

/// The settings page: the player name and LAN emulation.
#[utoipa::path(get, path = "/api/v1/settings", tag = "settings",
    responses((status = 200, body = Settings), (status = 503, body = ErrorBody)))]
pub(super) async fn get_settings(State(st): State<ApiState>) -> Response {
    match build_settings(&st).await {
        Some(s) => Json(s).into_response(),
        None => shutting_down(),
    }
}

pub(super) async fn build_settings(st: &ApiState) -> Option<Settings> {
    let lan = st.dataplane.lan().await?;
    Some(Settings {
        player_name: st.shared.read().await.name.clone(),
        lan: crate::lan::from_core(&lan.settings),
    })
}

/// Changes settings: absent fields stay, lists replace the whole list. All of it is checked
/// before any of it is saved; a 400 names the field.
#[utoipa::path(patch, path = "/api/v1/settings", tag = "settings", request_body = SettingsUpdate,
    security(("token" = [])),
    responses((status = 200, body = Settings), (status = "4XX", description = ERRORS, body = ErrorBody)))]
pub(super) async fn patch_settings(
    State(st): State<ApiState>,
    Body(update): Body<SettingsUpdate>,
) -> Response {
    let _guard = st.settings_lock.lock().await;
    let name = match update.player_name.as_deref().map(check_player_name) {
        Some(Err(message)) => return error(400, "bad_request", message),
        Some(Ok(n)) => Some(n),
        None => None,
    };
    let Some(view) = st.dataplane.lan().await else {
        return shutting_down();
    };
    let lan = match update
        .lan
        .as_ref()
        .map(|p| crate::lan::apply_patch(&view.settings, p))
    {
        Some(Err(message)) => return error(400, "bad_request", message),
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let saved_lan = lan.as_ref().map(crate::lan::from_core);
    if let Err(e) = st
        .state
        .save_settings(name.as_deref(), saved_lan.as_ref())
        .await
    {
        return storage_error(&e);
    }
    if let Some(lan) = lan {
        st.dataplane.set_lan(lan).await;
    }
    if let Some(name) = name
        && let Err(e) = ask_raw(&st, |tx| Command::SetName(name, tx)).await
    {
        return error(e.status, &e.code, e.message);
    }
    st.changes.notify_one();
    get_settings(State(st.clone())).await
}

/// The control plane's rule: 1 to 32 characters, no control characters.
/// A player name as the document describes it (no trimming: what is sent is what counts).
fn check_player_name(name: &str) -> Result<String, String> {
    lanrage_proto::local::check_name(name, 32, "player_name")?;
    Ok(name.to_owned())
}

/// Games running here, what the party plays, and the tuning in force.
#[utoipa::path(get, path = "/api/v1/games", tag = "games", responses((status = 200, body = GamesStatus)))]
pub(super) async fn games_status(State(st): State<ApiState>) -> Json<GamesStatus> {
    Json(build_games(&st).await)
}

pub(super) async fn build_games(st: &ApiState) -> GamesStatus {
    let dp = st.dataplane.stats().await;
    let g = st.games.read().await;
    let tuning = dp.games.as_ref().map(|t| lanrage_proto::local::GameTuning {
        priority_ports: t.priority.ranges().to_vec(),
        dscp: if t.priority.is_empty() {
            0
        } else {
            lanrage_proto::games::Priority::High.dscp()
        },
        lan_ports: t.lan.ports.iter().copied().collect(),
        lan_groups: t.lan.groups.iter().copied().collect(),
        mtu: dp.mtu,
        keepalive_s: dp.keepalive.as_secs_f64(),
    });
    GamesStatus {
        detected: g.detected.clone(),
        party: g.party.clone(),
        tuning,
        last_scan_ms: g.last_scan_ms,
        scan_cpu_us: g.scan_cpu_us,
        scan_interval_s: g.scan_interval.as_secs_f64(),
    }
}

/// Every game profile loaded, and the problems in profile files.
#[utoipa::path(get, path = "/api/v1/games/profiles", tag = "games",
    responses((status = 200, body = ProfilesResponse)))]
pub(super) async fn games_profiles(State(st): State<ApiState>) -> Json<ProfilesResponse> {
    let g = st.games.read().await;
    Json(ProfilesResponse {
        profiles: g.profiles.as_ref().clone(),
        errors: g.errors.clone(),
    })
}

/// Games started and stopped on this device, oldest first.
#[utoipa::path(get, path = "/api/v1/games/history", tag = "games",
    responses((status = 200, body = [lanrage_proto::games::GameEvent])))]
pub(super) async fn games_history(
    State(st): State<ApiState>,
) -> Json<Vec<lanrage_proto::games::GameEvent>> {
    Json(st.games.read().await.history.clone())
}

/// Games installed in local Steam libraries.
#[utoipa::path(get, path = "/api/v1/games/library", tag = "games",
    responses((status = 200, body = [crate::games::Installed])))]
pub(super) async fn games_library(
    State(st): State<ApiState>,
) -> Json<Vec<crate::games::Installed>> {
    Json(st.games.read().await.library.clone())
}

/// Each member's latency and path, one sample a second, for the last five minutes.
#[utoipa::path(get, path = "/api/v1/quality", tag = "status", responses((status = 200, body = Quality)))]
pub(super) async fn quality(State(st): State<ApiState>) -> Json<Quality> {
    Json(st.hub.quality().await)
}

/// Which window of history to answer for.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WindowQuery {
    /// `5m`, `1h`, `24h` (or seconds, or `Nd`); default `5m`. Longer than the 30 days kept
    /// answers those 30 days.
    #[param(pattern = "^[1-9][0-9]{0,6}[smhd]?$")]
    window: Option<String>,
}

/// Each member's latency, jitter, loss and score over a window, from the daemon's
/// bounded series (seconds for the last hour, minutes for a day, hours for a month).
#[utoipa::path(get, path = "/api/v1/quality/history", tag = "status", params(WindowQuery),
    responses((status = 200, body = lanrage_proto::local::QualityHistory),
        (status = 400, description = "bad window", body = lanrage_proto::local::LocalError)))]
pub(super) async fn quality_history(
    State(st): State<ApiState>,
    query: Result<axum::extract::Query<WindowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let window = match query {
        Ok(q) => q.0.window,
        Err(e) => return error(400, "bad_request", e.body_text()),
    };
    let Some(secs) = crate::metrics::parse_window(window.as_deref().unwrap_or("5m")) else {
        return error(400, "bad_window", "window must be like 5m, 1h or 24h");
    };
    let status = build_status(&st).await;
    let now = crate::games::now_ms() / 1000;
    Json(st.metrics.history(now, secs, &status).await).into_response()
}

/// Prometheus text: members by path, each member's latency, jitter, loss, score, bytes,
/// packets and handshakes, LAN fan-out, and the daemon's own store and series.
pub(super) async fn metrics(State(st): State<ApiState>) -> Response {
    let status = build_status(&st).await;
    let dp = st.dataplane.stats().await;
    let lan = st.dataplane.lan().await.map(|v| lan_status_of(&v).counters);
    let writes = st.state.writes();
    let text = crate::metrics::render(&crate::metrics::Scrape {
        status: &status,
        peers: &dp.peers,
        lan: lan.as_ref(),
        dropped_spoofed: dp.dropped_spoofed,
        handshakes_cookied: dp.wg_counters.handshakes_cookied,
        handshakes_dropped: dp.wg_counters.handshakes_dropped,
        store_transactions: writes.transactions(),
        store_failures: writes.failures(),
        series: st.metrics.footprint().await,
        thresholds: st.metrics.thresholds,
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            lanrage_proto::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
pub(super) async fn openapi(State(st): State<ApiState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        st.openapi.get().cloned().unwrap_or_default(),
    )
        .into_response()
}

/// The last broadcast and multicast packets and what became of each.
#[utoipa::path(get, path = "/api/v1/lan/trace", tag = "lan",
    responses((status = 200, body = LanTrace), (status = 503, body = ErrorBody)))]
pub(super) async fn lan_trace(State(st): State<ApiState>) -> Response {
    let Some(view) = st.dataplane.lan().await else {
        return shutting_down();
    };
    Json(LanTrace {
        events: trace_events(&st, &view, None).await,
    })
    .into_response()
}

/// The trace entries newer than `since` as the API shows them.
pub(super) async fn trace_events(
    st: &ApiState,
    view: &LanView,
    since: Option<Instant>,
) -> Vec<LanEvent> {
    let shared = st.shared.read().await;
    let name_of = |ip: std::net::Ipv4Addr| {
        shared
            .party
            .as_ref()
            .and_then(|p| p.members.iter().find(|m| m.virtual_ip == ip))
            .map(|m| m.name.clone())
    };
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    view.trace
        .iter()
        .filter(|e| since.is_none_or(|s| e.at > s))
        .map(|e| {
            let ago = view.now.saturating_duration_since(e.at);
            let at_unix_ms = wall.saturating_sub(ago).as_millis();
            let incoming = e.via == lanrage_core::lan::Via::Peer;
            LanEvent {
                at_unix_ms: u64::try_from(at_unix_ms).unwrap_or(u64::MAX),
                direction: if incoming { "in" } else { "out" }.into(),
                via: e.via.as_str().into(),
                kind: e.datagram.kind.as_str().into(),
                src: e.datagram.src,
                dst: e.datagram.dst,
                size: e.datagram.size,
                from: incoming.then(|| LanMember {
                    ip: *e.datagram.src.ip(),
                    name: name_of(*e.datagram.src.ip()),
                }),
                sent_to: e
                    .sent_to
                    .iter()
                    .map(|&ip| LanMember {
                        ip,
                        name: name_of(ip),
                    })
                    .collect(),
                skipped: e
                    .skipped
                    .iter()
                    .map(|&(ip, why)| LanSkipped {
                        ip,
                        name: name_of(ip),
                        reason: why.as_str().into(),
                    })
                    .collect(),
                dropped: e.dropped.map(|d| d.as_str().into()),
            }
        })
        .collect()
}

pub(super) fn lan_status_of(view: &LanView) -> LanStatus {
    LanStatus {
        settings: crate::lan::from_core(&view.settings),
        forwarded_ports: view.ports.iter().copied().collect(),
        forwarded_groups: view.groups.iter().copied().collect(),
        default_ports: lanrage_core::lan::DEFAULT_PORTS.to_vec(),
        profile_ports: view.profile_ports.iter().copied().collect(),
        joined_groups: view.joined.iter().copied().collect(),
        physical_capture: view.physical,
        physical_error: view.physical_error.clone(),
        counters: view.counters,
    }
}
