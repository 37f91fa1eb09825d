//! The local API on loopback: status for anyone on this machine, party actions for holders
//! of the token in the state directory. `Host` and `Origin` are checked so a web page in the
//! player's browser cannot reach it through DNS rebinding or cross-site requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lanrage_proto::local::{
    API_TOKEN_HEADER, BindingLifetime, CreateRequest, JoinRequest, KickRequest, LanEvent,
    LanMember, LanSkipped, LanStatus, LanTrace, LanUpdate, LocalError as ErrorBody, LockRequest,
    MemberStatus, NatStatus, PartyStatus, PathKind, PortMappingStatus, Status, WireguardPeer,
    WireguardStatus,
};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, mpsc, oneshot};

use crate::dataplane::{DataPlane, LanView};
use crate::state::State as Store;
use crate::supervisor::{Command, LocalError, Shared};

/// The API's state.
#[derive(Clone)]
pub struct ApiState {
    cmds: mpsc::Sender<Command>,
    shared: Arc<RwLock<Shared>>,
    dataplane: DataPlane,
    state: Store,
    /// Serializes settings changes (read, save, apply).
    lan_lock: Arc<tokio::sync::Mutex<()>>,
    token: Arc<str>,
    port: u16,
    games: Arc<RwLock<crate::games::View>>,
}

impl ApiState {
    pub fn new(
        cmds: mpsc::Sender<Command>,
        shared: Arc<RwLock<Shared>>,
        dataplane: DataPlane,
        state: Store,
        token: String,
        port: u16,
    ) -> Self {
        Self {
            cmds,
            shared,
            dataplane,
            state,
            lan_lock: Arc::default(),
            token: token.into(),
            port,
            games: Arc::default(),
        }
    }

    /// Shows this game detector's findings.
    pub fn with_games(mut self, games: Arc<RwLock<crate::games::View>>) -> Self {
        self.games = games;
        self
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/party/create", post(create))
        .route("/v1/party/join", post(join))
        .route("/v1/party/leave", post(leave))
        .route("/v1/party/kick", post(kick))
        .route("/v1/party/lock", post(lock))
        .route("/v1/party/invite", get(invite))
        .route("/v1/lan", get(lan_status))
        .route("/v1/lan/settings", post(lan_settings))
        .route("/v1/lan/trace", get(lan_trace))
        .route("/v1/games", get(games_status))
        .route("/v1/games/profiles", get(games_profiles))
        .route("/v1/games/history", get(games_history))
        .route("/v1/games/library", get(games_library))
        .fallback(|| async { error(404, "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "local API stopped");
    }
}

fn error(status: u16, message: impl Into<String>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Host/Origin checks for everything; the token for anything that changes state or reveals
/// the invite secret.
async fn guard(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host_ok = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| allowed_host(h, st.port));
    if !host_ok {
        return error(
            403,
            "the local API only answers requests addressed to localhost",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|h| allowed_host(h, st.port));
        if !ok {
            return error(403, "cross-origin requests to the local API are refused");
        }
    }
    let needs_token = req.method() != Method::GET || req.uri().path() == "/v1/party/invite";
    if needs_token && !token_ok(headers, &st.token) {
        return error(
            401,
            "this call needs the local API token (the CLI reads it from the state directory)",
        );
    }
    next.run(req).await
}

fn allowed_host(host: &str, port: u16) -> bool {
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|name| host == format!("{name}:{port}"))
}

fn token_ok(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(API_TOKEN_HEADER).map(|v| v.as_bytes()) else {
        return false;
    };
    given.len() == token.len()
        && given
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn status(State(st): State<ApiState>) -> Response {
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
                        latency_ms: stats
                            .and_then(|s| s.srtt)
                            .map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
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
    let body = Status {
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
    };
    Json(body).into_response()
}

/// Sends a command to the supervisor and turns its answer into a response.
async fn ask<T: serde::Serialize>(
    st: &ApiState,
    make: impl FnOnce(oneshot::Sender<Result<T, LocalError>>) -> Command,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if st.cmds.send(make(tx)).await.is_err() {
        return error(503, "the daemon is shutting down");
    }
    match rx.await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(e.status, e.message),
        Err(_) => error(503, "the daemon is shutting down"),
    }
}

/// A JSON body whose rejection is a 400 with our error shape.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(error(
                400,
                format!("invalid request body: {}", e.body_text()),
            )),
        }
    }
}

async fn create(State(st): State<ApiState>, Body(req): Body<CreateRequest>) -> Response {
    ask(&st, |tx| Command::Create(req, tx)).await
}

async fn join(State(st): State<ApiState>, Body(req): Body<JoinRequest>) -> Response {
    ask(&st, |tx| Command::Join(req.invite, req.player_name, tx)).await
}

