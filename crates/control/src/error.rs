//! API errors: a status, a machine-readable code and one human sentence.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanrage_proto::api::ErrorBody;

/// An error a route returns; never a panic, never a bare 500 for bad input.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds to wait before asking again (`Retry-After`, RFC 9110 §10.2.3).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429: a quota is used up; `wait` until the next try counts.
    pub fn too_many(
        code: &'static str,
        message: impl Into<String>,
        wait: std::time::Duration,
    ) -> Self {
        Self {
            // Whole seconds, rounded up, never 0: "now" would invite a tight retry loop.
            retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn party_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "party_not_found",
            "no such party (it may have ended)",
        )
    }

    pub fn not_member() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "not_member",
            "this device is not a member of that party",
        )
    }

    pub fn not_host(action: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "not_host",
            format!("only the party's host can {action}"),
        )
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "control plane internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the control plane's log",
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            error: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
