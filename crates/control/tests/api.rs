//! In-process tests of the control plane's API against a temporary SQLite database: every
//! route, every error status it answers with, the membership rules behind them, and the
//! WebSocket's pushes and signalling.
//!
//! Only loopback traffic. No assertion depends on how much wall-clock time passes: liveness is
//! driven through `Control::sweep` with times computed from the `joined_at` the server
//! reports, and the timeouts below only keep a broken test from hanging.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures_util::{SinkExt as _, StreamExt as _};
use gotatun::x25519::{PublicKey, StaticSecret};
use lanrage_control::{Control, ControlConfig};
use lanrage_proto::api::{
    ChallengeResponse, MemberView, PartyResponse, PartyView, ServerMessage, TokenResponse,
};
use lanrage_proto::{DeviceKey, InviteCode, PartyId, PartySecret};
use rand::RngCore as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request as WsRequest;

/// Longest wait for any one reply or push; only guards against a hung test.
const PATIENCE: Duration = Duration::from_secs(20);
/// The product's liveness rules (`Liveness::default`), in milliseconds.
const AWAY_AFTER_MS: i64 = 90_000;
const REMOVE_AFTER_MS: i64 = 300_000;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

// ------------------------------------------------------------------------------- harness

/// A control plane serving on a loopback port, its database in a temporary directory.
struct Server {
    api: Api,
    control: Control,
    database_url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut ControlConfig)) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self::start_in(dir, configure).await
    }

    /// A server on the database in `dir` (a new one, or one a stopped server left).
    async fn start_in(dir: tempfile::TempDir, configure: impl FnOnce(&mut ControlConfig)) -> Self {
        let database_url = format!("sqlite://{}", dir.path().join("c.db").display());
        let mut config = ControlConfig::new(database_url.clone());
        configure(&mut config);
        let control = Control::open(config)
            .await
            .expect("the control database opens");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(control.clone().serve(listener, async move {
            stopped.await.ok();
        }));
        Self {
            api: Api {
                http: {
                    // reqwest is built with rustls and no default provider (one TLS stack
                    // for the whole build); the tests speak plain HTTP but need one set.
                    let _ = rustls::crypto::ring::default_provider().install_default();
                    reqwest::Client::new()
                },
                addr,
            },
            control,
            database_url,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Stops the server and checks it ends cleanly.
    async fn shutdown(self) {
        self.stop.send(()).ok();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the server stops after its shutdown signal")
            .expect("the server task does not panic")
            .expect("the server ends without error");
    }
}

impl Deref for Server {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A client of one server; cheap to clone into spawned tasks.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    addr: SocketAddr,
}

/// A signed-in device.
#[derive(Clone)]
struct Device {
    key: DeviceKey,
    token: String,
}

impl Api {
    /// A client of the same server whose connections come from `ip` (any 127/8 address
    /// is this host's), for per-address limits.
    fn client_at(&self, ip: Ipv4Addr) -> Api {
        Api {
            http: reqwest::Client::builder()
                .local_address(std::net::IpAddr::V4(ip))
                .build()
                .expect("a client"),
            addr: self.addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The URL invites made for this client carry: where it reached the server.
    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sends a request with an optional bearer token and JSON body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.request(method, path);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        reply(req).await
    }

    /// Sends a request that must succeed and decodes its reply.
    async fn ok<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> T {
        let (status, body) = self.send(method.clone(), path, token, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {body}");
        serde_json::from_value(body).expect("the reply has the documented shape")
    }

    async fn challenge(&self, key: &DeviceKey) -> ChallengeResponse {
        self.ok(
            Method::POST,
            "/v1/auth/challenge",
            None,
            Some(json!({ "public_key": key })),
        )
        .await
    }

    /// A new device key, a challenge, the proof of key possession and a token.
    async fn sign_in(&self) -> Device {
        let secret = new_secret();
        let key = key_of(&secret);
        let challenge = self.challenge(&key).await;
        let token: TokenResponse = self
            .ok(
                Method::POST,
                "/v1/auth/token",
                None,
                Some(json!({
                    "challenge_id": challenge.challenge_id,
                    "public_key": key,
                    "proof": prove(&secret, &challenge),
                })),
            )
            .await;
        Device {
            key,
            token: token.token,
        }
    }

    /// Creates a party hosted by `host` (player name "host").
    async fn create(
        &self,
        host: &Device,
        name: &str,
        max_members: Option<u32>,
    ) -> (PartyView, InviteCode) {
        let (status, body) = self
            .send(
                Method::POST,
                "/v1/parties",
                Some(&host.token),
                Some(json!({ "name": name, "player_name": "host", "max_members": max_members })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let resp: PartyResponse = serde_json::from_value(body).expect("a PartyResponse");
        let invite = resp.invite.parse().expect("the invite code parses");
        (resp.party, invite)
    }

    async fn join(&self, device: &Device, invite: &InviteCode, player: &str) -> PartyView {
        let resp: PartyResponse = self
            .ok(
                Method::POST,
                &format!("/v1/parties/{}/join", invite.party),
                Some(&device.token),
                Some(json!({ "secret": invite.secret, "player_name": player })),
            )
            .await;
        resp.party
    }

    async fn view(&self, device: &Device, id: PartyId) -> PartyView {
        self.ok(
            Method::GET,
            &format!("/v1/parties/{id}"),
            Some(&device.token),
            None,
        )
        .await
    }

    async fn leave(&self, device: &Device, id: PartyId) {
        let (status, body) = self
            .send(
                Method::POST,
                &format!("/v1/parties/{id}/leave"),
                Some(&device.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert_eq!(body, Value::Null, "leave answers with an empty body");
    }

    fn ws_request(&self, path_and_query: &str, token: Option<&str>) -> WsRequest {
        let mut req = format!("ws://{}{path_and_query}", self.addr)
            .into_client_request()
            .expect("a valid WebSocket URL");
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .expect("tokens are header-safe");
            req.headers_mut().insert("authorization", value);
        }
        req
    }

    /// Opens `/v1/ws` with a bearer header.
    async fn ws(&self, device: &Device) -> Ws {
        connect(self.ws_request("/v1/ws", Some(&device.token))).await
    }
}

async fn reply(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = tokio::time::timeout(PATIENCE, req.send())
        .await
        .expect("a reply in time")
        .expect("an HTTP exchange over loopback");
    let status = resp.status();
    let bytes = resp.bytes().await.expect("the response body");
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status}: the body is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

/// Checks an error reply: the status, the machine-readable code and a human sentence.
#[track_caller]
fn assert_error((status, body): (StatusCode, Value), want: StatusCode, code: &str) {
    assert_eq!(status, want, "body: {body}");
    assert_eq!(body["code"], code, "body: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "an error sentence: {body}"
    );
}

fn new_secret() -> StaticSecret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    StaticSecret::from(bytes)
}

fn key_of(secret: &StaticSecret) -> DeviceKey {
    DeviceKey::from_bytes(PublicKey::from(secret).to_bytes())
}

/// The device's answer to a challenge, base64 as the token route takes it.
fn prove(secret: &StaticSecret, challenge: &ChallengeResponse) -> String {
    let nonce = STANDARD
        .decode(&challenge.nonce)
        .expect("the nonce is base64");
    let server = PublicKey::from(*challenge.server_public.as_bytes());
    let proof = lanrage_core::auth::prove(secret, &server, &nonce)
        .expect("the server's ephemeral key is contributory");
    STANDARD.encode(proof)
}

fn random_party_id() -> PartyId {
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    PartyId::from_bytes(id)
}

fn unix_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
}

#[track_caller]
fn member<'a>(view: &'a PartyView, key: &DeviceKey) -> &'a MemberView {
    view.members
        .iter()
        .find(|m| m.public_key == *key)
        .unwrap_or_else(|| panic!("{key} is not in {view:#?}"))
}

fn has_member(view: &PartyView, key: &DeviceKey) -> bool {
    view.members.iter().any(|m| m.public_key == *key)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 66, 0, last)
}

/// Waits long enough that the server's millisecond clock moves on, so two joins get
/// distinct `joined_at` values (the tests then assert they did).
async fn next_millisecond() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

async fn connect(req: WsRequest) -> Ws {
    let (ws, resp) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("the WebSocket handshake in time")
        .expect("the WebSocket is accepted");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// The status a refused WebSocket handshake got.
async fn refused(req: WsRequest) -> u16 {
    let result = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(req))
        .await
        .expect("the WebSocket handshake in time");
    match result {
        Ok(_) => panic!("the WebSocket was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
    }
}

/// The next message pushed on `ws`, as raw JSON (pings skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a push in time")
            .expect("the socket stays open")
            .expect("the socket stays healthy");
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).expect("pushes are JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next message, checking its wire `type` and decoding it.
async fn next_msg(ws: &mut Ws, kind: &str) -> ServerMessage {
    let json = next_json(ws).await;
    assert_eq!(json["type"], kind, "{json}");
    serde_json::from_value(json).expect("a ServerMessage")
}

async fn next_party(ws: &mut Ws) -> PartyView {
    match next_msg(ws, "party").await {
        ServerMessage::Party { party } => party,
        other => panic!("expected a party push, got {other:?}"),
    }
}

async fn next_error(ws: &mut Ws) -> String {
    match next_msg(ws, "error").await {
        ServerMessage::Error { error } => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn send_json(ws: &mut Ws, msg: Value) {
    ws.send(Message::text(msg.to_string()))
        .await
        .expect("the socket takes a message");
}

/// Waits until the server side of a new socket is registered for pushes: the greeting (one
/// `party` message per party the device is in) arrived and an unreadable message was
/// answered. Returns the greeting.
async fn settle(ws: &mut Ws, parties: usize) -> Vec<PartyView> {
    ws.send(Message::text("hello?"))
        .await
        .expect("the socket takes a message");
    let mut greeting = Vec::new();
    let mut answered = false;
    while !answered || greeting.len() < parties {
        let json = next_json(ws).await;
        match serde_json::from_value(json.clone()).expect("a ServerMessage") {
            ServerMessage::Party { party } => greeting.push(party),
            ServerMessage::Error { error } => {
                assert!(error.contains("unreadable message"), "{error}");
                answered = true;
            }
            _ => panic!("unexpected message while settling: {json}"),
        }
    }
    assert_eq!(greeting.len(), parties, "{greeting:#?}");
    greeting
}

// ------------------------------------------------------------------ service-wide routes

#[tokio::test]
async fn health_answers_and_unknown_routes_and_methods_are_json_errors() {
    let s = Server::start().await;
    let (status, body) = s.send(Method::GET, "/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "ok", "service": "lanrage-control", "version": env!("CARGO_PKG_VERSION")})
    );

    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/v1/nope"),
        (Method::GET, "/v2/health"),
        (Method::POST, "/v1/parties/0123456789abcdef/dance"),
        (Method::GET, "/v1/parties/0123456789abcdef/join/extra"),
    ] {
        assert_error(
            s.send(method, path, None, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    let party = "/v1/parties/0123456789abcdef";
    for (method, path) in [
        (Method::POST, "/v1/health".to_owned()),
        (Method::GET, "/v1/auth/challenge".to_owned()),
        (Method::GET, "/v1/auth/token".to_owned()),
        (Method::GET, "/v1/auth/renew".to_owned()),
        (Method::GET, "/v1/parties".to_owned()),
        (Method::DELETE, party.to_owned()),
        (Method::GET, format!("{party}/join")),
        (Method::GET, format!("{party}/leave")),
        (Method::DELETE, format!("{party}/kick")),
        (Method::PUT, format!("{party}/lock")),
        (Method::GET, format!("{party}/heartbeat")),
        (Method::POST, format!("{party}/candidates")),
        (Method::POST, format!("{party}/invite")),
        (Method::POST, "/v1/ws".to_owned()),
    ] {
        assert_error(
            s.send(method, &path, None, None).await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
    }
    s.shutdown().await;
}

// ---------------------------------------------------------------------------- sign-in

#[tokio::test]
async fn sign_in_proves_key_possession_and_tokens_renew() {
    let s = Server::start().await;
    let secret = new_secret();
    let key = key_of(&secret);
    let challenge = s.challenge(&key).await;
    assert_eq!(challenge.expires_in_s, 60);
    assert_eq!(
        STANDARD
            .decode(&challenge.nonce)
            .expect("base64 nonce")
            .len(),
        32
    );
    assert_ne!(challenge.server_public, key);
    let second = s.challenge(&key).await;
    assert_ne!(second.challenge_id, challenge.challenge_id);
    assert_ne!(second.nonce, challenge.nonce);
    assert_ne!(second.server_public, challenge.server_public);

    let token: TokenResponse = s
        .ok(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({
                "challenge_id": challenge.challenge_id,
                "public_key": key,
                "proof": prove(&secret, &challenge),
            })),
        )
        .await;
    assert_eq!(token.expires_in_s, 30 * 60);

    // The token identifies the device: the party it creates is hosted by this key.
    let device = Device {
        key,
        token: token.token.clone(),
    };
    let (party, _) = s.create(&device, "auth check", None).await;
    assert_eq!(party.host, key);

    let renewed: TokenResponse = s
        .ok(Method::POST, "/v1/auth/renew", Some(&token.token), None)
        .await;
    assert_ne!(renewed.token, token.token);
    assert_eq!(renewed.expires_in_s, 30 * 60);
    let via_renewed = s
        .view(
            &Device {
                key,
                token: renewed.token.clone(),
            },
            party.id,
        )
        .await;
    assert_eq!(via_renewed.host, key);
    // Renewing retires the old token at once: a leaked token cannot be renewed twice.
    let (status, body) = s
        .send(
            Method::GET,
            &format!("/v1/parties/{}", party.id),
            Some(&token.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = s
        .send(Method::POST, "/v1/auth/renew", Some(&token.token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // `?token=` is only for the WebSocket; elsewhere a token in the URL is refused, so it
    // never lands in access logs.
    let (status, body) = s
        .send(
            Method::GET,
            &format!("/v1/parties/{}?token={}", party.id, renewed.token),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "unauthorized");
    s.shutdown().await;
}

#[tokio::test]
async fn sign_in_rejects_bad_bodies_bad_proofs_and_reused_challenges() {
    let s = Server::start().await;
    let secret = new_secret();
    let key = key_of(&secret);

    // 400: bodies that are not a ChallengeRequest / TokenRequest.
    for path in ["/v1/auth/challenge", "/v1/auth/token"] {
        for body in [
            r#"not json"#,
            r#"{}"#,
            r#"{"public_key": "AAAA"}"#,
            r#"{"challenge_id": "x", "public_key": "not base64!", "proof": ""}"#,
        ] {
            let req = s
                .request(Method::POST, path)
                .header(CONTENT_TYPE, "application/json")
                .body(body);
            assert_error(reply(req).await, StatusCode::BAD_REQUEST, "bad_request");
        }
        // A JSON body without the JSON content type.
        let req = s
            .request(Method::POST, path)
            .body(json!({ "public_key": key }).to_string());
        assert_error(reply(req).await, StatusCode::BAD_REQUEST, "bad_request");
    }

    let token = |challenge_id: &str, public_key: &DeviceKey, proof: &str| {
        s.send(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({"challenge_id": challenge_id, "public_key": public_key, "proof": proof})),
        )
    };

    // 401 challenge_expired: an id the server never issued.
    let challenge = s.challenge(&key).await;
    let proof = prove(&secret, &challenge);
    assert_error(
        token("never-issued", &key, &proof).await,
        StatusCode::UNAUTHORIZED,
        "challenge_expired",
    );
    // A right answer works once; the same challenge again is refused.
    let (status, body) = token(&challenge.challenge_id, &key, &proof).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_error(
        token(&challenge.challenge_id, &key, &proof).await,
        StatusCode::UNAUTHORIZED,
        "challenge_expired",
    );

    // 401 bad_proof: an impostor answers a challenge for our key with its own key.
    let impostor = new_secret();
    let challenge = s.challenge(&key).await;
    assert_error(
        token(&challenge.challenge_id, &key, &prove(&impostor, &challenge)).await,
        StatusCode::UNAUTHORIZED,
        "bad_proof",
    );
    // A wrong answer does not spend the challenge (a 256-bit MAC cannot be guessed); the
    // right one still works, once.
    let (status, body) = token(&challenge.challenge_id, &key, &prove(&secret, &challenge)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_error(
        token(&challenge.challenge_id, &key, &prove(&secret, &challenge)).await,
        StatusCode::UNAUTHORIZED,
        "challenge_expired",
    );
    // A well-formed id the server did not make (its tag is wrong) proves nothing.
    let mut forged = URL_SAFE_NO_PAD
        .decode(&challenge.challenge_id)
        .expect("ids are base64url");
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_error(
        token(
            &URL_SAFE_NO_PAD.encode(&forged),
            &key,
            &prove(&secret, &challenge),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "bad_proof",
    );
    // A valid proof for another key than the one the challenge was issued to.
    let challenge = s.challenge(&key).await;
    assert_error(
        token(
            &challenge.challenge_id,
            &key_of(&impostor),
            &prove(&impostor, &challenge),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "bad_proof",
    );
    // Proofs that are not base64, or not 32 bytes.
    for proof in ["%%%".to_owned(), STANDARD.encode([7u8; 31]), String::new()] {
        let challenge = s.challenge(&key).await;
        assert_error(
            token(&challenge.challenge_id, &key, &proof).await,
            StatusCode::UNAUTHORIZED,
            "bad_proof",
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_challenges_is_limited_per_address_and_locks_nobody_else_out() {
    let s = Server::start().await;
    let secret = new_secret();
    let key = key_of(&secret);
    let first = s.challenge(&key).await;
    // One address asks for challenges as fast as it can: after its burst it gets 429 with
    // a Retry-After, and the challenges it got cost the server no state.
    let flooder = s.client_at(Ipv4Addr::new(127, 0, 0, 2));
    let flood_key = key_of(&new_secret());
    let (mut issued, mut limited) = (0u32, 0u32);
    for _ in 0..200 {
        let resp = flooder
            .request(Method::POST, "/v1/auth/challenge")
            .json(&json!({ "public_key": flood_key }))
            .send()
            .await
            .expect("an HTTP exchange over loopback");
        match resp.status() {
            StatusCode::OK => issued += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let wait: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .expect("ASCII")
                    .parse()
                    .expect("whole seconds");
                assert!((1..=60).contains(&wait), "Retry-After: {wait}");
                let body: Value = resp.json().await.expect("a JSON error");
                assert_eq!(body["code"], "rate_limited", "{body}");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!((60..70).contains(&issued), "issued {issued}");
    assert_eq!(issued + limited, 200);
    // Everyone else is unaffected: the challenge from before the flood still works, and a
    // device elsewhere signs in.
    let (status, body) = s
        .send(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({
                "challenge_id": first.challenge_id,
                "public_key": key,
                "proof": prove(&secret, &first),
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.sign_in().await;
    s.shutdown().await;
}

#[tokio::test]
async fn every_authenticated_route_refuses_missing_malformed_and_unknown_tokens() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let (party, invite) = s.create(&host, "auth", None).await;
    let p = format!("/v1/parties/{}", party.id);
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/v1/auth/renew".to_owned(), None),
        (
            Method::POST,
            "/v1/parties".to_owned(),
            Some(json!({"name": "n", "player_name": "p"})),
        ),
        (Method::GET, p.clone(), None),
        (
            Method::POST,
            format!("{p}/join"),
            Some(json!({"secret": invite.secret, "player_name": "p"})),
        ),
        (Method::POST, format!("{p}/leave"), None),
        (
            Method::POST,
            format!("{p}/kick"),
            Some(json!({"member": "host"})),
        ),
        (
            Method::POST,
            format!("{p}/lock"),
            Some(json!({"locked": true})),
        ),
        (Method::POST, format!("{p}/heartbeat"), None),
        (
            Method::PUT,
            format!("{p}/candidates"),
            Some(json!({"candidates": []})),
        ),
        (Method::GET, format!("{p}/invite"), None),
        (Method::GET, "/v1/ws".to_owned(), None),
    ];
    let forged = {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    };
    for (method, path, body) in &routes {
        let build = || {
            let mut req = s.request(method.clone(), path);
            if let Some(body) = body {
                req = req.json(body);
            }
            req
        };
        // No token at all.
        assert_error(
            reply(build()).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        // Authorization headers that are not "Bearer <token>", even around a valid token.
        for header in [
            format!("Basic {}", host.token),
            host.token.clone(),
            format!("Bearer{}", host.token),
            "Bearer".to_owned(),
        ] {
            assert_error(
                reply(build().header(AUTHORIZATION, header)).await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
        }
        // Well-formed tokens the server never issued.
        for token in [forged.as_str(), "", "x"] {
            assert_error(
                reply(build().header(AUTHORIZATION, format!("Bearer {token}"))).await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
            assert_error(
                reply(
                    s.request(method.clone(), &format!("{path}?token={token}"))
                        .json(body.as_ref().unwrap_or(&Value::Null)),
                )
                .await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            );
        }
    }
    // None of that changed the party.
    let after = s.view(&host, party.id).await;
    assert_eq!(after, party);
    s.shutdown().await;
}

// ---------------------------------------------------------------------------- parties

#[tokio::test]
async fn party_routes_reject_invalid_party_ids_and_bodies_with_400() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let (party, invite) = s.create(&host, "ids", None).await;
    let routes = |p: &str| -> Vec<(Method, String, Option<Value>)> {
        vec![
            (Method::GET, p.to_owned(), None),
            (
                Method::POST,
                format!("{p}/join"),
                Some(json!({"secret": invite.secret, "player_name": "p"})),
            ),
            (Method::POST, format!("{p}/leave"), None),
            (
                Method::POST,
                format!("{p}/kick"),
                Some(json!({"member": "p"})),
            ),
            (
                Method::POST,
                format!("{p}/lock"),
                Some(json!({"locked": true})),
            ),
            (Method::POST, format!("{p}/heartbeat"), None),
            (
                Method::PUT,
                format!("{p}/candidates"),
                Some(json!({"candidates": []})),
            ),
            (Method::GET, format!("{p}/invite"), None),
        ]
    };
    for bad in [
        "not-a-party",
        "DEADBEEF00010203",
        "deadbeef0001020",
        "deadbeef000102030",
        "deadbeef0001020g",
    ] {
        for (method, path, body) in routes(&format!("/v1/parties/{bad}")) {
            assert_error(
                s.send(method, &path, Some(&host.token), body).await,
                StatusCode::BAD_REQUEST,
                "bad_request",
            );
        }
    }

    // Bodies that do not decode.
    let p = format!("/v1/parties/{}", party.id);
    let bad_bodies: Vec<(Method, String, &str)> = vec![
        (Method::POST, "/v1/parties".to_owned(), "{"),
        (Method::POST, "/v1/parties".to_owned(), r#"{"name": "n"}"#),
        (
            Method::POST,
            "/v1/parties".to_owned(),
            r#"{"name": "n", "player_name": "p", "max_members": -1}"#,
        ),
        (Method::POST, format!("{p}/join"), "[]"),
        (Method::POST, format!("{p}/join"), r#"{"secret": "abc"}"#),
        (
            Method::POST,
            format!("{p}/join"),
            r#"{"secret": "not hex at all, nor 32 characters", "player_name": "p"}"#,
        ),
        (Method::POST, format!("{p}/kick"), r#"{"who": "p"}"#),
        (Method::POST, format!("{p}/lock"), r#"{"locked": "yes"}"#),
        (Method::PUT, format!("{p}/candidates"), r#"{}"#),
        (
            Method::PUT,
            format!("{p}/candidates"),
            r#"{"candidates": ["not an address"]}"#,
        ),
        (
            Method::PUT,
            format!("{p}/candidates"),
            r#"{"candidates": ["10.0.0.1"]}"#,
        ),
    ];
    for (method, path, body) in bad_bodies {
        let req = s
            .request(method, &path)
            .bearer_auth(&host.token)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        assert_error(reply(req).await, StatusCode::BAD_REQUEST, "bad_request");
    }
    // Too many candidate addresses.
    let many: Vec<String> = (0..17).map(|i| format!("192.0.2.1:{}", 1000 + i)).collect();
    assert_error(
        s.send(
            Method::PUT,
            &format!("{p}/candidates"),
            Some(&host.token),
            Some(json!({ "candidates": many })),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    // The host cannot kick itself.
    assert_error(
        s.send(
            Method::POST,
            &format!("{p}/kick"),
            Some(&host.token),
            Some(json!({"member": "host"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    // Nothing above changed the party.
    assert_eq!(s.view(&host, party.id).await, party);
    s.shutdown().await;
}

#[tokio::test]
async fn create_validates_names_and_party_size() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let create = |name: String, player: String, max: Value| {
        s.send(
            Method::POST,
            "/v1/parties",
            Some(&host.token),
            Some(json!({"name": name, "player_name": player, "max_members": max})),
        )
    };
    for (name, player, max) in [
        (String::new(), "p".to_owned(), Value::Null),
        ("   ".to_owned(), "p".to_owned(), Value::Null),
        ("x".repeat(65), "p".to_owned(), Value::Null),
        ("bell\u{7}".to_owned(), "p".to_owned(), Value::Null),
        ("two\nlines".to_owned(), "p".to_owned(), Value::Null),
        ("n".to_owned(), String::new(), Value::Null),
        ("n".to_owned(), "y".repeat(33), Value::Null),
        ("n".to_owned(), "tab\there".to_owned(), Value::Null),
        ("n".to_owned(), "p".to_owned(), json!(0)),
        ("n".to_owned(), "p".to_owned(), json!(1)),
        ("n".to_owned(), "p".to_owned(), json!(251)),
        ("n".to_owned(), "p".to_owned(), json!(100_000)),
    ] {
        assert_error(
            create(name, player, max).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    // The limits themselves are accepted; names are trimmed and counted in characters.
    for (name, player, max) in [
        ("é".repeat(64), "ü".repeat(32), json!(2)),
        ("  LAN night  ".to_owned(), " ace ".to_owned(), json!(250)),
        ("open".to_owned(), "p".to_owned(), Value::Null),
    ] {
        let (status, body) = create(name.clone(), player.clone(), max.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let resp: PartyResponse = serde_json::from_value(body).expect("a PartyResponse");
        assert_eq!(resp.party.name, name.trim());
        assert_eq!(
            resp.party.max_members,
            max.as_u64().and_then(|m| u32::try_from(m).ok())
        );
        assert_eq!(resp.party.members.len(), 1);
        assert_eq!(resp.party.members[0].name, player.trim());
    }
    s.shutdown().await;
}

#[tokio::test]
async fn create_and_join_assign_addresses_in_order_and_invites_carry_the_party() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let (created, invite) = s.create(&host, "LAN night", None).await;
    assert_eq!(created.name, "LAN night");
    assert_eq!(created.version, 1);
    assert_eq!(created.host, host.key);
    assert!(!created.locked);
    assert_eq!(created.max_members, None);
    assert_eq!(created.network, "10.66.0.0/16");
    assert_eq!(created.members.len(), 1);
    let h = member(&created, &host.key);
    assert_eq!(
        (h.virtual_ip, h.name.as_str(), h.online),
        (ip(1), "host", true)
    );
    assert!(h.candidates.is_empty());
    assert_eq!(invite.party, created.id);
    assert_eq!(invite.control_url, s.base_url());

    let a = s.sign_in().await;
    let b = s.sign_in().await;
    let after_a = s.join(&a, &invite, "alice").await;
    assert_eq!(after_a.version, 2);
    assert_eq!(member(&after_a, &a.key).virtual_ip, ip(2));
    // A second "alice" gets a distinct name.
    let after_b = s.join(&b, &invite, "alice").await;
    assert_eq!(after_b.version, 3);
    assert_eq!(member(&after_b, &b.key).virtual_ip, ip(3));
    assert_eq!(member(&after_b, &b.key).name, "alice-2");
    let names: Vec<(&str, Ipv4Addr)> = after_b
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.virtual_ip))
        .collect();
    assert_eq!(
        names,
        [("host", ip(1)), ("alice", ip(2)), ("alice-2", ip(3))]
    );
    // Everyone sees the same party.
    assert_eq!(s.view(&host, created.id).await, after_b);
    assert_eq!(s.view(&a, created.id).await, after_b);

    // Joining again (a restarted daemon) changes nothing.
    let again = s.join(&a, &invite, "another name").await;
    assert_eq!(again, after_b);

    // The invite route hands out the same code, which members may share.
    for device in [&host, &b] {
        let (status, body) = s
            .send(
                Method::GET,
                &format!("/v1/parties/{}/invite", created.id),
                Some(&device.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let code: InviteCode = body["invite"]
            .as_str()
            .expect("an invite string")
            .parse()
            .expect("the invite parses");
        assert_eq!(code, invite);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn invites_carry_the_configured_public_url() {
    let s =
        Server::start_with(|c| c.public_url = Some("https://lan.example.net:8667/".into())).await;
    let host = s.sign_in().await;
    let (party, invite) = s.create(&host, "public", None).await;
    assert_eq!(invite.control_url, "https://lan.example.net:8667");
    assert_eq!(invite.party, party.id);
    s.shutdown().await;
}

#[tokio::test]
async fn a_host_header_unfit_for_an_invite_is_400_and_changes_nothing() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let long_host = format!("{}.example", "a".repeat(300));
    let req = s
        .request(Method::POST, "/v1/parties")
        .bearer_auth(&host.token)
        .header(HOST, &long_host)
        .json(&json!({"name": "n", "player_name": "p"}));
    assert_error(reply(req).await, StatusCode::BAD_REQUEST, "bad_request");

    let (party, invite) = s.create(&host, "real", None).await;
    let guest = s.sign_in().await;
    let req = s
        .request(Method::POST, &format!("/v1/parties/{}/join", party.id))
        .bearer_auth(&guest.token)
        .header(HOST, &long_host)
        .json(&json!({"secret": invite.secret, "player_name": "g"}));
    assert_error(reply(req).await, StatusCode::BAD_REQUEST, "bad_request");
    let req = s
        .request(Method::GET, &format!("/v1/parties/{}/invite", party.id))
        .bearer_auth(&host.token)
        .header(HOST, &long_host);
    assert_error(reply(req).await, StatusCode::BAD_REQUEST, "bad_request");

    // The refused create made no party and the refused join no member.
    let mut ws = s.ws(&host).await;
    let greeting = settle(&mut ws, 1).await;
    assert_eq!(greeting, vec![party.clone()]);
    assert_eq!(s.view(&host, party.id).await, party);
    s.shutdown().await;
}

#[tokio::test]
async fn join_errors_missing_and_wrong_secret_unknown_party_locked_full_banned() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let guest = s.sign_in().await;
    let (party, invite) = s.create(&host, "guarded", Some(3)).await;
    let join_path = format!("/v1/parties/{}/join", party.id);
    let api = &s.api;
    let join = |device: &Device, body: Value| {
        let token = device.token.clone();
        let path = join_path.clone();
        async move {
            api.send(Method::POST, &path, Some(&token), Some(body))
                .await
        }
    };

    assert_error(
        join(&guest, json!({"player_name": "g"})).await,
        StatusCode::BAD_REQUEST,
        "missing_secret",
    );
    assert_error(
        join(&guest, json!({"secret": null, "player_name": "g"})).await,
        StatusCode::BAD_REQUEST,
        "missing_secret",
    );
    assert_error(
        join(&guest, json!({"secret": invite.secret, "player_name": ""})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        join(
            &guest,
            json!({"secret": invite.secret, "player_name": "z".repeat(33)}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    // A wrong secret and an unknown party get the very same answer: it must not tell
    // whether a party id exists.
    let wrong = PartySecret::from_bytes([0x5a; 16]);
    let wrong_secret = join(&guest, json!({"secret": wrong, "player_name": "g"})).await;
    // Another party's id with this party's secret.
    let unknown_party = s
        .send(
            Method::POST,
            &format!("/v1/parties/{}/join", random_party_id()),
            Some(&guest.token),
            Some(json!({"secret": invite.secret, "player_name": "g"})),
        )
        .await;
    assert_eq!(wrong_secret, unknown_party);
    assert_error(wrong_secret, StatusCode::NOT_FOUND, "party_not_found");

    // Locked: newcomers are refused with 409, members may still re-join.
    let locked: PartyView = s
        .ok(
            Method::POST,
            &format!("/v1/parties/{}/lock", party.id),
            Some(&host.token),
            Some(json!({"locked": true})),
        )
        .await;
    assert!(locked.locked);
    assert_error(
        join(&guest, json!({"secret": invite.secret, "player_name": "g"})).await,
        StatusCode::CONFLICT,
        "party_locked",
    );
    assert_eq!(s.join(&host, &invite, "host").await, locked);
    let unlocked: PartyView = s
        .ok(
            Method::POST,
            &format!("/v1/parties/{}/lock", party.id),
            Some(&host.token),
            Some(json!({"locked": false})),
        )
        .await;
    assert!(!unlocked.locked);
    let with_guest = s.join(&guest, &invite, "g").await;
    assert_eq!(with_guest.members.len(), 2);

    // Full at max_members (3).
    let third = s.sign_in().await;
    assert_eq!(s.join(&third, &invite, "t").await.members.len(), 3);
    let fourth = s.sign_in().await;
    assert_error(
        join(
            &fourth,
            json!({"secret": invite.secret, "player_name": "f"}),
        )
        .await,
        StatusCode::CONFLICT,
        "party_full",
    );

    // Kicked: banned from re-joining this party, even with room again.
    let after_kick: PartyView = s
        .ok(
            Method::POST,
            &format!("/v1/parties/{}/kick", party.id),
            Some(&host.token),
            Some(json!({"member": "g"})),
        )
        .await;
    assert!(!has_member(&after_kick, &guest.key));
    assert_error(
        join(&guest, json!({"secret": invite.secret, "player_name": "g"})).await,
        StatusCode::FORBIDDEN,
        "banned",
    );
    // …but the freed place is open to others.
    assert_eq!(s.join(&fourth, &invite, "f").await.members.len(), 3);
    // The ban is per party.
    let (other, other_invite) = s.create(&host, "other", None).await;
    assert_eq!(s.join(&guest, &other_invite, "g").await.id, other.id);
    s.shutdown().await;
}

#[tokio::test]
async fn party_routes_answer_404_for_unknown_parties_and_403_for_outsiders() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let outsider = s.sign_in().await;
    let (party, _) = s.create(&host, "members only", None).await;
    let routes = |p: &str| -> Vec<(Method, String, Option<Value>)> {
        vec![
            (Method::GET, p.to_owned(), None),
            (Method::POST, format!("{p}/leave"), None),
            (
                Method::POST,
                format!("{p}/kick"),
                Some(json!({"member": "host"})),
            ),
            (
                Method::POST,
                format!("{p}/lock"),
                Some(json!({"locked": true})),
            ),
            (
                Method::POST,
                format!("{p}/lock"),
                Some(json!({"locked": false})),
            ),
            (Method::POST, format!("{p}/heartbeat"), None),
            (
                Method::PUT,
                format!("{p}/candidates"),
                Some(json!({"candidates": ["192.0.2.7:51820"]})),
            ),
            (Method::GET, format!("{p}/invite"), None),
        ]
    };
    let unknown = format!("/v1/parties/{}", random_party_id());
    for (method, path, body) in routes(&unknown) {
        assert_error(
            s.send(method, &path, Some(&host.token), body).await,
            StatusCode::NOT_FOUND,
            "party_not_found",
        );
    }
    for (method, path, body) in routes(&format!("/v1/parties/{}", party.id)) {
        assert_error(
            s.send(method, &path, Some(&outsider.token), body).await,
            StatusCode::FORBIDDEN,
            "not_member",
        );
    }
    assert_eq!(s.view(&host, party.id).await, party);
    s.shutdown().await;
}

#[tokio::test]
async fn kick_and_lock_are_for_the_host_only() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let a = s.sign_in().await;
    let b = s.sign_in().await;
    let (party, invite) = s.create(&host, "hosted", None).await;
    s.join(&a, &invite, "alice").await;
    let before = s.join(&b, &invite, "bob").await;
    let p = format!("/v1/parties/{}", party.id);

    for body in [
        json!({"member": "bob"}),
        json!({"member": "host"}),
        json!({"member": "nobody"}),
    ] {
        assert_error(
            s.send(
                Method::POST,
                &format!("{p}/kick"),
                Some(&a.token),
                Some(body),
            )
            .await,
            StatusCode::FORBIDDEN,
            "not_host",
        );
    }
    for locked in [true, false] {
        assert_error(
            s.send(
                Method::POST,
                &format!("{p}/lock"),
                Some(&a.token),
                Some(json!({ "locked": locked })),
            )
            .await,
            StatusCode::FORBIDDEN,
            "not_host",
        );
    }
    assert_eq!(s.view(&host, party.id).await, before);

    // The host: unknown member is 404; a name or a public key finds one.
    assert_error(
        s.send(
            Method::POST,
            &format!("{p}/kick"),
            Some(&host.token),
            Some(json!({"member": "nobody"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "member_not_found",
    );
    assert_error(
        s.send(
            Method::POST,
            &format!("{p}/kick"),
            Some(&host.token),
            Some(json!({ "member": key_of(&new_secret()) })),
        )
        .await,
        StatusCode::NOT_FOUND,
        "member_not_found",
    );
    let without_a: PartyView = s
        .ok(
            Method::POST,
            &format!("{p}/kick"),
            Some(&host.token),
            Some(json!({"member": "alice"})),
        )
        .await;
    assert_eq!(without_a.version, before.version + 1);
    assert!(!has_member(&without_a, &a.key));
    assert!(has_member(&without_a, &b.key));
    let without_b: PartyView = s
        .ok(
            Method::POST,
            &format!("{p}/kick"),
            Some(&host.token),
            Some(json!({ "member": b.key })),
        )
        .await;
    assert_eq!(without_b.version, before.version + 2);
    assert_eq!(without_b.members.len(), 1);
    // A kicked device is no longer a member.
    assert_error(
        s.send(Method::GET, &p, Some(&a.token), None).await,
        StatusCode::FORBIDDEN,
        "not_member",
    );
    assert_error(
        s.send(Method::POST, &format!("{p}/leave"), Some(&b.token), None)
            .await,
        StatusCode::FORBIDDEN,
        "not_member",
    );

    // Locking bumps the version once; locking again is a no-op.
    let locked: PartyView = s
        .ok(
            Method::POST,
            &format!("{p}/lock"),
            Some(&host.token),
            Some(json!({"locked": true})),
        )
        .await;
    assert!(locked.locked);
    assert_eq!(locked.version, without_b.version + 1);
    let again: PartyView = s
        .ok(
            Method::POST,
            &format!("{p}/lock"),
            Some(&host.token),
            Some(json!({"locked": true})),
        )
        .await;
    assert_eq!(again, locked);
    s.shutdown().await;
}

#[tokio::test]
async fn leaving_and_rejoining_keeps_the_virtual_ip() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let a = s.sign_in().await;
    let b = s.sign_in().await;
    let c = s.sign_in().await;
    let (party, invite) = s.create(&host, "sticky", None).await;
    assert_eq!(
        member(&s.join(&a, &invite, "a").await, &a.key).virtual_ip,
        ip(2)
    );
    let with_b = s.join(&b, &invite, "b").await;
    assert_eq!(member(&with_b, &b.key).virtual_ip, ip(3));

    s.leave(&a, party.id).await;
    let without_a = s.view(&host, party.id).await;
    assert!(!has_member(&without_a, &a.key));
    assert_eq!(without_a.version, with_b.version + 1);
    assert_error(
        s.send(
            Method::GET,
            &format!("/v1/parties/{}", party.id),
            Some(&a.token),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_member",
    );
    // Leaving twice: no longer a member.
    assert_error(
        s.send(
            Method::POST,
            &format!("/v1/parties/{}/leave", party.id),
            Some(&a.token),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_member",
    );

    // A newcomer does not get the address a's return is kept for.
    let with_c = s.join(&c, &invite, "c").await;
    assert_eq!(member(&with_c, &c.key).virtual_ip, ip(4));
    let back = s.join(&a, &invite, "a").await;
    assert_eq!(member(&back, &a.key).virtual_ip, ip(2));
    let ips: Vec<Ipv4Addr> = back.members.iter().map(|m| m.virtual_ip).collect();
    assert_eq!(ips, [ip(1), ip(2), ip(3), ip(4)]);
    s.shutdown().await;
}

#[tokio::test]
async fn the_longest_standing_member_inherits_the_party_and_the_last_one_out_ends_it() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let a = s.sign_in().await;
    let b = s.sign_in().await;
    let (party, invite) = s.create(&host, "succession", None).await;
    next_millisecond().await;
    let with_a = s.join(&a, &invite, "a").await;
    next_millisecond().await;
    let with_b = s.join(&b, &invite, "b").await;
    let (ja, jb) = (
        member(&with_a, &a.key).joined_at,
        member(&with_b, &b.key).joined_at,
    );
    assert!(member(&party, &host.key).joined_at < ja && ja < jb);

    s.leave(&host, party.id).await;
    let after_host = s.view(&b, party.id).await;
    assert_eq!(after_host.host, a.key);
    assert_eq!(after_host.members.len(), 2);
    // The new host holds the host's powers; the old one has none.
    let locked: PartyView = s
        .ok(
            Method::POST,
            &format!("/v1/parties/{}/lock", party.id),
            Some(&a.token),
            Some(json!({"locked": true})),
        )
        .await;
    assert!(locked.locked);
    assert_error(
        s.send(
            Method::POST,
            &format!("/v1/parties/{}/lock", party.id),
            Some(&host.token),
            Some(json!({"locked": false})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_member",
    );

    s.leave(&a, party.id).await;
    let last = s.view(&b, party.id).await;
    assert_eq!(last.host, b.key);
    assert_eq!(last.members.len(), 1);
    // b keeps its own address; nobody is renumbered.
    assert_eq!(member(&last, &b.key).virtual_ip, ip(3));

    s.leave(&b, party.id).await;
    let gone = format!("/v1/parties/{}", party.id);
    assert_error(
        s.send(Method::GET, &gone, Some(&b.token), None).await,
        StatusCode::NOT_FOUND,
        "party_not_found",
    );
    assert_error(
        s.send(
            Method::POST,
            &format!("{gone}/join"),
            Some(&host.token),
            Some(json!({"secret": invite.secret, "player_name": "h"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "party_not_found",
    );
    assert_error(
        s.send(Method::POST, &format!("{gone}/leave"), Some(&b.token), None)
            .await,
        StatusCode::NOT_FOUND,
        "party_not_found",
    );
    s.shutdown().await;
}

#[tokio::test]
async fn candidates_appear_in_the_view_and_heartbeats_keep_the_version() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let a = s.sign_in().await;
    let (party, invite) = s.create(&host, "paths", None).await;
    let joined = s.join(&a, &invite, "a").await;
    let path = format!("/v1/parties/{}/candidates", party.id);
    let candidates: Vec<SocketAddr> = vec![
        "192.168.1.20:51820".parse().expect("an address"),
        "[2001:db8::7]:51820".parse().expect("an address"),
        "203.0.113.9:40000".parse().expect("an address"),
    ];
    let set: PartyView = s
        .ok(
            Method::PUT,
            &path,
            Some(&a.token),
            Some(json!({ "candidates": candidates })),
        )
        .await;
    assert_eq!(set.version, joined.version + 1);
    assert_eq!(member(&set, &a.key).candidates, candidates);
    assert!(member(&set, &host.key).candidates.is_empty());
    // Every member sees them.
    assert_eq!(
        member(&s.view(&host, party.id).await, &a.key).candidates,
        candidates
    );
    // The same list again is no change.
    let same: PartyView = s
        .ok(
            Method::PUT,
            &path,
            Some(&a.token),
            Some(json!({ "candidates": candidates })),
        )
        .await;
    assert_eq!(same, set);
    // Sixteen is the most; an empty list clears them.
    let sixteen: Vec<String> = (0..16).map(|i| format!("192.0.2.1:{}", 2000 + i)).collect();
    let full: PartyView = s
        .ok(
            Method::PUT,
            &path,
            Some(&a.token),
            Some(json!({ "candidates": sixteen })),
        )
        .await;
    assert_eq!(member(&full, &a.key).candidates.len(), 16);
    let cleared: PartyView = s
        .ok(
            Method::PUT,
            &path,
            Some(&a.token),
            Some(json!({ "candidates": [] })),
        )
        .await;
    assert!(member(&cleared, &a.key).candidates.is_empty());
    assert_eq!(cleared.version, set.version + 2);

    // A heartbeat of an online member answers with the view and changes nothing.
    let beat: PartyView = s
        .ok(
            Method::POST,
            &format!("/v1/parties/{}/heartbeat", party.id),
            Some(&a.token),
            None,
        )
        .await;
    assert_eq!(beat, cleared);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_joins_get_twenty_distinct_addresses() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let (party, invite) = s.create(&host, "rush", None).await;
    let mut devices = Vec::new();
    for _ in 0..20 {
        devices.push(s.sign_in().await);
    }
    let joins: Vec<_> = devices
        .iter()
        .map(|device| {
            let (api, device, invite) = (s.api.clone(), device.clone(), invite.clone());
            tokio::spawn(async move {
                let view = api.join(&device, &invite, "player").await;
                (device.key, view)
            })
        })
        .collect();
    let mut ips = BTreeSet::new();
    let mut versions = BTreeSet::new();
    for join in joins {
        let (key, view) = join.await.expect("the join task does not panic");
        ips.insert(member(&view, &key).virtual_ip);
        versions.insert(view.version);
    }
    let expected: BTreeSet<Ipv4Addr> = (2..=21).map(ip).collect();
    assert_eq!(ips, expected);
    // Each join was one membership change of its own.
    assert_eq!(versions, (2..=21).collect::<BTreeSet<u64>>());
    let last = s.view(&host, party.id).await;
    assert_eq!(last.version, party.version + 20);
    assert_eq!(last.members.len(), 21);
    let names: BTreeSet<&str> = last.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), 21, "player names are made unique");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_running_alongside_membership_changes_all_succeed() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let (party, invite) = s.create(&host, "busy evening", None).await;
    // Each task signs in (writes a device and a token) while others join, publish
    // candidates and renew: writes outside and inside membership transactions interleave.
    let tasks: Vec<_> = (0..20u16)
        .map(|i| {
            let (api, invite) = (s.api.clone(), invite.clone());
            tokio::spawn(async move {
                let device = api.sign_in().await;
                api.join(&device, &invite, "p").await;
                let path = format!("/v1/parties/{}/candidates", invite.party);
                let _: PartyView = api
                    .ok(
                        Method::PUT,
                        &path,
                        Some(&device.token),
                        Some(json!({ "candidates": [format!("192.0.2.1:{}", 3000 + i)] })),
                    )
                    .await;
                let _: TokenResponse = api
                    .ok(Method::POST, "/v1/auth/renew", Some(&device.token), None)
                    .await;
                device.key
            })
        })
        .collect();
    let mut keys = Vec::new();
    for task in tasks {
        keys.push(task.await.expect("every request succeeds"));
    }
    let last = s.view(&host, party.id).await;
    assert_eq!(last.members.len(), 21);
    for key in &keys {
        assert_eq!(member(&last, key).candidates.len(), 1);
    }
    // One version per join and per candidate change.
    assert_eq!(last.version, party.version + 40);
    s.shutdown().await;
}

// ---------------------------------------------------------------------------- liveness

#[tokio::test]
async fn sweep_marks_silent_members_away_then_removes_them_and_heartbeats_revive() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let a = s.sign_in().await;
    let (party, invite) = s.create(&host, "liveness", None).await;
    next_millisecond().await;
    let joined = s.join(&a, &invite, "a").await;
    // Members were last seen when they joined.
    let host_seen = member(&joined, &host.key).joined_at;
    let a_seen = member(&joined, &a.key).joined_at;
    assert!(host_seen < a_seen);
    let mut ws = s.ws(&a).await;
    settle(&mut ws, 1).await;

    // Silent for exactly 90 s is still online.
    s.control
        .sweep(host_seen + AWAY_AFTER_MS)
        .await
        .expect("sweep");
    assert_eq!(s.view(&a, party.id).await, joined);

    // One millisecond more: the host is away, a (who joined later) is not.
    s.control
        .sweep(host_seen + AWAY_AFTER_MS + 1)
        .await
        .expect("sweep");
    let away = s.view(&a, party.id).await;
    assert!(!member(&away, &host.key).online);
    assert!(member(&away, &a.key).online);
    assert_eq!(away.version, joined.version + 1);
    assert_eq!(next_party(&mut ws).await, away);
    // Sweeping again at the same time changes nothing more.
    s.control
        .sweep(host_seen + AWAY_AFTER_MS + 1)
        .await
        .expect("sweep");
    assert_eq!(s.view(&a, party.id).await, away);

    // The host's heartbeat brings it back (and, a millisecond on, is later than a's join).
    next_millisecond().await;
    let revived: PartyView = s
        .ok(
            Method::POST,
            &format!("/v1/parties/{}/heartbeat", party.id),
            Some(&host.token),
            None,
        )
        .await;
    assert!(member(&revived, &host.key).online);
    assert_eq!(revived.version, away.version + 1);
    assert_eq!(next_party(&mut ws).await, revived);

    // After five silent minutes (counted from a's join, its last word) a is removed; the
    // host heartbeated after that and is only away.
    s.control
        .sweep(a_seen + REMOVE_AFTER_MS + 1)
        .await
        .expect("sweep");
    match next_msg(&mut ws, "removed").await {
        ServerMessage::Removed { party: id, reason } => {
            assert_eq!(id, party.id);
            assert!(reason.contains("silent"), "{reason}");
        }
        other => panic!("expected removal, got {other:?}"),
    }
    let after = s.view(&host, party.id).await;
    assert_eq!(after.members.len(), 1);
    assert_eq!(after.host, host.key);
    assert!(!member(&after, &host.key).online);
    assert_error(
        s.send(
            Method::GET,
            &format!("/v1/parties/{}", party.id),
            Some(&a.token),
            None,
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_member",
    );
    let back: PartyView = s
        .ok(
            Method::POST,
            &format!("/v1/parties/{}/heartbeat", party.id),
            Some(&host.token),
            None,
        )
        .await;
    assert!(member(&back, &host.key).online);
    s.shutdown().await;
}

#[tokio::test]
async fn sweep_removes_a_silent_host_and_hands_over_or_ends_the_party() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let a = s.sign_in().await;
    let (party, invite) = s.create(&host, "handover", None).await;
    next_millisecond().await;
    let joined = s.join(&a, &invite, "a").await;
    let host_seen = member(&joined, &host.key).joined_at;
    let a_seen = member(&joined, &a.key).joined_at;

    s.control
        .sweep(host_seen + REMOVE_AFTER_MS + 1)
        .await
        .expect("sweep");
    let left = s.view(&a, party.id).await;
    assert_eq!(left.host, a.key);
    assert_eq!(left.members.len(), 1);

    s.control
        .sweep(a_seen + REMOVE_AFTER_MS + 1)
        .await
        .expect("sweep");
    assert_error(
        s.send(
            Method::GET,
            &format!("/v1/parties/{}", party.id),
            Some(&a.token),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "party_not_found",
    );
    s.shutdown().await;
}

#[tokio::test]
async fn sweep_purges_expired_tokens() {
    let s = Server::start().await;
    let device = s.sign_in().await;
    let renewed: TokenResponse = s
        .ok(Method::POST, "/v1/auth/renew", Some(&device.token), None)
        .await;
    // A sweep now leaves live tokens alone.
    s.control.sweep(unix_ms()).await.expect("sweep");
    let _: TokenResponse = s
        .ok(Method::POST, "/v1/auth/renew", Some(&renewed.token), None)
        .await;
    // A sweep an hour from now deletes every token issued so far.
    s.control
        .sweep(unix_ms() + 60 * 60 * 1000)
        .await
        .expect("sweep");
    for token in [&device.token, &renewed.token] {
        assert_error(
            s.send(Method::POST, "/v1/auth/renew", Some(token), None)
                .await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    s.shutdown().await;
}

// --------------------------------------------------------------------------- WebSocket

#[tokio::test]
async fn websocket_pushes_changes_relays_signals_and_reports_removal() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let a = s.sign_in().await;
    let stranger = s.sign_in().await;
    let (party, invite) = s.create(&host, "live", None).await;

    let mut host_ws = s.ws(&host).await;
    assert_eq!(settle(&mut host_ws, 1).await, vec![party.clone()]);
    let mut a_ws = s.ws(&a).await;
    settle(&mut a_ws, 0).await;

    // a joins: both get the new view.
    let joined = s.join(&a, &invite, "a").await;
    assert_eq!(next_party(&mut host_ws).await, joined);
    assert_eq!(next_party(&mut a_ws).await, joined);

    // Signals go both ways, payload untouched, with the sender's key.
    let payload = json!({"kind": "offer", "candidates": ["192.0.2.1:51820"], "n": 1});
    send_json(
        &mut host_ws,
        json!({"type": "signal", "to": a.key, "payload": payload}),
    )
    .await;
    let json = next_json(&mut a_ws).await;
    assert_eq!(
        json,
        json!({"type": "signal", "from": host.key, "payload": payload})
    );
    send_json(
        &mut a_ws,
        json!({"type": "signal", "to": host.key, "payload": "answer"}),
    )
    .await;
    match next_msg(&mut host_ws, "signal").await {
        ServerMessage::Signal { from, payload } => {
            assert_eq!(from, a.key);
            assert_eq!(payload, json!("answer"));
        }
        other => panic!("expected a signal, got {other:?}"),
    }

    // Signals to someone outside every shared party, and unreadable messages, are errors.
    send_json(
        &mut host_ws,
        json!({"type": "signal", "to": stranger.key, "payload": {}}),
    )
    .await;
    assert!(next_error(&mut host_ws).await.contains("signals go only"));
    for bad in [
        json!({"type": "dance"}),
        json!({"type": "signal", "payload": {}}),
        json!({"type": "signal", "to": "not a key", "payload": {}}),
    ] {
        send_json(&mut host_ws, bad).await;
        assert!(
            next_error(&mut host_ws)
                .await
                .contains("unreadable message")
        );
    }

    // A lock is pushed too.
    let locked: PartyView = s
        .ok(
            Method::POST,
            &format!("/v1/parties/{}/lock", party.id),
            Some(&host.token),
            Some(json!({"locked": true})),
        )
        .await;
    assert_eq!(next_party(&mut host_ws).await, locked);
    assert_eq!(next_party(&mut a_ws).await, locked);

    // Kicked: a is told it was removed; the host gets the smaller party.
    let kicked: PartyView = s
        .ok(
            Method::POST,
            &format!("/v1/parties/{}/kick", party.id),
            Some(&host.token),
            Some(json!({"member": "a"})),
        )
        .await;
    let json = next_json(&mut a_ws).await;
    assert_eq!(
        json,
        json!({"type": "removed", "party": party.id, "reason": "kicked by the host"})
    );
    assert_eq!(next_party(&mut host_ws).await, kicked);
    assert_eq!(kicked.members.len(), 1);
    // Now a shares no party with the host: its signals are refused.
    send_json(
        &mut a_ws,
        json!({"type": "signal", "to": host.key, "payload": {}}),
    )
    .await;
    assert!(next_error(&mut a_ws).await.contains("signals go only"));

    host_ws.close(None).await.expect("close");
    a_ws.close(None).await.expect("close");
    s.shutdown().await;
}

#[tokio::test]
async fn websocket_requires_a_token_and_an_upgrade() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let (party, _) = s.create(&host, "ws auth", None).await;

    assert_eq!(refused(s.ws_request("/v1/ws", None)).await, 401);
    assert_eq!(refused(s.ws_request("/v1/ws", Some("forged"))).await, 401);
    assert_eq!(
        refused(s.ws_request("/v1/ws?token=forged", None)).await,
        401
    );

    // The token may come in the query, for browsers.
    let mut ws = connect(s.ws_request(&format!("/v1/ws?token={}", host.token), None)).await;
    assert_eq!(settle(&mut ws, 1).await, vec![party.clone()]);
    // Extra or repeated query parameters do not break the handshake.
    let mut ws2 =
        connect(s.ws_request(&format!("/v1/ws?v=1&token={0}&token={0}", host.token), None)).await;
    assert_eq!(settle(&mut ws2, 1).await, vec![party.clone()]);

    // A plain GET with a valid token is not a WebSocket: a JSON 400, not a bare text body.
    assert_error(
        s.send(Method::GET, "/v1/ws", Some(&host.token), None).await,
        StatusCode::BAD_REQUEST,
        "websocket_required",
    );
    ws.close(None).await.expect("close");
    ws2.close(None).await.expect("close");
    s.shutdown().await;
}

// ---------------------------------------------------------------------------- storage

#[tokio::test]
async fn a_database_failure_is_a_json_500_and_the_server_recovers() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    // Another process holds the database's write lock past the server's 5 s busy timeout.
    let mut other = sqlx::SqliteConnection::connect(&s.database_url)
        .await
        .expect("a second connection to the database");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .expect("the write lock");
    assert_error(
        s.send(
            Method::POST,
            "/v1/parties",
            Some(&host.token),
            Some(json!({"name": "n", "player_name": "p"})),
        )
        .await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
    );
    sqlx::query("ROLLBACK")
        .execute(&mut other)
        .await
        .expect("release the lock");
    other.close().await.expect("close");
    let (party, _) = s.create(&host, "after the outage", None).await;
    assert_eq!(s.view(&host, party.id).await, party);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_wait_for_another_writer_instead_of_failing() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let guest = s.sign_in().await;
    let (party, invite) = s.create(&host, "patient", None).await;
    // Another writer (an operator's sqlite3 shell, a backup tool) holds the write lock for a
    // moment and commits. A membership change that read before taking the lock would then
    // fail with SQLITE_BUSY_SNAPSHOT (a 500); the server takes the lock up front and waits.
    let mut other = sqlx::SqliteConnection::connect(&s.database_url)
        .await
        .expect("a second connection to the database");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .expect("the write lock");
    let api = s.api.clone();
    let join = tokio::spawn(async move { api.join(&guest, &invite, "g").await });
    let api = s.api.clone();
    let heartbeat_path = format!("/v1/parties/{}/heartbeat", party.id);
    let token = host.token.clone();
    let heartbeat = tokio::spawn(async move {
        api.ok::<PartyView>(Method::POST, &heartbeat_path, Some(&token), None)
            .await
    });
    // Let both reach the database while the lock is held. (Were they slower, they would
    // find it free: the test can then miss a regression but cannot fail spuriously.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("INSERT INTO devices (public_key, created_at) VALUES ('elsewhere', 0)")
        .execute(&mut other)
        .await
        .expect("the other writer writes");
    sqlx::query("COMMIT")
        .execute(&mut other)
        .await
        .expect("release the lock");
    other.close().await.expect("close");
    let joined = join
        .await
        .expect("the join waits for the lock and succeeds");
    assert_eq!(joined.members.len(), 2);
    heartbeat
        .await
        .expect("the heartbeat waits for the lock and succeeds");
    s.shutdown().await;
}

/// A control plane that was down longer than the removal time must not expire everyone the
/// moment it is back: silence counts from its restart.
#[tokio::test]
async fn a_restarted_control_plane_counts_silence_from_its_start() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let a = s.sign_in().await;
    let (party, invite) = s.create(&host, "outage", None).await;
    let joined = s.join(&a, &invite, "a").await;
    assert_eq!(joined.members.len(), 2);
    // The server goes down; its clients' last heartbeats age by six minutes meanwhile.
    let url = s.database_url.clone();
    let Server {
        stop, task, _dir, ..
    } = s;
    stop.send(()).ok();
    task.await.expect("no panic").expect("clean stop");
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("direct access");
    sqlx::query("UPDATE members SET last_seen = last_seen - 360000")
        .execute(&pool)
        .await
        .expect("age the heartbeats");
    pool.close().await;
    let restarted = Control::open(ControlConfig::new(url.clone()))
        .await
        .expect("restart");
    let now = now_ms();
    // Right after the restart nobody is removed or even marked away.
    restarted.sweep(now + 1_000).await.expect("sweep");
    assert_eq!(
        party_in_db(&url, &party.id).await,
        2,
        "members kept across the outage"
    );
    // Still silent a full removal period after the restart: then they go.
    restarted
        .sweep(now + REMOVE_AFTER_MS + 1_000)
        .await
        .expect("sweep");
    assert_eq!(
        party_in_db(&url, &party.id).await,
        0,
        "silent after the restart: removed"
    );
}

async fn party_in_db(url: &str, id: &lanrage_proto::PartyId) -> i64 {
    let pool = sqlx::SqlitePool::connect(url).await.expect("direct access");
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE party_id = $1")
        .bind(id.to_string())
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    n
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

/// In host mode only the owner may create parties on the embedded control plane.
#[tokio::test]
async fn creators_can_be_restricted_to_the_owner() {
    let owner_secret = new_secret();
    let owner_key = key_of(&owner_secret);
    let s = Server::start_with(|c| c.creators = Some(vec![owner_key])).await;
    let stranger = s.sign_in().await;
    let (status, body) = s
        .send(
            Method::POST,
            "/v1/parties",
            Some(&stranger.token),
            Some(json!({"name": "squat", "player_name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "not_allowed");
    s.shutdown().await;
}

// ------------------------------------------------------------ metrics and request ids

/// `GET /metrics`: the raw text (after checking status and content type) and its parse.
async fn scrape(s: &Server) -> (String, prometheus_parse::Scrape) {
    let resp = tokio::time::timeout(PATIENCE, s.request(Method::GET, "/metrics").send())
        .await
        .expect("a reply in time")
        .expect("an HTTP exchange over loopback");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[CONTENT_TYPE],
        lanrage_proto::metrics::CONTENT_TYPE
    );
    let text = resp.text().await.expect("a text body");
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the body is Prometheus text");
    (text, parsed)
}

/// The value of the one sample of `name` whose labels include all of `labels`.
#[track_caller]
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "one {name} with {labels:?}: {found:#?}");
    match &found[0].value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        prometheus_parse::Value::Histogram(buckets) => buckets.last().expect("a +Inf bucket").count,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_show_the_state() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let guest = s.sign_in().await;
    let (party, invite) = s.create(&host, "metrics", None).await;
    s.join(&guest, &invite, "guest").await;
    let mut ws = s.ws(&host).await;
    settle(&mut ws, 1).await;
    assert_error(
        s.send(Method::GET, "/v1/nope", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let brew = Method::from_bytes(b"BREW").expect("an extension method");
    assert_error(
        s.send(brew, "/v1/health", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_error(
        s.send(
            Method::GET,
            &format!("/v1/parties/{}", party.id),
            None,
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let (text, m) = scrape(&s).await;
    for (name, kind) in [
        ("lanrage_control_database_up", "gauge"),
        ("lanrage_control_parties", "gauge"),
        ("lanrage_control_members", "gauge"),
        ("lanrage_control_websockets", "gauge"),
        ("lanrage_control_relays", "gauge"),
        ("lanrage_control_uptime_seconds", "gauge"),
        ("lanrage_control_requests_total", "counter"),
        ("lanrage_control_request_duration_seconds", "histogram"),
    ] {
        assert!(m.docs.contains_key(name), "HELP of {name}:\n{text}");
        assert!(
            text.contains(&format!("\n# TYPE {name} {kind}\n")),
            "TYPE of {name}:\n{text}"
        );
    }
    assert_eq!(sample(&m, "lanrage_control_database_up", &[]), 1.0);
    assert_eq!(sample(&m, "lanrage_control_parties", &[]), 1.0);
    let members = "lanrage_control_members";
    assert_eq!(sample(&m, members, &[("state", "online")]), 2.0);
    assert_eq!(sample(&m, members, &[("state", "away")]), 0.0);
    assert_eq!(sample(&m, "lanrage_control_websockets", &[]), 1.0);
    assert_eq!(sample(&m, "lanrage_control_relays", &[]), 0.0);
    assert!(sample(&m, "lanrage_control_uptime_seconds", &[]) >= 0.0);

    let requests = "lanrage_control_requests_total";
    let req = |route, method, status| [("route", route), ("method", method), ("status", status)];
    assert_eq!(
        sample(&m, requests, &req("/v1/auth/challenge", "POST", "200")),
        2.0
    );
    assert_eq!(
        sample(&m, requests, &req("/v1/auth/token", "POST", "200")),
        2.0
    );
    assert_eq!(
        sample(&m, requests, &req("/v1/parties", "POST", "201")),
        1.0
    );
    assert_eq!(sample(&m, requests, &req("/v1/ws", "GET", "101")), 1.0);
    assert_eq!(sample(&m, requests, &req("unmatched", "GET", "404")), 1.0);
    assert_eq!(
        sample(&m, requests, &req("/v1/health", "other", "405")),
        1.0
    );
    let durations = "lanrage_control_request_duration_seconds";
    assert_eq!(sample(&m, durations, &[("route", "/v1/auth/token")]), 2.0);
    // prometheus-parse cuts label sets at the first `}`, even inside a quoted value, so it
    // skips the lines of templated routes; they are checked in the text.
    for line in [
        "lanrage_control_requests_total{route=\"/v1/parties/{id}/join\",method=\"POST\",status=\"200\"} 1\n",
        "lanrage_control_requests_total{route=\"/v1/parties/{id}\",method=\"GET\",status=\"401\"} 1\n",
        "lanrage_control_request_duration_seconds_count{route=\"/v1/parties/{id}/join\"} 1\n",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    assert!(
        !text.contains(&party.id.to_string()),
        "routes are templates, never raw paths"
    );

    // Counted once the answer is made, so the scrape itself shows up in the next one.
    let (_, m) = scrape(&s).await;
    assert_eq!(sample(&m, requests, &req("/metrics", "GET", "200")), 1.0);

    ws.close(None).await.expect("close");
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let s = Server::start_with(|c| c.metrics = false).await;
    assert_error(
        s.send(Method::GET, "/metrics", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert!(
        s.control
            .metrics()
            .await
            .contains("lanrage_control_parties 0\n")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_made_otherwise() {
    let s = Server::start().await;
    let id_of = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-request-id")
            .expect("every answer has an x-request-id")
            .to_str()
            .expect("a text header")
            .to_owned()
    };
    let send = |path: &'static str, id: Option<String>| {
        let mut req = s.request(Method::GET, path);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        async move {
            tokio::time::timeout(PATIENCE, req.send())
                .await
                .expect("a reply in time")
                .expect("an HTTP exchange over loopback")
        }
    };
    let is_v7 = |id: &str| uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 7);

    let longest = "a".repeat(64);
    for sane in ["abc-DEF_1.2", "7", longest.as_str()] {
        for path in ["/v1/health", "/v1/nope"] {
            let resp = send(path, Some(sane.to_owned())).await;
            assert_eq!(id_of(&resp), sane, "{path}");
        }
    }
    let fresh = id_of(&send("/v1/health", None).await);
    assert!(is_v7(&fresh), "{fresh}");
    assert_ne!(
        fresh,
        id_of(&send("/v1/health", None).await),
        "a new id each time"
    );
    let too_long = "a".repeat(65);
    for bad in [too_long.as_str(), "a b", "x/y", "id;drop", "{\"json\"}", ""] {
        let id = id_of(&send("/v1/health", Some(bad.to_owned())).await);
        assert!(is_v7(&id), "{bad:?} is replaced by a UUID v7, got {id}");
    }
    s.shutdown().await;
}

// ------------------------------------------------------------------------- hardening

impl Api {
    /// Signs in the device of `secret` again: the token route's raw answer.
    async fn sign_in_as(&self, secret: &StaticSecret) -> (StatusCode, Value) {
        let key = key_of(secret);
        let challenge = self.challenge(&key).await;
        self.send(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({
                "challenge_id": challenge.challenge_id,
                "public_key": key,
                "proof": prove(secret, &challenge),
            })),
        )
        .await
    }

    /// A device signed in from this client's address.
    async fn sign_in_here(&self) -> Device {
        let secret = new_secret();
        let (status, body) = self.sign_in_as(&secret).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Device {
            key: key_of(&secret),
            token: body["token"].as_str().expect("a token").to_owned(),
        }
    }
}

#[tokio::test]
async fn wrong_invites_are_limited_per_party_and_address() {
    let s = Server::start().await;
    let host = s.sign_in().await;
    let (party, invite) = s.create(&host, "guarded", None).await;
    let guesser = s.client_at(Ipv4Addr::new(127, 0, 0, 3));
    let guest = guesser.sign_in_here().await;
    let path = format!("/v1/parties/{}/join", party.id);
    let try_secret = |secret: PartySecret| {
        let (guesser, path, token) = (guesser.clone(), path.clone(), guest.token.clone());
        async move {
            guesser
                .send(
                    Method::POST,
                    &path,
                    Some(&token),
                    Some(json!({"secret": secret, "player_name": "g"})),
                )
                .await
        }
    };
    for i in 0..10u8 {
        assert_error(
            try_secret(PartySecret::from_bytes([i; 16])).await,
            StatusCode::NOT_FOUND,
            "party_not_found",
        );
    }
    // The eleventh try within the minute waits, and so does the right secret from there:
    // the limit cannot be told apart from a refusal by guessing on.
    assert_error(
        try_secret(PartySecret::from_bytes([0xee; 16])).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    assert_error(
        try_secret(invite.secret).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    // Another party id from the same address still gets an answer (the per-address limit
    // is higher), and a friend elsewhere joins with the right secret.
    assert_error(
        guesser
            .send(
                Method::POST,
                &format!("/v1/parties/{}/join", random_party_id()),
                Some(&guest.token),
                Some(json!({"secret": invite.secret, "player_name": "g"})),
            )
            .await,
        StatusCode::NOT_FOUND,
        "party_not_found",
    );
    let friend = s.client_at(Ipv4Addr::new(127, 0, 0, 4));
    let device = friend.sign_in_here().await;
    let view = friend.join(&device, &invite, "friend").await;
    assert!(has_member(&view, &device.key));
    s.shutdown().await;
}

#[tokio::test]
async fn sign_ins_and_party_creation_have_quotas() {
    let s = Server::start().await;
    // Ten sign-ins of one device in a row, then it waits.
    let secret = new_secret();
    for _ in 0..10 {
        let (status, body) = s.sign_in_as(&secret).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = s.sign_in_as(&secret).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited");
    // Another device is not affected.
    let host = s.sign_in().await;
    for i in 0..5 {
        s.create(&host, &format!("party {i}"), None).await;
    }
    assert_error(
        s.send(
            Method::POST,
            "/v1/parties",
            Some(&host.token),
            Some(json!({"name": "one too many", "player_name": "p"})),
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    s.shutdown().await;
}

/// A signed `POST /v1/relays` with `body`, as a relay sends it.
fn relay_request(
    api: &Api,
    signer: &lanrage_core::turn::RelaySigner,
    body: &[u8],
    nonce: u8,
) -> reqwest::RequestBuilder {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let auth = signer.authorization("POST", "/v1/relays", body, unix, [nonce; 16]);
    api.request(Method::POST, "/v1/relays")
        .header(AUTHORIZATION, auth)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_vec())
}

fn relay_body(id: &str, addr: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "region": "lab", "addrs": [addr], "turn": true,
        "allocations": 0, "capacity": 64,
    }))
    .expect("JSON")
}

#[tokio::test]
async fn relay_registrations_are_signed_by_trusted_keys_and_never_replayed() {
    let signer = lanrage_core::turn::RelaySigner::from_seed(&[21; 32]);
    let trusted = signer.public_key();
    let s = Server::start_with(|c| {
        c.ice.turn_secret = Some("lab-secret".into());
        c.ice.trusted_relays = vec![trusted];
    })
    .await;
    let host = s.sign_in().await;
    s.create(&host, "relayed", None).await;
    let body = relay_body("r1", "203.0.113.5:3478");
    let captured = relay_request(&s, &signer, &body, 1)
        .build()
        .expect("a request");
    let header = captured.headers()[AUTHORIZATION].clone();
    let (status, first) = reply(relay_request(&s, &signer, &body, 1)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first, json!({"revoked": []}));
    // The same bytes again, and the captured header on another body: refused.
    let (status, reply_again) = reply_of(&s, header.clone(), body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reply_again}");
    assert_eq!(reply_again["code"], "relay_unauthorized");
    let evil = relay_body("r1", "198.51.100.66:3478");
    let (status, _) = reply_of(&s, header, evil).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A key nobody listed, however well it signs.
    let stranger = lanrage_core::turn::RelaySigner::from_seed(&[22; 32]);
    let (status, body_json) = reply(relay_request(
        &s,
        &stranger,
        &relay_body("r2", "198.51.100.66:3478"),
        2,
    ))
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body_json}");
    // Only the real relay is handed out.
    let ice: Value = s.ok(Method::GET, "/v1/ice", Some(&host.token), None).await;
    let addrs: Vec<&str> = ice["turn"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|t| t["addr"].as_str())
        .collect();
    assert_eq!(addrs, ["203.0.113.5:3478"]);
    s.shutdown().await;

    // Without any trusted key, even a well-signed registration is refused.
    let s = Server::start().await;
    let (status, _) = reply(relay_request(&s, &signer, &body, 3)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    s.shutdown().await;
}

/// Sends `body` to `/v1/relays` with a given (captured) authorization header.
async fn reply_of(
    api: &Api,
    auth: reqwest::header::HeaderValue,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    reply(
        api.request(Method::POST, "/v1/relays")
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .body(body),
    )
    .await
}

#[tokio::test]
async fn relay_credentials_are_for_members_and_revoked_when_they_go() {
    let signer = lanrage_core::turn::RelaySigner::from_seed(&[23; 32]);
    let trusted = signer.public_key();
    let s = Server::start_with(|c| {
        c.ice.turn_secret = Some("lab-secret".into());
        c.ice.turn = vec!["203.0.113.9:3478".parse().expect("addr")];
        c.ice.trusted_relays = vec![trusted];
    })
    .await;
    let mut revocations = s.control.revocations();
    let stranger = s.sign_in().await;
    assert_error(
        s.send(Method::GET, "/v1/ice", Some(&stranger.token), None)
            .await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    let host = s.sign_in().await;
    let guest = s.sign_in().await;
    let (party, invite) = s.create(&host, "relayed", None).await;
    s.join(&guest, &invite, "guest").await;
    let ice: Value = s.ok(Method::GET, "/v1/ice", Some(&guest.token), None).await;
    let username = ice["turn"][0]["username"].as_str().expect("credentials");
    let (_, user) = username.split_once(':').expect("EXPIRY:USER");
    let key = guest.key.to_string();
    assert_eq!(user, format!("{}.{}", &key[..16], party.id));
    assert_eq!(ice["ttl_secs"], 3600);
    // Kicked: the credentials go, relays hear it in their heartbeat and in-process relays
    // at once, and the device gets no new ones.
    let (status, body) = s
        .send(
            Method::POST,
            &format!("/v1/parties/{}/kick", party.id),
            Some(&host.token),
            Some(json!({"member": "guest"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pushed = revocations.try_recv().expect("a revocation");
    assert_eq!(pushed.user, user);
    assert_error(
        s.send(Method::GET, "/v1/ice", Some(&guest.token), None)
            .await,
        StatusCode::FORBIDDEN,
        "not_a_member",
    );
    let (status, beat) = reply(relay_request(
        &s,
        &signer,
        &relay_body("r1", "203.0.113.5:3478"),
        9,
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    let revoked = beat["revoked"].as_array().expect("a list");
    assert_eq!(revoked.len(), 1, "{beat}");
    assert_eq!(revoked[0]["user"], user);
    // Leaving revokes too.
    s.leave(&host, party.id).await;
    assert!(revocations.try_recv().is_ok());
    // Revocations outlive a restart of the control plane: a relay that registers with the
    // new instance still hears of both.
    let Server {
        stop, task, _dir, ..
    } = s;
    stop.send(()).ok();
    task.await.expect("no panic").expect("clean stop");
    let s = Server::start_in(_dir, |c| {
        c.ice.turn_secret = Some("lab-secret".into());
        c.ice.trusted_relays = vec![signer.public_key()];
    })
    .await;
    let (status, beat) = reply(relay_request(
        &s,
        &signer,
        &relay_body("r1", "203.0.113.5:3478"),
        9,
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    let users: Vec<&str> = beat["revoked"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["user"].as_str())
        .collect();
    assert!(users.contains(&user), "{beat}");
    assert_eq!(users.len(), 2, "{beat}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_device_holds_at_most_four_websockets_and_the_oldest_goes() {
    let s = Server::start().await;
    let device = s.sign_in().await;
    let mut first = s.ws(&device).await;
    settle(&mut first, 0).await;
    let mut rest = Vec::new();
    for _ in 0..3 {
        let mut ws = s.ws(&device).await;
        settle(&mut ws, 0).await;
        rest.push(ws);
    }
    let mut fifth = s.ws(&device).await;
    settle(&mut fifth, 0).await;
    let error = next_error(&mut first).await;
    assert!(error.starts_with("too_many_connections"), "{error}");
    let end = tokio::time::timeout(PATIENCE, first.next())
        .await
        .expect("the oldest closes in time");
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{end:?}"
    );
    // The others still work.
    for ws in rest.iter_mut().chain(std::iter::once(&mut fifth)) {
        settle(ws, 0).await;
    }
    s.shutdown().await;
}

#[tokio::test]
async fn idle_and_excess_connections_are_closed_and_others_are_served() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = Server::start_with(|c| {
        c.limits.header_read_timeout = Duration::from_millis(500);
        c.limits.connections_per_ip = 3;
    })
    .await;
    let addr = s.addr;
    let from = |last: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0))
            .expect("bind to a loopback address");
        socket.connect(addr).await.expect("connect")
    };
    let closed = |mut c: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(PATIENCE, c.read(&mut buf))
            .await
            .expect("the server closes it in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    };
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(from(6).await);
    }
    // The fourth from that address is closed at once, unanswered.
    let mut excess = from(6).await;
    let _ = excess
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    closed(excess).await;
    // Another address is served meanwhile.
    let (status, body) = s.send(Method::GET, "/v1/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The idle ones are closed by the header-read timeout, which frees the address.
    for c in idle {
        closed(c).await;
    }
    let mut again = from(6).await;
    again
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, again.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    s.shutdown().await;
}
