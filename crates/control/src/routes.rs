//! HTTP routes: extraction, authentication and error mapping around the domain functions.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::{SinkExt as _, StreamExt as _};
use lanrage_proto::PartyId;
use lanrage_proto::api::{
    CandidatesRequest, ChallengeRequest, ClientMessage, CreatePartyRequest, JoinPartyRequest,
    KickRequest, LockRequest, RelayHeartbeatReply, RelayRegistration, ServerMessage, TokenRequest,
};
use serde_json::json;
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::parties::Service;

type Svc = State<Arc<Service>>;

/// Server-initiated WebSocket ping interval; a dead peer is noticed by the failed send.
const WS_PING_EVERY: Duration = Duration::from_secs(20);

pub fn router(svc: Arc<Service>) -> Router {
    let mut router = Router::new();
    if svc.config.metrics {
        // No authentication: operators firewall it or expose it only to their scraper
        // (docs/observability.md).
        router = router.route("/metrics", get(crate::metrics::handler));
    }
    router
        .route("/v1/health", get(health))
        .route("/v1/auth/challenge", post(challenge))
        .route("/v1/auth/token", post(token))
        .route("/v1/auth/renew", post(renew))
        .route("/v1/parties", post(create))
        .route("/v1/parties/{id}", get(view))
        .route("/v1/parties/{id}/join", post(join))
        .route("/v1/parties/{id}/leave", post(leave))
        .route("/v1/parties/{id}/kick", post(kick))
        .route("/v1/parties/{id}/lock", post(lock))
        .route("/v1/parties/{id}/heartbeat", post(heartbeat))
        .route("/v1/parties/{id}/candidates", put(candidates))
        .route("/v1/parties/{id}/invite", get(invite))
        .route("/v1/ws", get(ws))
        .route("/v1/ice", get(ice))
        .route("/v1/relays", post(register_relay))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // A request that drips its body in keeps a connection and a task; bound it.
        .layer(axum::middleware::from_fn_with_state(
            svc.config.limits.request_timeout,
            request_timeout,
        ))
        // A layer of the router, not around it: it runs after routing, so it sees the
        // matched route template; it also wraps the fallbacks.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&svc),
            crate::metrics::track,
        ))
        .with_state(svc)
}

/// A JSON body whose rejection is a 400 with our error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_error(e)),
        }
    }
}

fn json_error(e: JsonRejection) -> ApiError {
    ApiError::bad_request(format!("invalid request body: {}", e.body_text()))
}

/// The authenticated device: from `Authorization: Bearer …` (or `?token=` on the WebSocket,
/// where browsers cannot set headers).
pub struct Device(pub lanrage_proto::DeviceKey);

impl FromRequestParts<Arc<Service>> for Device {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, svc: &Arc<Service>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let token = match header {
            Some(h) => h
                .strip_prefix("Bearer ")
                .ok_or_else(|| {
                    ApiError::unauthorized("the Authorization header must be \"Bearer <token>\"")
                })?
                .to_owned(),
            // Only the WebSocket takes the token in the URL (browsers cannot set headers
            // there); everywhere else it would only end up in logs.
            None if parts.uri.path() == "/v1/ws" => parts
                .uri
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
                .map(str::to_owned)
                .ok_or_else(|| ApiError::unauthorized("sign in first: no bearer token given"))?,
            None => {
                return Err(ApiError::unauthorized(
                    "sign in first: no bearer token given",
                ));
            }
        };
        let device = svc.authenticate(&token).await?;
        parts.extensions.insert(Bearer(token));
        Ok(Device(device))
    }
}

/// The bearer token the request was authenticated with (after [`Device`]).
#[derive(Clone)]
pub struct Bearer(pub String);

/// The party id in the path.
pub struct Party(pub PartyId);

impl<S: Send + Sync> FromRequestParts<S> for Party {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        let id: PartyId = raw
            .parse()
            .map_err(|e| ApiError::bad_request(format!("invalid party id: {e}")))?;
        // The request's span (crate::metrics::track) names the party from here on, so every
        // log line of a join, leave or kick carries it.
        tracing::Span::current().record("party", tracing::field::display(&id));
        Ok(Party(id))
    }
}

/// Answers 408 when a request (reading its body included) outlasts `limit`.
async fn request_timeout(
    State(limit): State<Duration>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long to arrive",
        )
        .into_response(),
    }
}

/// The client's IP address (from the accept loop); unspecified when served some other way,
/// which then shares one set of quotas.
pub struct PeerIp(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
        Ok(PeerIp(ip))
    }
}

/// `http://<Host>`: where this client reached us, for invite codes.
pub struct BaseUrl(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BaseUrl {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        Ok(BaseUrl(format!("http://{host}")))
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(
        json!({"status": "ok", "service": "lanrage-control", "version": env!("CARGO_PKG_VERSION")}),
    )
}

async fn challenge(
    State(svc): Svc,
    PeerIp(ip): PeerIp,
    ApiJson(req): ApiJson<ChallengeRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(svc.challenge(req.public_key, ip)?).into_response())
}

async fn token(
    State(svc): Svc,
    PeerIp(ip): PeerIp,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(svc.token(req, ip).await?).into_response())
}

async fn renew(
    State(svc): Svc,
    Device(d): Device,
    axum::Extension(Bearer(old)): axum::Extension<Bearer>,
) -> Result<Response, ApiError> {
    Ok(Json(svc.renew(&d, &old).await?).into_response())
}

