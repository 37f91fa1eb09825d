//! Observability end to end: `/metrics` on the daemon, the control plane and the relay
//! during a real party, JSON logs that carry the party id, correlation ids, and start-up
//! failures that name their step.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, CONTROL_IP, Lab, run, wait_for};

/// `curl` inside a namespace; the body, or `None` on failure.
fn curl(ns: &str, url: &str) -> Option<String> {
    let out = run(Lab::in_ns(ns, "curl").args(["-sf", "--max-time", "5", url]));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses Prometheus text with a real parser; checks every family has HELP and TYPE and a
/// `lanrage_` name. Returns samples by `name{sorted labels}`.
fn scrape(text: &str) -> BTreeMap<String, f64> {
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text");
    let mut typed = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    let mut out = BTreeMap::new();
    for s in parsed.samples {
        assert!(s.metric.starts_with("lanrage_"), "{}", s.metric);
        let family = s
            .metric
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            parsed.docs.contains_key(&s.metric) || parsed.docs.contains_key(family),
            "{} has no HELP",
            s.metric
        );
        assert!(
            typed.contains(&s.metric) || typed.contains(family),
            "{} has no TYPE",
            s.metric
        );
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => continue,
        };
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), v);
    }
    out
}

/// The sum of every sample of `name` whose labels include all of `with`.
fn sum(m: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && with.iter().all(|w| k.contains(w)))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_logs_and_request_ids_during_a_party() {
    let mut lab = Lab::new("obs", 2);
    let ctl = lab.control_ns();
    let relay_addr = format!("{CONTROL_IP}:3478");
    lab.spawn_control_side(
        "relay",
        &[
            "relay",
            "--listen",
            &relay_addr,
            "--secret",
            "obs-secret",
            "--metrics",
            &format!("{CONTROL_IP}:9464"),
            // The flat lab's hosts all sit in 10.99.0.0/24, a private range relays refuse
            // as peers unless the operator opens it, as a LAN-only deployment would.
            "--allow-peer",
            "10.99.0.0/24",
        ],
    );
    lab.start_control_with(&[
        "--log-format",
        "json",
        "--turn-secret",
        "obs-secret",
        "--stun",
        &relay_addr,
        "--turn",
        &relay_addr,
    ]);
    let control = Lab::control_url();
    lab.start_daemon(1, &[]);
    lab.start_daemon(2, &["--control", &control, "--log-format", "json"]);
    let invite = lab.party(1, &[2]);
    lab.wait_direct(1, &["p2"], Duration::from_secs(20));
    let s2 = lab.wait_direct(2, &["p1"], Duration::from_secs(20));
    // Traffic through the tunnel, and a few seconds of quality samples.
    let p1_ip = crate::member(&s2, "p1").expect("p1")["virtual_ip"]
        .as_str()
        .expect("ip")
        .to_owned();
    assert!(lab.ping_loss(2, &p1_ip, 20) < 50.0);
    let status = wait_for(Duration::from_secs(15), || {
        let s = lab.try_status(1)?;
        let m = crate::member(&s, "p2")?.clone();
        (m["quality"].as_u64().is_some() && m["loss_pct"].as_f64().is_some()).then_some(m)
    })
    .expect("quality, jitter and loss in status --json");
    println!("p1 sees p2: {status}");
    assert!(status["latency_ms"].as_f64().expect("latency") > 0.0);
    assert!(status["jitter_ms"].as_f64().is_some());
    assert!(status["quality"].as_u64().expect("quality") <= 100);
    assert!(status["rx_packets"].as_u64().expect("rx") > 0);

    // The daemon.
    let text = curl(&lab.player_ns(1), "http://127.0.0.1:8666/metrics").expect("daemon /metrics");
    let m = scrape(&text);
    assert!(sum(&m, "lanrage_peers", &["path=direct"]) >= 1.0, "{text}");
    for name in [
        "lanrage_peer_latency_milliseconds",
        "lanrage_peer_sent_bytes_total",
        "lanrage_peer_received_bytes_total",
        "lanrage_peer_sent_packets_total",
        "lanrage_peer_received_packets_total",
        "lanrage_peer_handshakes_total",
        "lanrage_store_transactions_total",
    ] {
        assert!(sum(&m, name, &[]) > 0.0, "{name} is zero:\n{text}");
    }
    for name in [
        "lanrage_peer_jitter_milliseconds",
        "lanrage_peer_loss_ratio",
        "lanrage_peer_quality_score",
        "lanrage_lan_packets_total",
        "lanrage_lan_fanout_copies_total",
        "lanrage_metric_series_bytes",
    ] {
        assert!(
            m.keys().any(|k| k.starts_with(&format!("{name}{{"))),
            "{name} missing:\n{text}"
        );
    }
    // History over windows, from the bounded series.
    for window in ["5m", "1h", "24h"] {
        let url = format!("http://127.0.0.1:8666/api/v1/quality/history?window={window}");
        let body = curl(&lab.player_ns(1), &url).expect("history");
        let h: Value = serde_json::from_str(&body).expect("history JSON");
        let peers = h["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 1, "{body}");
        let latency = peers[0]["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .find(|x| x["metric"] == "latency_ms")
            .expect("latency series");
        assert!(
            latency["summary"]["count"].as_u64().expect("count") >= 1,
            "{body}"
        );
    }

    // The control plane.
    let text = curl(&ctl, &format!("{control}/metrics")).expect("control /metrics");
    let m = scrape(&text);
    assert!(sum(&m, "lanrage_control_parties", &[]) >= 1.0, "{text}");
    assert!(sum(&m, "lanrage_control_members", &[]) >= 2.0, "{text}");
    // prometheus-parse 0.2 skips samples whose label values hold `}` (every templated
    // route), so the join's count is read from the text itself.
    let joins: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("lanrage_control_requests_total{")
                && l.contains("route=\"/v1/parties/{id}/join\"")
                && l.contains("status=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(joins >= 1.0, "{text}");
    assert!(
        sum(&m, "lanrage_control_requests_total", &[]) >= 1.0,
        "{text}"
    );
    // Correlation ids: a caller's is echoed; a fresh one is made otherwise.
    let out = run(Lab::in_ns(&ctl, "curl").args([
        "-si",
        "--max-time",
        "5",
        "-H",
        "x-request-id: obs-test-1",
        &format!("{control}/v1/health"),
    ]));
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.contains("x-request-id: obs-test-1"), "{head}");

    // The relay: both daemons hold a TURN allocation on it.
    let text = wait_for(Duration::from_secs(10), || {
        let t = curl(&ctl, &format!("http://{CONTROL_IP}:9464/metrics"))?;
        (sum(&scrape(&t), "lanrage_relay_allocations", &[]) >= 1.0).then_some(t)
    })
    .expect("relay /metrics with an allocation");
    println!("relay metrics:\n{text}");

    // JSON logs: every line parses; every line of p2's join carries the party id.
    let party = invite
        .trim()
        .parse::<lanrage_proto::InviteCode>()
        .expect("invite")
        .party
        .to_string();
    let log = std::fs::read_to_string(lab.dir.path().join("p2.log")).expect("p2 log");
    let mut json_lines = 0;
    let mut join_lines = 0;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).expect("a JSON log line");
        json_lines += 1;
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        if spans.iter().any(|s| s["command"] == "join") {
            join_lines += 1;
            assert!(
                spans.iter().any(|s| s["party"] == party.as_str()),
                "a join line without the party id: {line}"
            );
        }
    }
    assert!(json_lines >= 3, "{log}");
    assert!(join_lines >= 1, "no line logged during the join:\n{log}");
    // Every log line on the control plane's side of the join has the request id and the
    // party.
    let clog = std::fs::read_to_string(lab.dir.path().join("control.log")).expect("control log");
    let mut seen = 0;
    for line in clog.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).expect("a JSON control log line");
        let spans = v["spans"].as_array().cloned().unwrap_or_default();
        if let Some(req) = spans
            .iter()
            .find(|s| s["route"].as_str().is_some_and(|r| r.ends_with("/join")))
        {
            seen += 1;
            assert!(req["request_id"].as_str().is_some(), "{line}");
            assert!(line.contains(&party), "{line}");
        }
    }
    println!(
        "{json_lines} JSON lines from p2, {join_lines} in its join; {seen} control lines of joins"
    );
}

