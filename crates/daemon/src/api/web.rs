//! The web UI: the files in `web/`, compiled into release builds (read from disk in debug
//! builds, so the UI can be edited without rebuilding).

use axum::extract::State;
use axum::http::{HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{ApiState, error};

#[derive(rust_embed::Embed)]
#[folder = "../../web/"]
pub(super) struct Assets;

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// Everything outside the API routes: a UI file, or a JSON 404.
pub(super) async fn serve(State(st): State<ApiState>, method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        return error(
            404,
            "not_found",
            format!("no API route {path}; the routes are listed in /api/v1/openapi.json"),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return error(
            405,
            "method_not_allowed",
            "the web UI's files are only read (GET)",
        );
    }
    let name = match path.trim_start_matches('/') {
        "" => "index.html",
        n => n,
    };
    let Some(file) = Assets::get(name) else {
        return error(404, "not_found", format!("no such page: {path}"));
    };
    let mut resp = ([(header::CONTENT_TYPE, content_type(name))], file.data).into_response();
    if name.ends_with(".html") {
        let port = st.port;
        let csp = format!(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self' ws://127.0.0.1:{port} \
             ws://localhost:{port}; frame-ancestors 'none'; \
             base-uri 'none'; form-action 'self'"
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            resp.headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    resp
}