async fn leave(State(st): State<ApiState>) -> Response {
    ask(&st, Command::Leave).await
}

async fn kick(State(st): State<ApiState>, Body(req): Body<KickRequest>) -> Response {
    ask(&st, |tx| Command::Kick(req.member, tx)).await
}

async fn lock(State(st): State<ApiState>, Body(req): Body<LockRequest>) -> Response {
    ask(&st, |tx| Command::Lock(req.locked, tx)).await
}

async fn invite(State(st): State<ApiState>) -> Response {
    ask(&st, Command::Invite).await
}

async fn lan_status(State(st): State<ApiState>) -> Response {
    match st.dataplane.lan().await {
        Some(view) => Json(lan_status_of(&view)).into_response(),
        None => error(503, "the daemon is shutting down"),
    }
}

/// Applies a change to what LAN emulation forwards: saved first, then applied at once.
async fn lan_settings(State(st): State<ApiState>, Body(update): Body<LanUpdate>) -> Response {
    let _guard = st.lan_lock.lock().await;
    let Some(view) = st.dataplane.lan().await else {
        return error(503, "the daemon is shutting down");
    };
    let settings = match crate::lan::apply_update(&view.settings, &update) {
        Ok(s) => s,
        Err(message) => return error(400, message),
    };
    if let Err(e) = st
        .state
        .set_lan_settings(&crate::lan::from_core(&settings))
        .await
    {
        return error(
            500,
            format!("could not save the LAN settings (nothing changed): {e:#}"),
        );
    }
    st.dataplane.set_lan(settings).await;
    lan_status(State(st.clone())).await
}

async fn games_status(State(st): State<ApiState>) -> Response {
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
    Json(lanrage_proto::local::GamesStatus {
        detected: g.detected.clone(),
        party: g.party.clone(),
        tuning,
        last_scan_ms: g.last_scan_ms,
        scan_cpu_us: g.scan_cpu_us,
        scan_interval_s: g.scan_interval.as_secs_f64(),
    })
    .into_response()
}

async fn games_profiles(State(st): State<ApiState>) -> Response {
    let g = st.games.read().await;
    Json(lanrage_proto::local::ProfilesResponse {
        profiles: g.profiles.as_ref().clone(),
        errors: g.errors.clone(),
    })
    .into_response()
}

async fn games_history(State(st): State<ApiState>) -> Response {
    Json(st.games.read().await.history.clone()).into_response()
}

async fn games_library(State(st): State<ApiState>) -> Response {
    Json(st.games.read().await.library.clone()).into_response()
}

async fn lan_trace(State(st): State<ApiState>) -> Response {
    let Some(view) = st.dataplane.lan().await else {
        return error(503, "the daemon is shutting down");
    };
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
    let events = view
        .trace
        .iter()
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
        .collect();
    Json(LanTrace { events }).into_response()
}

