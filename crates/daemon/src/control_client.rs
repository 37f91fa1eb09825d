//! The daemon's client of the control plane: sign-in by proof of key possession, token
//! renewal, the `/v1` calls and the WebSocket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gotatun::x25519::{PublicKey, StaticSecret};
use lanrage_proto::api::{
    CandidatesRequest, ChallengeRequest, ChallengeResponse, CreatePartyRequest, ErrorBody,
    JoinPartyRequest, KickRequest, LockRequest, PartyResponse, PartyView, TokenRequest,
    TokenResponse,
};
use lanrage_proto::{DeviceKey, PartyId};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

/// Per-request limit: a control plane that does not answer in this time counts as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to the control plane.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the control plane sent an unexpected reply: {0}")]
    Protocol(String),
}

/// A signed-in connection to one control plane.
#[derive(Clone)]
pub struct ControlClient {
    base: String,
    http: reqwest::Client,
    secret: StaticSecret,
    key: DeviceKey,
    token: Arc<Mutex<Option<(String, Instant)>>>,
}

impl ControlClient {
    pub fn new(base: &str, secret: StaticSecret) -> Self {
        let key = DeviceKey::from_bytes(PublicKey::from(&secret).to_bytes());
        crate::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            secret,
            key,
            token: Arc::new(Mutex::new(None)),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A valid token, signing in or renewing when under half its lifetime is left.
    pub async fn token(&self) -> Result<String, ClientError> {
        let mut guard = self.token.lock().await;
        if let Some((token, renew_at)) = guard.as_ref() {
            if Instant::now() < *renew_at {
                return Ok(token.clone());
            }
            let renewed: Result<TokenResponse, _> = self
                .send(Method::POST, "/v1/auth/renew", Some(token), None::<&()>)
                .await;
            if let Ok(t) = renewed {
                *guard = Some(Self::remember(t));
                return Ok(guard.as_ref().map(|(t, _)| t.clone()).unwrap_or_default());
            }
        }
        let challenge: ChallengeResponse = self
            .send(
                Method::POST,
                "/v1/auth/challenge",
                None,
                Some(&ChallengeRequest {
                    public_key: self.key,
                }),
            )
            .await?;
        let nonce = STANDARD
            .decode(&challenge.nonce)
            .map_err(|_| ClientError::Protocol("challenge nonce is not base64".into()))?;
        let server = PublicKey::from(*challenge.server_public.as_bytes());
        let proof = lanrage_core::auth::prove(&self.secret, &server, &nonce)
            .ok_or_else(|| ClientError::Protocol("challenge key is of low order".into()))?;
        let token: TokenResponse = self
            .send(
                Method::POST,
                "/v1/auth/token",
                None,
                Some(&TokenRequest {
                    challenge_id: challenge.challenge_id,
                    public_key: self.key,
                    proof: STANDARD.encode(proof),
                }),
            )
            .await?;
        let (t, renew_at) = Self::remember(token);
        *guard = Some((t.clone(), renew_at));
        Ok(t)
    }

    fn remember(t: TokenResponse) -> (String, Instant) {
        (
            t.token,
            Instant::now() + Duration::from_secs(t.expires_in_s / 2),
        )
    }

    pub async fn create(&self, req: &CreatePartyRequest) -> Result<PartyResponse, ClientError> {
        self.call(Method::POST, "/v1/parties".into(), Some(req))
            .await
    }

    pub async fn join(
        &self,
        id: PartyId,
        req: &JoinPartyRequest,
    ) -> Result<PartyResponse, ClientError> {
        self.call(Method::POST, format!("/v1/parties/{id}/join"), Some(req))
            .await
    }

    pub async fn leave(&self, id: PartyId) -> Result<(), ClientError> {
        self.call::<serde_json::Value, ()>(Method::POST, format!("/v1/parties/{id}/leave"), None)
            .await
            .map(|_| ())
    }

    pub async fn kick(&self, id: PartyId, member: &str) -> Result<PartyView, ClientError> {
        let req = KickRequest {
            member: member.to_owned(),
        };
        self.call(Method::POST, format!("/v1/parties/{id}/kick"), Some(&req))
            .await
    }

    pub async fn lock(&self, id: PartyId, locked: bool) -> Result<PartyView, ClientError> {
        self.call(
            Method::POST,
            format!("/v1/parties/{id}/lock"),
            Some(&LockRequest { locked }),
        )
        .await
    }

    /// STUN and TURN servers, with TURN credentials for this device.
    pub async fn ice(&self) -> Result<lanrage_proto::api::IceServers, ClientError> {
        self.call::<_, ()>(Method::GET, "/v1/ice".to_owned(), None)
            .await
    }

    pub async fn heartbeat(&self, id: PartyId) -> Result<PartyView, ClientError> {
        self.call::<_, ()>(Method::POST, format!("/v1/parties/{id}/heartbeat"), None)
            .await
    }

    pub async fn set_candidates(
        &self,
        id: PartyId,
        req: CandidatesRequest,
    ) -> Result<PartyView, ClientError> {
        self.call(
            Method::PUT,
            format!("/v1/parties/{id}/candidates"),
            Some(&req),
        )
        .await
    }

    /// The WebSocket URL and bearer token for live updates.
    pub async fn ws_request(
        &self,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let token = self.token().await?;
        let url = format!("{}/v1/ws", self.base.replacen("http", "ws", 1));
        let mut req = url
            .into_client_request()
            .map_err(|e| ClientError::Protocol(format!("bad WebSocket URL: {e}")))?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Protocol("token is not a valid header".into()))?;
        req.headers_mut().insert("authorization", value);
        Ok(req)
    }

    /// An authenticated call; on 401 the token is dropped and the call retried once.
    async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: String,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let token = self.token().await?;
        match self.send(method.clone(), &path, Some(&token), body).await {
            Err(ClientError::Api { status: 401, .. }) => {
                *self.token.lock().await = None;
                let token = self.token().await?;
                self.send(method, &path, Some(&token), body).await
            }
            other => other,
        }
    }

    async fn send<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        token: Option<&String>,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        // One id per call, in our log and the control plane's (it echoes it back).
        let request_id = uuid::Uuid::now_v7().to_string();
        tracing::debug!(%request_id, %method, path, "control plane call");
        let mut req = self
            .http
            .request(method, &url)
            .header("x-request-id", &request_id);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: short_reason(&e),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: short_reason(&e),
        })?;
        if status.is_success() {
            let bytes = if status == StatusCode::NO_CONTENT && bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            return serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol(e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status: status.as_u16(),
                code: body.code,
                message: body.error,
            }),
            Err(_) => Err(ClientError::Api {
                status: status.as_u16(),
                code: "http".into(),
                message: format!("the control plane answered {status}"),
            }),
        }
    }
}

fn short_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection refused or no route".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `https://` control planes go through rustls; a server that does not speak TLS is a
    /// clear "cannot reach" error, not a panic about a missing crypto provider.
    #[tokio::test]
    async fn https_to_a_plain_server_is_a_clear_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let client = ControlClient::new(&format!("https://{addr}"), StaticSecret::from([3u8; 32]));
        let err = client.token().await.expect_err("no TLS there");
        assert!(
            matches!(err, ClientError::Unreachable { .. }),
            "unexpected error: {err}"
        );
        assert!(
            err.to_string()
                .starts_with("cannot reach the control plane at https://")
        );
    }
}