#[test]
fn start_up_failures_name_their_step() {
    let mut lab = Lab::new("boot", 1);
    // Control plane down: the daemon starts anyway, says so, and retries.
    lab.allow_log("cannot reach the control plane; retrying in the background");
    lab.start_daemon(1, &["--control", &Lab::control_url()]);
    let log = std::fs::read_to_string(lab.dir.path().join("p1.log")).expect("log");
    assert!(
        log.contains("step=\"control\"") || log.contains("step=control"),
        "{log}"
    );
    lab.start_control();
    // The retry: once the control plane is up, a party can be made with no restart.
    wait_for(Duration::from_secs(15), || {
        lab.cli(1, &["party", "create", "later"])
            .status
            .success()
            .then_some(())
    })
    .expect("a party once the control plane is back");

    // Port taken: a second daemon on the same UDP port exits non-zero, names the step,
    // and leaves no interface.
    let links_before = run(Lab::in_ns(&lab.player_ns(1), "ip").args(["-o", "link"])).stdout;
    let other = lab.dir.path().join("second");
    let out = run(Lab::in_ns(&lab.player_ns(1), BIN).args([
        "up",
        "--control",
        &Lab::control_url(),
        "--api",
        "127.0.0.1:8777",
        "--state-dir",
        &other.display().to_string(),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("start-up step `socket` failed"), "{err}");
    assert!(err.contains("51820"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "one clear message: {err}"
    );
    let links_after = run(Lab::in_ns(&lab.player_ns(1), "ip").args(["-o", "link"])).stdout;
    assert_eq!(links_before, links_after, "an interface was left behind");
}
