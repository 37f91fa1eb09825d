//! The web UI in headless Chromium (Debian `chromium`, driven by playwright-core from npm)
//! against a real daemon in a namespace party: `tests/web/party.mjs` creates a party in the
//! UI, a second daemon joins with the CLI, the member appears without a reload with path
//! and latency, the host kicks them from the UI; screenshots of every page go to
//! `target/web-screenshots/`. The same run checks Origin/Host/token refusals and sends
//! schema-driven bad input to every route of the real daemon.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, Lab, run, wait_for};

const WEB_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/web");
const CHROMIUM: &str = "/usr/bin/chromium";

/// playwright-core from the lock file; installed on first use (the npm registry is
/// reachable in CI), and a loud failure when it cannot be.
fn playwright() -> PathBuf {
    let dir = Path::new(WEB_TESTS);
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        let out = run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir));
        assert!(
            out.status.success(),
            "the browser tests need playwright-core: `npm ci --prefix tests/web` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        Path::new(CHROMIUM).exists(),
        "the browser tests need Chromium at {CHROMIUM} (apt-get install chromium)"
    );
    dir.join("party.mjs")
}

#[test]
fn web_ui_creates_a_party_sees_a_friend_join_live_and_kicks_them() {
    let script = playwright();
    let mut lab = Lab::new("web", 2);
    lab.start_control();
    lab.start_daemon(1, &[]);
    lab.start_daemon(2, &[]);

    // The token only root can read, as the party issue set up.
    let token_file = lab.state_dir(1).join("api.token");
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "api.token is {:o}", mode & 0o777);
    let token = std::fs::read_to_string(&token_file)
        .expect("token")
        .trim()
        .to_owned();

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/web-screenshots");
    let shots = std::fs::canonicalize(shots.parent().expect("target"))
        .map(|t| t.join("web-screenshots"))
        .unwrap_or(shots);
    let _ = std::fs::remove_dir_all(&shots);
    let join = serde_json::json!([
        "ip",
        "netns",
        "exec",
        lab.player_ns(2),
        BIN,
        "party",
        "join",
        "{invite}",
        "--state-dir",
        lab.state_dir(2).display().to_string()
    ]);
    let out = run(Lab::in_ns(&lab.player_ns(1), "node")
        .arg(&script)
        .env(
            "LANRAGE_UI",
            format!("http://{}", lanrage_proto::DEFAULT_LOCAL_API),
        )
        .env("LANRAGE_TOKEN", &token)
        .env("LANRAGE_SHOTS", &shots)
        .env("LANRAGE_JOIN", join.to_string())
        .env("LANRAGE_MEMBER", "p2")
        .env("CHROMIUM", CHROMIUM)
        .env("HOME", lab.dir.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stderr}\n{stdout}\np1 log:\n{}",
        lab.read_log("p1")
    );
    let results: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no results from the browser test: {stdout}"));
    eprintln!("browser test results: {results}");

    let appeared = results["member_appeared_ms"].as_u64().expect("appeared");
    assert!(appeared <= 2000, "the member took {appeared} ms to appear");
    assert!(
        matches!(results["member_path"].as_str(), Some("direct" | "relay")),
        "{results}"
    );
    let first_paint = results["first_paint_bytes"].as_u64().expect("bytes");
    assert!(first_paint > 0 && first_paint < 300 * 1024, "{first_paint}");
    assert!(
        results["bad_input_requests"].as_u64().unwrap_or(0) >= 100,
        "{results}"
    );
    for page in [
        "party-empty",
        "party-created",
        "party-member",
        "network",
        "games",
        "lan",
        "settings",
        "party-dark",
        "party-narrow-dark",
        "party-after-kick",
    ] {
        let png = shots.join(format!("{page}.png"));
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "no screenshot {}", png.display());
    }

    // The kick happened for real: the friend is out on both sides.
    let kicked = wait_for(Duration::from_secs(10), || {
        let s1 = lab.try_status(1)?;
        let s2 = lab.try_status(2)?;
        let members = s1["party"]["members"].as_array()?.len();
        (members == 0 && s2["party"].is_null()).then_some(())
    });
    assert!(
        kicked.is_some(),
        "p2 is still in the party after the kick: {}",
        lab.status(2)
    );
    // And the daemon survived the bad input.
    assert!(lab.try_status(1).is_some(), "p1's daemon stopped answering");
}
