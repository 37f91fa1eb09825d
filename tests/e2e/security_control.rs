//! The control plane under attack (issue 17, points 1, 3 and 5): a stranger who reaches a
//! host's port gets no relay credentials and no relay, a captured relay registration cannot
//! be replayed or bent to another body, and a client holding 1 100 idle connections does
//! not stop the service under the usual 1024 open-file limit.
//!
//! The stranger and the replaying attacker are played by this test in Rust, from a thread
//! that entered a lab namespace (`setns` moves only that thread), so their sockets are where
//! an attacker's would be: behind a NAT router on the lab's internet.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gotatun::x25519::{PublicKey, StaticSecret};
use lanrage_core::turn::{AllocationState, Credentials, RelaySigner, TurnClient};
use lanrage_proto::{DeviceKey, InviteCode};
use serde_json::{Value, json};

use crate::harness::{BIN, CONTROL_IP, Lab, run, wait_for};
use crate::natlab::{Nat, NatLab, SRV1};

/// Runs `f` on a thread inside network namespace `ns`, with a current-thread runtime.
fn in_netns<T: Send + 'static, F>(ns: &str, f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: std::future::Future<Output = T>,
{
    let path = format!("/run/netns/{ns}");
    let thread = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the namespace exists");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        lanrage_daemon::install_tls_provider();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f())
    });
    thread
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// One HTTP call: status and JSON body (`null` when empty).
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the control plane answers");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("a body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Signs in the device of `secret` the way a daemon does (challenge, proof, token).
async fn sign_in(http: &reqwest::Client, base: &str, secret: &StaticSecret) -> String {
    let key = DeviceKey::from_bytes(PublicKey::from(secret).to_bytes());
    let (status, challenge) = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/v1/auth/challenge"),
        None,
        Some(json!({ "public_key": key })),
    )
    .await;
    assert_eq!(status, 200, "{challenge}");
    let nonce = STANDARD
        .decode(challenge["nonce"].as_str().expect("a nonce"))
        .expect("base64");
    let server: DeviceKey = challenge["server_public"]
        .as_str()
        .expect("a key")
        .parse()
        .expect("a key");
    let proof = lanrage_core::auth::prove(secret, &PublicKey::from(*server.as_bytes()), &nonce)
        .expect("a contributory key");
    let (status, token) = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/v1/auth/token"),
        None,
        Some(json!({
            "challenge_id": challenge["challenge_id"],
            "public_key": key,
            "proof": STANDARD.encode(proof),
        })),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    token["token"].as_str().expect("a token").to_owned()
}

/// Tries one TURN allocation with `creds`: where it ended within a few seconds.
async fn allocate(server: SocketAddr, creds: Credentials) -> AllocationState {
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .expect("a UDP socket");
    let start = Instant::now();
    let mut client = TurnClient::new(server, creds, 17, start);
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(datagram) = client.poll_transmit() {
            let _ = socket.send_to(&datagram, server).await;
        }
        let state = client.state();
        if !matches!(state, AllocationState::Allocating) || start.elapsed() > Duration::from_secs(5)
        {
            return state;
        }
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
        {
            client.handle_datagram(&buf[..n], Instant::now());
        }
        client.handle_timeout(Instant::now());
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client")
}

