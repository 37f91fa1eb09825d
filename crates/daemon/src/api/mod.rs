//! The local API on loopback, versioned under `/api/v1`, and the web UI at `/`.
//!
//! Status is open to anyone on this machine; party actions, settings and the invite need the
//! token in the state directory. `Host` and `Origin` are checked so a web page in the
//! player's browser cannot reach it through DNS rebinding or cross-site requests. Every
//! error is `{"error": {"code", "message"}}` with a 4xx (or 5xx when the daemon itself
//! fails), never a panic. The OpenAPI document is generated from the handlers below.

mod events;
mod routes;
mod web;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use lanrage_proto::local::{API_TOKEN_HEADER, LocalError as ErrorBody};
use tokio::net::TcpListener;
use tokio::sync::{Notify, RwLock, mpsc, watch};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dataplane::DataPlane;
use crate::state::State as Store;
use crate::supervisor::{Command, Shared};

pub(crate) use routes::round2;

/// Where the API lives; the UI and everything else is outside it.
pub const PREFIX: &str = "/api/v1";
/// Request bodies larger than this are refused (the largest real one is a settings change).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The API's state.
#[derive(Clone)]
pub struct ApiState {
    cmds: mpsc::Sender<Command>,
    shared: Arc<RwLock<Shared>>,
    dataplane: DataPlane,
    state: Store,
    /// Serializes settings changes (read, save, apply).
    settings_lock: Arc<tokio::sync::Mutex<()>>,
    token: Arc<str>,
    port: u16,
    games: Arc<RwLock<crate::games::View>>,
    /// Woken by whoever changes what the event stream shows.
    changes: Arc<Notify>,
    hub: Arc<events::Hub>,
    metrics: Arc<crate::metrics::Metrics>,
    openapi: Arc<OnceLock<String>>,
    /// Set when the API stops: ends the hub and every event stream.
    stop: Arc<watch::Sender<bool>>,
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
            state: state.clone(),
            settings_lock: Arc::default(),
            token: token.into(),
            port,
            games: Arc::default(),
            changes: Arc::default(),
            hub: Arc::new(events::Hub::new()),
            metrics: Arc::new(crate::metrics::Metrics::new(
                state.writes().clone(),
                crate::metrics::Thresholds::default(),
            )),
            openapi: Arc::default(),
            stop: Arc::new(watch::channel(false).0),
        }
    }

    /// Shows this game detector's findings.
    pub fn with_games(mut self, games: Arc<RwLock<crate::games::View>>) -> Self {
        self.games = games;
        self
    }

    /// Records quality into these series (with their thresholds).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Shares the notification the supervisor and the game detector raise on changes.
    pub fn with_changes(mut self, changes: Arc<Notify>) -> Self {
        self.changes = changes;
        self
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "LANrage local API",
        version = "1",
        description = "The daemon's API on loopback. GET calls are open to programs on this \
                       machine; every other call, and the invite, needs the token from the \
                       state directory's `api.token` in the `x-lanrage-token` header. Errors \
                       are `{\"error\": {\"code\", \"message\"}}`."
    ),
    components(schemas(lanrage_proto::local::Event, ErrorBody)),
    modifiers(&TokenScheme)
)]
struct ApiDoc;

struct TokenScheme;

impl utoipa::Modify for TokenScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "token",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(API_TOKEN_HEADER))),
            );
    }
}

/// The whole app: API routes (documented), the OpenAPI document, the web UI.
pub fn app(state: ApiState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::status))
        .routes(routes!(routes::create))
        .routes(routes!(routes::join))
        .routes(routes!(routes::leave))
        .routes(routes!(routes::kick))
        .routes(routes!(routes::lock))
        .routes(routes!(routes::invite))
        .routes(routes!(routes::lan_status))
        .routes(routes!(routes::lan_settings))
        .routes(routes!(routes::lan_trace))
        .routes(routes!(routes::games_status))
        .routes(routes!(routes::games_profiles))
        .routes(routes!(routes::games_history))
        .routes(routes!(routes::games_library))
        .routes(routes!(routes::get_settings, routes::patch_settings))
        .routes(routes!(routes::quality))
        .routes(routes!(routes::quality_history))
        .routes(routes!(events::events))
        .routes(routes!(routes::openapi))
        .split_for_parts();
    let json = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
    let _ = state.openapi.set(json);
    // Prometheus text, outside the versioned API: scrapers expect `/metrics`.
    api.route("/metrics", axum::routing::get(routes::metrics))
        .fallback(web::serve)
        .method_not_allowed_fallback(|| async {
            error(
                405,
                "method_not_allowed",
                "this route does not take that method; see /api/v1/openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let stop_tx = Arc::clone(&state.stop);
    let app = app(state);
    let stop = async move {
        shutdown.await;
        // Ends the event streams too, or graceful shutdown would wait for them.
        let _ = stop_tx.send(true);
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "local API stopped");
    }
}

/// The event hub as a supervised task: it ends with the API, and is restarted if it fails.
pub fn hub_task(
    state: ApiState,
) -> impl Fn(watch::Receiver<bool>) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
+ Send
+ 'static {
    move |_stop| {
        let st = state.clone();
        Box::pin(async move {
            events::run(st).await;
            Ok(())
        })
    }
}

/// An error answer: `{"error": {"code", "message"}}`.
pub(crate) fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(ErrorBody::new(code, message))).into_response()
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
            "forbidden_host",
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
            return error(
                403,
                "forbidden_origin",
                "cross-origin requests to the local API are refused",
            );
        }
    }
    let path = req.uri().path();
    let needs_token =
        path.starts_with(PREFIX) && (req.method() != Method::GET || path == "/api/v1/party/invite");
    if needs_token && !token_ok(headers, &st.token) {
        return error(
            401,
            "unauthorized",
            "this call needs the local API token: the CLI reads it from the state directory; \
             open the web UI with `sudo lanrage ui`",
        );
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
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
