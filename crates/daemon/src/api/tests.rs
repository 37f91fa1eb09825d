//! The local API against a real data plane and a supervisor stand-in.

use std::net::SocketAddr;
use std::time::Duration;

use gotatun::x25519::{PublicKey, StaticSecret};
use lanrage_proto::DeviceKey;
use reqwest::StatusCode;

use lanrage_proto::local::{LanStatus, LanTrace, Settings, Status};
use serde_json::{Value, json};

use super::*;
use crate::supervisor::LocalError;

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
    let shared_sup = Arc::clone(&shared);
    tokio::spawn(async move {
        let not_in_party = || LocalError::new(409, "not_in_party", "not in a party");
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Leave(reply) | Command::Kick(_, reply) | Command::Lock(_, reply) => {
                    let _ = reply.send(Err(not_in_party()));
                }
                Command::Invite(reply) => {
                    let _ = reply.send(Err(not_in_party()));
                }
                Command::SetName(name, reply) => {
                    shared_sup.write().await.name = name;
                    let _ = reply.send(Ok(()));
                }
                Command::Create(_, reply) | Command::Join(_, _, reply) => {
                    let _ = reply.send(Err(LocalError::new(
                        502,
                        "control_unreachable",
                        "cannot reach the control plane",
                    )));
                }
            }
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).await.expect("state");
    let state = ApiState::new(tx, shared, dataplane, store, TOKEN.into(), addr.port());
    // The event hub runs beside the server, as the daemon's start-up runs it (supervised).
    let hub = super::hub_task(state.clone());
    tokio::spawn(async move { hub(tokio::sync::watch::channel(false).1).await });
    tokio::spawn(serve(listener, state, std::future::pending()));
    (addr, dir)
}

#[tokio::test]
async fn status_is_open_and_reports_no_party() {
    let (addr, _dir) = serve_api().await;
    let resp = reqwest::get(format!("http://{addr}/api/v1/status"))
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
    let url = format!("http://{addr}/api/v1/status");
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
        .post(format!("http://{addr}/api/v1/party/leave"))
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
        (reqwest::Method::POST, "/api/v1/party/leave"),
        (reqwest::Method::POST, "/api/v1/party/create"),
        (reqwest::Method::GET, "/api/v1/party/invite"),
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
        .post(format!("http://{addr}/api/v1/party/leave"))
        .header(API_TOKEN_HEADER, TOKEN)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: ErrorBody = resp.json().await.expect("error json");
    assert_eq!(body.error.code, "not_in_party");
    assert_eq!(body.error.message, "not in a party");
    // A malformed body is a 400 with a sentence, not a crash.
    let resp = http
        .post(format!("http://{addr}/api/v1/party/join"))
        .header(API_TOKEN_HEADER, TOKEN)
        .header("content-type", "application/json")
        .body("{\"invite\": 42}")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: ErrorBody = resp.json().await.expect("error json");
    assert_eq!(body.error.code, "bad_request");
    assert!(
        body.error
            .message
            .starts_with("invalid request body: invite"),
        "{}",
        body.error.message
    );
}