/// Host mode, as a stranger on the internet meets it: the host's control plane port
/// answers anyone, but `/v1/ice` gives relay credentials only to members, and a member's
/// credentials die with its membership.
#[test]
fn a_stranger_gets_no_relay_credentials() {
    let mut lab = NatLab::new("sstr", Nat::Cone, Nat::Cone);
    lab.start_host();
    let out = lab.cli("srv", &["party", "create", "lan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invite: InviteCode = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("an invite code");
    let base = format!("http://{SRV1}:8667");
    let (creds, user) = in_netns(&lab.ns("pB"), {
        let base = base.clone();
        let invite = invite.clone();
        move || async move {
            let http = http();
            let stranger = StaticSecret::from([0x5c; 32]);
            let token = sign_in(&http, &base, &stranger).await;
            // Signed in, in no party: no servers, no credentials.
            let (status, body) = call(
                &http,
                reqwest::Method::GET,
                &format!("{base}/v1/ice"),
                Some(&token),
                None,
            )
            .await;
            assert_eq!(status, 403, "{body}");
            assert_eq!(body["code"], "not_a_member", "{body}");
            assert!(body.get("turn").is_none(), "{body}");
            // With the invite it is a member, and gets credentials for this party.
            let (status, body) = call(
                &http,
                reqwest::Method::POST,
                &format!("{base}/v1/parties/{}/join", invite.party),
                Some(&token),
                Some(json!({"secret": invite.secret, "player_name": "stranger"})),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let (status, ice) = call(
                &http,
                reqwest::Method::GET,
                &format!("{base}/v1/ice"),
                Some(&token),
                None,
            )
            .await;
            assert_eq!(status, 200, "{ice}");
            let turn = &ice["turn"][0];
            let server: SocketAddr = turn["addr"]
                .as_str()
                .expect("a TURN server")
                .parse()
                .expect("an address");
            let creds = Credentials {
                username: turn["username"].as_str().expect("user").to_owned(),
                password: turn["password"].as_str().expect("password").to_owned(),
            };
            let state = allocate(server, creds.clone()).await;
            assert!(
                matches!(state, AllocationState::Allocated { .. }),
                "a member allocates: {state:?}"
            );
            let key = DeviceKey::from_bytes(PublicKey::from(&stranger).to_bytes()).to_string();
            ((server, creds), format!("{}.{}", &key[..16], invite.party))
        }
    });
    assert!(creds.1.username.ends_with(&user), "{}", creds.1.username);

    // The host kicks it: its credentials stop working on the relay within seconds.
    let out = lab.cli("srv", &["party", "kick", "stranger"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kicked = Instant::now();
    let refused = in_netns(&lab.ns("pB"), move || async move {
        let (server, creds) = creds;
        while kicked.elapsed() < Duration::from_secs(15) {
            if !matches!(
                allocate(server, creds.clone()).await,
                AllocationState::Allocated { .. }
            ) {
                return Some(kicked.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    });
    let after = refused.expect("the kicked member's credentials are refused within 15 s");
    eprintln!("kicked member's TURN credentials refused {after:?} after the kick");
    assert!(
        lab.log("srv").contains("TURN user revoked"),
        "{}",
        lab.log("srv")
    );
}

/// A registration captured on the wire (here: signed by the test with a key the control
/// plane trusts, as the real far relay would) is accepted once; the same bytes again, or
/// its header on a body with the attacker's addresses, are refused, and `/v1/ice` lists
/// only the real relays.
#[test]
fn a_replayed_relay_registration_is_refused() {
    let mut lab = NatLab::new("srpl", Nat::Cone, Nat::Cone);
    lab.start_servers();
    let seed_file = lab.relay_key_file("far-relay");
    let seed: [u8; 32] = STANDARD
        .decode(
            std::fs::read_to_string(&seed_file)
                .expect("the key file")
                .trim(),
        )
        .expect("base64")
        .try_into()
        .expect("32 bytes");
    let base = format!("http://{SRV1}:8667");
    in_netns(&lab.ns("pA"), move || async move {
        let http = http();
        let signer = RelaySigner::from_seed(&seed);
        let body = |addr: &str| {
            serde_json::to_vec(&json!({
                "id": "relay-198.18.0.2:3478", "region": "far", "addrs": [addr],
                "turn": true, "allocations": 0, "capacity": 64,
            }))
            .expect("JSON")
        };
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let real = body("198.18.0.2:3478");
        let header = signer.authorization("POST", "/v1/relays", &real, unix, rand_nonce());
        let send = |payload: Vec<u8>| {
            let (http, header, url) = (http.clone(), header.clone(), format!("{base}/v1/relays"));
            async move {
                let resp = http
                    .post(url)
                    .header("authorization", header)
                    .header("content-type", "application/json")
                    .body(payload)
                    .send()
                    .await
                    .expect("an answer");
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                (status, text)
            }
        };
        let (status, text) = send(real.clone()).await;
        assert_eq!(status, 200, "the captured request itself: {text}");
        let (status, text) = send(real.clone()).await;
        assert_eq!(status, 401, "the same request again: {text}");
        assert!(text.contains("already used"), "{text}");
        let (status, text) = send(body("198.51.100.66:3478")).await;
        assert_eq!(status, 401, "the header on the attacker's body: {text}");
        // What a member is handed: the real relays only.
        let member = StaticSecret::from([0x6d; 32]);
        let token = sign_in(&http, &base, &member).await;
        let (status, party) = call(
            &http,
            reqwest::Method::POST,
            &format!("{base}/v1/parties"),
            Some(&token),
            Some(json!({"name": "n", "player_name": "m"})),
        )
        .await;
        assert_eq!(status, 201, "{party}");
        let (status, ice) = call(
            &http,
            reqwest::Method::GET,
            &format!("{base}/v1/ice"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 200, "{ice}");
        let text = ice.to_string();
        assert!(!text.contains("198.51.100.66"), "{ice}");
        let turn: Vec<&str> = ice["turn"]
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|t| t["addr"].as_str())
            .collect();
        assert!(turn.contains(&"203.0.113.10:3478"), "{ice}");
        assert!(turn.contains(&"198.18.0.2:3478"), "{ice}");
    });
    assert!(
        lab.log("relay").contains("relay registered"),
        "{}",
        lab.log("relay")
    );
}

fn rand_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
        .to_le_bytes();
    nonce.copy_from_slice(&now[..16]);
    nonce
}

/// Holds `n` connections to HOST:PORT; prints {"connected", "failed"} once they are open,
/// then, after `hold` seconds, {"closed"}: how many the server closed meanwhile.
const HOLDER: &str = r#"
import json, selectors, socket, sys, time
host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks, failed = [], 0
for _ in range(n):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        socks.append(s)
    except OSError:
        failed += 1
        s.close()
print(json.dumps({"connected": len(socks), "failed": failed}), flush=True)
sel = selectors.DefaultSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
closed, deadline = 0, time.time() + hold
while time.time() < deadline and closed < len(socks):
    for key, _ in sel.select(timeout=0.2):
        try:
            data = key.fileobj.recv(1024)
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            closed += 1
print(json.dumps({"closed": closed}), flush=True)
"#;

/// Kills a child on drop (before the lab removes its namespace).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn health_within(ns: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let out = run(Lab::in_ns(ns, "curl").args([
        "-s",
        "-m",
        &limit.as_secs().to_string(),
        &format!("http://{CONTROL_IP}:8667/v1/health"),
    ]));
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("\"ok\""),
        "/v1/health did not answer within {limit:?}: {body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// 1 100 idle TCP connections from one client, against a control plane held to the usual
/// 1024 open files (soft and hard, so raising the soft limit cannot help): the per-address
/// cap closes all but 64 at once, the header-read timeout the rest after 10 s, and
/// `/v1/health` from another address answers throughout.
#[test]
fn idle_connections_do_not_stop_the_control_plane() {
    let lab = Lab::new("sidle", 2);
    let db = format!("sqlite://{}", lab.dir.path().join("control.db").display());
    let log = std::fs::File::create(lab.dir.path().join("control.log")).expect("log");
    let script =
        format!("ulimit -n 1024 && exec {BIN} control --listen {CONTROL_IP}:8667 --database {db}");
    let _control = Killed(
        Lab::in_ns(&lab.control_ns(), "bash")
            .args(["-c", &script])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn control"),
    );
    let up = wait_for(Duration::from_secs(10), || {
        let probe = format!("exec 3<>/dev/tcp/{CONTROL_IP}/8667");
        run(Lab::in_ns(&lab.control_ns(), "bash").args(["-c", &probe]))
            .status
            .success()
            .then_some(())
    });
    assert!(up.is_some(), "control plane did not start");
    let control_log =
        std::fs::read_to_string(lab.dir.path().join("control.log")).unwrap_or_default();
    assert!(control_log.contains("open_files=1024"), "{control_log}");

    let holder_script =
        format!("ulimit -n 4096 && exec python3 -c '{HOLDER}' {CONTROL_IP} 8667 1100 20");
    let mut holder = Killed(
        Lab::in_ns(&lab.player_ns(1), "bash")
            .args(["-c", &holder_script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the holder"),
    );
    let mut lines = std::io::BufReader::new(holder.0.stdout.take().expect("stdout")).lines();
    let opened: Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    eprintln!("idle connections: {opened}");
    assert_eq!(
        opened["connected"].as_u64().unwrap_or(0) + opened["failed"].as_u64().unwrap_or(0),
        1100
    );
    assert!(
        opened["connected"].as_u64().unwrap_or(0) >= 1000,
        "{opened}"
    );
    // While they are held: another address is served at once.
    let took = health_within(&lab.player_ns(2), Duration::from_secs(3));
    eprintln!("/v1/health with 1 100 idle connections open: {took:?}");
    // The server closes every one of them: the excess at once, the rest idle for 10 s.
    let closed: Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    assert_eq!(closed["closed"], opened["connected"], "{closed}");
    let took = health_within(&lab.player_ns(2), Duration::from_secs(3));
    eprintln!("/v1/health after they were closed: {took:?}");
    // And the client itself is served again once its idle connections are gone.
    health_within(&lab.player_ns(1), Duration::from_secs(3));
}