async fn create(
    State(svc): Svc,
    Device(d): Device,
    BaseUrl(base): BaseUrl,
    PeerIp(ip): PeerIp,
    ApiJson(req): ApiJson<CreatePartyRequest>,
) -> Result<Response, ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(svc.create(d, req, &base, ip).await?),
    )
        .into_response())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /v1/ice`: STUN and TURN servers with credentials for this device's membership;
/// 403 `not_a_member` for a device in no party.
async fn ice(State(svc): Svc, Device(d): Device) -> Result<Response, ApiError> {
    Ok(Json(svc.ice(&d, unix_now()).await?).into_response())
}

/// `POST /v1/relays`: a relay's registration or heartbeat, signed over its exact bytes;
/// answered with the revoked TURN user ids.
async fn register_relay(
    State(svc): Svc,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    use crate::relays::RegisterError;
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let unix = unix_now();
    let key = svc
        .relays
        .authorize(
            &svc.config.ice,
            auth,
            (method.as_str(), uri.path(), &body),
            unix,
        )
        .map_err(|e| {
            tracing::debug!(error = %e, "relay registration refused");
            match e {
                RegisterError::Busy => ApiError::too_many(
                    "relay_busy",
                    e.to_string(),
                    std::time::Duration::from_secs(5),
                ),
                _ => ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "relay_unauthorized",
                    e.to_string(),
                ),
            }
        })?;
    let reg: RelayRegistration = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    svc.relays
        .register(reg, key, std::time::Instant::now())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(RelayHeartbeatReply {
        revoked: svc.relays.revoked(unix),
    })
    .into_response())
}

async fn view(State(svc): Svc, Device(d): Device, Party(id): Party) -> Result<Response, ApiError> {
    Ok(Json(svc.view(d, id).await?).into_response())
}

async fn join(
    State(svc): Svc,
    Device(d): Device,
    Party(id): Party,
    BaseUrl(base): BaseUrl,
    PeerIp(ip): PeerIp,
    ApiJson(req): ApiJson<JoinPartyRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(svc.join(d, id, req, &base, ip).await?).into_response())
}

async fn leave(State(svc): Svc, Device(d): Device, Party(id): Party) -> Result<Response, ApiError> {
    svc.leave(d, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn kick(
    State(svc): Svc,
    Device(d): Device,
    Party(id): Party,
    ApiJson(req): ApiJson<KickRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(svc.kick(d, id, &req.member).await?).into_response())
}

async fn lock(
    State(svc): Svc,
    Device(d): Device,
    Party(id): Party,
    ApiJson(req): ApiJson<LockRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(svc.lock(d, id, req.locked).await?).into_response())
}

async fn heartbeat(
    State(svc): Svc,
    Device(d): Device,
    Party(id): Party,
) -> Result<Response, ApiError> {
    Ok(Json(svc.heartbeat(d, id).await?).into_response())
}

async fn candidates(
    State(svc): Svc,
    Device(d): Device,
    Party(id): Party,
    ApiJson(req): ApiJson<CandidatesRequest>,
) -> Result<Response, ApiError> {
    Ok(Json(svc.set_candidates(d, id, req).await?).into_response())
}

async fn invite(
    State(svc): Svc,
    Device(d): Device,
    Party(id): Party,
    BaseUrl(base): BaseUrl,
) -> Result<Response, ApiError> {
    Ok(Json(json!({"invite": svc.invite(d, id, &base).await?})).into_response())
}

/// `?token=` is read by [`Device`]; other query parameters are ignored.
async fn ws(
    State(svc): Svc,
    Device(d): Device,
    slot: Option<axum::Extension<crate::server::ConnectionSlot>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // axum's own rejection is a bare text body; answer in our error shape like every route.
    let upgrade =
        upgrade.map_err(|e| ApiError::new(e.status(), "websocket_required", e.body_text()))?;
    // The connection outlives the request; its log lines keep the upgrade's request id.
    let span = tracing::Span::current();
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| {
            async move {
                // Counted against the client's address for as long as the socket is open.
                let _slot = slot;
                run_socket(svc, d, socket).await;
            }
            .instrument(span)
        }))
}

async fn run_socket(svc: Arc<Service>, device: lanrage_proto::DeviceKey, socket: WebSocket) {
    let (id, mut rx) = svc
        .hub
        .register(device, svc.config.limits.websockets_per_device);
    let (mut sink, mut stream) = socket.split();
    if let Err(e) = svc.connected(&device).await {
        tracing::debug!(error = %e, "initial party push failed");
    }
    let mut ping = tokio::time::interval(WS_PING_EVERY);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let Ok(text) = serde_json::to_string(&msg) else { continue };
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = stream.next() => {
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        let reply = match serde_json::from_str::<ClientMessage>(&text) {
                            Ok(ClientMessage::Signal { to, payload }) => {
                                svc.signal(device, to, payload).await.err().map(|e| e.message)
                            }
                            Err(e) => Some(format!("unreadable message: {e}")),
                        };
                        if let Some(error) = reply {
                            let msg = ServerMessage::Error { error };
                            let text = serde_json::to_string(&msg).unwrap_or_default();
                            if sink.send(Message::Text(text.into())).await.is_err() {
                                break;
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    svc.hub.unregister(&device, id);
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