#[tokio::test]
async fn lan_settings_are_validated_saved_and_applied() {
    let (addr, dir) = serve_api().await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/lan/settings");
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
        assert!(
            err.error.message.contains(needle),
            "{body}: {}",
            err.error.message
        );
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
        .get(format!("http://{addr}/api/v1/lan"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .get(format!("http://{addr}/api/v1/lan/trace"))
        .send()
        .await
        .expect("send");
    let trace: LanTrace = resp.json().await.expect("trace json");
    assert!(trace.events.is_empty());
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url).header(API_TOKEN_HEADER, TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_error_shape(what: &str, status: StatusCode, body: &Value) {
    assert!(status.is_client_error(), "{what}: {status} {body}");
    let code = body.pointer("/error/code").and_then(Value::as_str);
    let message = body.pointer("/error/message").and_then(Value::as_str);
    assert!(
        code.is_some_and(|c| !c.is_empty()) && message.is_some_and(|m| !m.is_empty()),
        "{what}: not a JSON error: {body}"
    );
}

/// Resolves `{"$ref": "#/components/schemas/X"}`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => schema,
    }
}

/// Checks `value` against the subset of JSON Schema utoipa writes (type, required,
/// properties, items, oneOf, enum, nullable types); the path names where it fails.
fn check_schema(doc: &Value, schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(alts) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        return if alts
            .iter()
            .any(|s| check_schema(doc, s, value, path).is_ok())
        {
            Ok(())
        } else {
            Err(format!("{path}: {value} matches no alternative"))
        };
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            check_schema(doc, s, value, path)?;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(value)
    {
        return Err(format!("{path}: {value} not in {e:?}"));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => true,
        });
        if !ok {
            return Err(format!("{path}: {value} is not {types:?}"));
        }
    }
    if let (Some(obj), Some(props)) = (
        value.as_object(),
        schema.get("properties").and_then(Value::as_object),
    ) {
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = req.as_str().unwrap_or_default();
            if !obj.contains_key(name) {
                return Err(format!("{path}: missing required {name}"));
            }
        }
        for (name, v) in obj {
            match props.get(name) {
                Some(p) => check_schema(doc, p, v, &format!("{path}.{name}"))?,
                None => return Err(format!("{path}: {name} is served but not documented")),
            }
        }
    }
    if let (Some(arr), Some(items)) = (value.as_array(), schema.get("items")) {
        for (i, v) in arr.iter().enumerate() {
            check_schema(doc, items, v, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

/// Every documented route is served with the documented method, its 200 answers match the
/// documented schema field by field, no other method is accepted, and undocumented paths
/// under /api are JSON 404s.
#[tokio::test]
async fn openapi_document_matches_the_routes_served() {
    let (addr, _dir) = serve_api().await;
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let (status, doc) = send(
        &http,
        reqwest::Method::GET,
        &format!("{base}/api/v1/openapi.json"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    let expected = [
        "/api/v1/status",
        "/api/v1/party/create",
        "/api/v1/party/join",
        "/api/v1/party/leave",
        "/api/v1/party/kick",
        "/api/v1/party/lock",
        "/api/v1/party/invite",
        "/api/v1/lan",
        "/api/v1/lan/settings",
        "/api/v1/lan/trace",
        "/api/v1/games",
        "/api/v1/games/profiles",
        "/api/v1/games/history",
        "/api/v1/games/library",
        "/api/v1/settings",
        "/api/v1/quality",
        "/api/v1/quality/history",
        "/api/v1/events",
        "/api/v1/openapi.json",
    ];
    let mut documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    documented.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(documented, want);
    let all = ["get", "post", "put", "patch", "delete"];
    let mut checked = 0;
    for (path, item) in paths {
        let url = format!("{base}{path}");
        for m in all {
            let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).expect("method");
            let Some(op) = item.get(m) else {
                let (status, body) = send(&http, method, &url, None).await;
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}: {body}");
                assert_error_shape(&format!("{m} {path}"), status, &body);
                continue;
            };
            if path == "/api/v1/events" {
                // Not an upgrade: a JSON 400, not a 404.
                let (status, body) = send(&http, method, &url, None).await;
                assert_error_shape(&format!("{m} {path}"), status, &body);
                continue;
            }
            let body = op.get("requestBody").map(|_| json!({}));
            let (status, value) = send(&http, method, &url, body.clone()).await;
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} is documented but not served: {status}"
            );
            let code = status.as_str();
            let documented = op["responses"].get(code).or_else(|| {
                status
                    .is_client_error()
                    .then(|| op["responses"].get("4XX"))
                    .flatten()
            });
            let Some(resp) = documented else {
                panic!("{m} {path} answered {status}, which is not documented: {value}");
            };
            if let Some(schema) = resp.pointer("/content/application~1json/schema") {
                check_schema(&doc, schema, &value, path)
                    .unwrap_or_else(|e| panic!("{m} {path} ({status}) breaks its schema: {e}"));
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 15,
        "only {checked} answers were checked against a schema"
    );
    for path in ["/api/v1/nope", "/api/v2/status", "/api"] {
        let (status, body) =
            send(&http, reqwest::Method::GET, &format!("{base}{path}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_error_shape(path, status, &body);
    }
    // The WebSocket message schema is in the document too.
    assert!(doc.pointer("/components/schemas/Event").is_some());
}

#[tokio::test]
async fn bodies_too_large_untyped_or_not_json_are_json_4xx() {
    let (addr, _dir) = serve_api().await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/party/create");
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(BODY_LIMIT + 10));
    for (what, ctype, body, want) in [
        ("oversized", "application/json", big, 413),
        ("not JSON", "application/json", "{".to_owned(), 400),
        ("no content type", "text/plain", "{}".to_owned(), 415),
        (
            "wrong type",
            "application/json",
            r#"{"name": 5}"#.to_owned(),
            400,
        ),
        (
            "unknown field",
            "application/json",
            r#"{"name": "a", "admin": true}"#.to_owned(),
            400,
        ),
        ("array", "application/json", "[]".to_owned(), 400),
    ] {
        let resp = http
            .post(&url)
            .header(API_TOKEN_HEADER, TOKEN)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .expect("send");
        let status = resp.status();
        let value: Value = resp.json().await.expect("json error");
        assert_eq!(status.as_u16(), want, "{what}: {value}");
        assert_error_shape(what, status, &value);
        if what == "unknown field" {
            assert!(value.to_string().contains("admin"), "{value}");
        }
    }
}

#[tokio::test]
async fn settings_are_validated_field_by_field_saved_and_applied() {
    let (addr, dir) = serve_api().await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/settings");
    let (status, s) = send(&http, reqwest::Method::GET, &url, None).await;
    assert_eq!(status, StatusCode::OK);
    let s: Settings = serde_json::from_value(s).expect("settings");
    assert_eq!(s.player_name, "tester");
    for (body, field) in [
        (json!({"player_name": 7}), "player_name"),
        (json!({"player_name": ""}), "player_name"),
        (json!({"player_name": "x".repeat(33)}), "player_name"),
        // The document says: no space at either end (the CLI and web UI trim for you).
        (json!({"player_name": "  alice "}), "player_name"),
        // An object where the document says object, not serde's array form of one.
        (json!({"lan": [null, null]}), "lan"),
        (
            json!({"lan": {"rate_packets_per_s": 1.5}}),
            "lan.rate_packets_per_s",
        ),
        (json!({"lan": {"ports": [0]}}), "lan.ports"),
        (json!({"lan": {"ports": ["a"]}}), "lan.ports"),
        (json!({"lan": {"groups": ["10.1.2.3"]}}), "lan.groups"),
        (
            json!({"lan": {"rate_bytes_per_s": 10}}),
            "lan.rate_bytes_per_s",
        ),
        (json!({"lan": {"everything": true}}), "everything"),
        (json!({"colour": "red"}), "colour"),
        (json!({"lan": {"all": "yes"}}), "lan.all"),
    ] {
        let (status, err) = send(&http, reqwest::Method::PATCH, &url, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_error_shape(&body.to_string(), status, &err);
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {message}");
    }
    // A bad field anywhere means nothing is saved.
    let (status, _) = send(
        &http,
        reqwest::Method::PATCH,
        &url,
        Some(json!({"player_name": "zed", "lan": {"ports": [0]}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let store = Store::open(dir.path()).await.expect("state");
    assert_eq!(store.player_name().await.expect("read"), None);
    let (status, s) = send(
        &http,
        reqwest::Method::PATCH,
        &url,
        // 40.0 is the integer 40 in JSON (and in JSON Schema).
        Some(json!({"player_name": "alice", "lan": {"ports": [27960, 7777], "groups": ["239.9.9.9"], "rate_packets_per_s": 40.0}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    let s: Settings = serde_json::from_value(s).expect("settings");
    assert_eq!(s.player_name, "alice");
    assert_eq!(s.lan.ports, vec![7777, 27960]);
    assert_eq!(s.lan.groups, vec![std::net::Ipv4Addr::new(239, 9, 9, 9)]);
    assert_eq!(s.lan.rate_packets_per_s, 40);
    // Lists replace: sending one port drops the other.
    let (_, s) = send(
        &http,
        reqwest::Method::PATCH,
        &url,
        Some(json!({"lan": {"ports": [27960]}})),
    )
    .await;
    assert_eq!(s["lan"]["ports"], json!([27960]));
    assert_eq!(s["player_name"], "alice", "untouched fields stay");
    assert_eq!(
        store.player_name().await.expect("read").as_deref(),
        Some("alice")
    );
    assert_eq!(
        store
            .lan_settings()
            .await
            .expect("read")
            .expect("saved")
            .ports,
        vec![27960]
    );
    // The status shows the new name at once.
    let (_, st) = send(
        &http,
        reqwest::Method::GET,
        &format!("http://{addr}/api/v1/status"),
        None,
    )
    .await;
    assert_eq!(st["name"], "alice");
}

/// The event stream: everything on connect, then changes as they happen, refused to a
/// foreign page.
#[tokio::test]
async fn events_push_a_snapshot_then_each_change() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let (addr, _dir) = serve_api().await;
    let url = format!("ws://{addr}/api/v1/events");
    let mut foreign = url.as_str().into_client_request().expect("request");
    foreign
        .headers_mut()
        .insert("origin", "http://evil.example".parse().expect("header"));
    let refused = tokio_tungstenite::connect_async(foreign).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        }
        other => panic!(
            "a foreign page got the event stream: {:?}",
            other.map(|_| ())
        ),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");
    let mut next = async || -> Value {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an event within 5 s")
            .expect("open")
            .expect("frame");
        match msg {
            WsMessage::Text(t) => serde_json::from_str(&t).expect("event json"),
            other => panic!("unexpected frame {other:?}"),
        }
    };
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(next().await["type"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(first, ["status", "games", "lan", "settings", "quality"]);
    let http = reqwest::Client::new();
    let (status, _) = send(
        &http,
        reqwest::Method::PATCH,
        &format!("http://{addr}/api/v1/settings"),
        Some(json!({"player_name": "bob"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut saw_settings = false;
    let mut saw_status = false;
    let mut samples = 0;
    for _ in 0..40 {
        let e = next().await;
        match e["type"].as_str() {
            Some("settings") => saw_settings |= e["data"]["player_name"] == "bob",
            Some("status") => saw_status |= e["data"]["name"] == "bob",
            Some("sample") => samples += 1,
            _ => {}
        }
        if saw_settings && saw_status && samples >= 1 {
            break;
        }
    }
    assert!(saw_settings && saw_status, "the change was not pushed");
    assert!(samples >= 1, "no per-second sample");
}

#[tokio::test]
async fn the_web_ui_is_served_with_a_strict_policy() {
    let (addr, _dir) = serve_api().await;
    let resp = reqwest::get(format!("http://{addr}/")).await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/html")
    );
    let html = resp.text().await.expect("html");
    assert!(html.contains("app.js"), "index.html loads the app");
    for (path, ctype) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let resp = reqwest::get(format!("http://{addr}{path}"))
            .await
            .expect("get");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap_or_default()
                .starts_with(ctype)
        );
    }
    for path in ["/nope.js", "/../Cargo.toml", "/%2e%2e/Cargo.toml"] {
        let resp = reqwest::get(format!("http://{addr}{path}"))
            .await
            .expect("get");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

/// Every file in `web/` is embedded, and the first paint stays small.
#[test]
fn every_web_file_is_embedded_and_small() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).expect("web/") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let embedded = web::Assets::get(&name).unwrap_or_else(|| panic!("{name} is not embedded"));
        total += embedded.data.len();
    }
    assert!(total > 0);
    assert!(total < 300 * 1024, "web/ is {total} bytes");
}