fn lan_status_of(view: &LanView) -> LanStatus {
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use gotatun::x25519::{PublicKey, StaticSecret};
    use lanrage_proto::DeviceKey;
    use reqwest::StatusCode;

    use super::*;

    const TOKEN: &str = "test-token";

    /// Serves the API on a loopback port with a supervisor stand-in that answers every
    /// command; returns the address and the state directory (deleted when dropped).
    async fn serve_api() -> (SocketAddr, tempfile::TempDir) {
        crate::install_tls_provider();
        let secret = StaticSecret::from([5u8; 32]);
        let key = DeviceKey::from_bytes(PublicKey::from(&secret).to_bytes());
        let (dataplane, _task) = DataPlane::start(secret, 0, 1420, Vec::new(), false)
            .await
            .expect("data plane");
        let shared = Arc::new(RwLock::new(Shared {
            key,
            name: "tester".into(),
            host_mode: false,
            control_url: "http://127.0.0.1:1".into(),
            control: "idle".into(),
            party: None,
        }));
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                if let Command::Leave(reply) = cmd {
                    let _ = reply.send(Err(LocalError {
                        status: 409,
                        message: "not in a party".into(),
                    }));
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).await.expect("state");
        let state = ApiState::new(tx, shared, dataplane, store, TOKEN.into(), addr.port());
        tokio::spawn(serve(listener, state, std::future::pending()));
        (addr, dir)
    }

    #[tokio::test]
    async fn status_is_open_and_reports_no_party() {
        let (addr, _dir) = serve_api().await;
        let resp = reqwest::get(format!("http://{addr}/v1/status"))
            .await
            .expect("get");
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Status = resp.json().await.expect("status json");
        assert!(body.party.is_none() && body.virtual_ip.is_none());
        assert_eq!(body.name, "tester");
        assert!(body.wireguard.peers.is_empty());
    }

    #[tokio::test]
    async fn foreign_host_and_origin_are_refused() {
        let (addr, _dir) = serve_api().await;
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/v1/status");
        // DNS rebinding: a page on evil.example resolved to 127.0.0.1.
        let resp = http
            .get(&url)
            .header("host", format!("evil.example:{}", addr.port()))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        // Right host, wrong port: another local service's name is not ours.
        let resp = http
            .get(&url)
            .header("host", "127.0.0.1:1")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        // CSRF: a cross-site page posting to the API, even with a stolen token.
        let resp = http
            .post(format!("http://{addr}/v1/party/leave"))
            .header("origin", "http://evil.example")
            .header(API_TOKEN_HEADER, TOKEN)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let resp = http
            .get(&url)
            .header("origin", format!("http://localhost:{}", addr.port()))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn mutating_calls_and_the_invite_need_the_token() {
        let (addr, _dir) = serve_api().await;
        let http = reqwest::Client::new();
        for (method, path) in [
            (reqwest::Method::POST, "/v1/party/leave"),
            (reqwest::Method::POST, "/v1/party/create"),
            (reqwest::Method::GET, "/v1/party/invite"),
        ] {
            let url = format!("http://{addr}{path}");
            let resp = http
                .request(method.clone(), &url)
                .send()
                .await
                .expect("send");
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{path} without token"
            );
            let resp = http
                .request(method, &url)
                .header(API_TOKEN_HEADER, "wrong")
                .send()
                .await
                .expect("send");
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{path} with a wrong token"
            );
        }
        // With the token the command reaches the supervisor and its answer comes back.
        let resp = http
            .post(format!("http://{addr}/v1/party/leave"))
            .header(API_TOKEN_HEADER, TOKEN)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        let body: ErrorBody = resp.json().await.expect("error json");
        assert_eq!(body.error, "not in a party");
        // A malformed body is a 400 with a sentence, not a crash.
        let resp = http
            .post(format!("http://{addr}/v1/party/join"))
            .header(API_TOKEN_HEADER, TOKEN)
            .header("content-type", "application/json")
            .body("{\"invite\": 42}")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: ErrorBody = resp.json().await.expect("error json");
        assert!(
            body.error.starts_with("invalid request body"),
            "{}",
            body.error
        );
    }

    #[tokio::test]
    async fn lan_settings_are_validated_saved_and_applied() {
        let (addr, dir) = serve_api().await;
        let http = reqwest::Client::new();
        let url = format!("http://{addr}/v1/lan/settings");
        let post = |body: serde_json::Value, token: Option<&str>| {
            let mut req = http.post(&url).json(&body);
            if let Some(t) = token {
                req = req.header(API_TOKEN_HEADER, t);
            }
            req.send()
        };
        let resp = post(serde_json::json!({"allow_ports": [27960]}), None)
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        for (body, needle) in [
            (serde_json::json!({"allow_ports": [0]}), "port 0"),
            (serde_json::json!({"allow_ports": ["x"]}), "allow_ports"),
            (
                serde_json::json!({"allow_groups": ["10.0.0.1"]}),
                "10.0.0.1",
            ),
            (
                serde_json::json!({"rate_bytes_per_s": 10}),
                "rate_bytes_per_s",
            ),
            (serde_json::json!({"everything": true}), "everything"),
        ] {
            let resp = post(body.clone(), Some(TOKEN)).await.expect("send");
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
            let err: ErrorBody = resp.json().await.expect("error json");
            assert!(err.error.contains(needle), "{body}: {}", err.error);
        }
        let resp = post(
            serde_json::json!({"allow_ports": [27960], "allow_groups": ["239.1.2.3"], "rate_packets_per_s": 50}),
            Some(TOKEN),
        )
        .await
        .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let status: LanStatus = resp.json().await.expect("lan json");
        assert!(status.forwarded_ports.contains(&27960));
        assert!(status.forwarded_ports.contains(&7777), "defaults stay");
        assert!(
            status
                .forwarded_groups
                .contains(&std::net::Ipv4Addr::new(239, 1, 2, 3))
        );
        assert_eq!(status.settings.rate_packets_per_s, 50);
        // Saved for the next start.
        let store = Store::open(dir.path()).await.expect("state");
        let saved = store.lan_settings().await.expect("read").expect("saved");
        assert_eq!(saved, status.settings);
        // And readable by anyone on the machine, as is the trace.
        let resp = http
            .get(format!("http://{addr}/v1/lan"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = http
            .get(format!("http://{addr}/v1/lan/trace"))
            .send()
            .await
            .expect("send");
        let trace: LanTrace = resp.json().await.expect("trace json");
        assert!(trace.events.is_empty());
    }
}
