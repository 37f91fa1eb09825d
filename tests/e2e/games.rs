//! Game awareness end to end: a real game server is detected by its process, the party sees
//! who plays it, its profile is applied (LAN ports, priority with DSCP EF on the wire) and
//! undone when it stops; renamed Windows binaries, globs, near misses, port holders and a
//! player's own profiles behave as documented.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Lab, must, run, wait_for};

const LANPEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/e2e/lanpeer.py");

/// A process the test started; killed when dropped (also when the test fails).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(lab: &Lab, i: usize, program: &str, args: &[&str], home: &Path) -> Proc {
    let child = Lab::in_ns(&lab.player_ns(i), program)
        .args(args)
        .env("HOME", home)
        .current_dir(home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    Proc(child)
}

fn json(lab: &Lab, i: usize, args: &[&str]) -> Value {
    let out = lab.cli_ok(i, args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("`lanrage {}`: {e}: {out}", args.join(" ")))
}

fn detected(lab: &Lab, i: usize) -> Vec<Value> {
    json(lab, i, &["games", "--json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn find<'a>(games: &'a [Value], id: &str) -> Option<&'a Value> {
    games.iter().find(|g| g["id"] == id)
}

/// A copy of `/bin/sleep` under `name`: a stand-in for a game binary with that name.
fn fake_binary(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::copy("/bin/sleep", &path).expect("copy sleep");
    path.display().to_string()
}

#[test]
fn openarena_is_detected_shown_to_the_party_tuned_and_undone_when_it_stops() {
    let mut lab = Lab::new("gameoa", 2);
    lab.start_control();
    lab.start_daemon(1, &[]);
    lab.start_daemon(2, &[]);
    lab.party(1, &[2]);
    let s = lab.wait_direct(2, &["p1"], Duration::from_secs(20));
    let a_ip = lab.status(1)["virtual_ip"].as_str().expect("ip").to_owned();
    assert!(s["games"].as_array().is_some_and(Vec::is_empty));

    // Count the outer WireGuard datagrams each side sends marked DSCP EF.
    for i in [1, 2] {
        let ns = lab.player_ns(i);
        must(Lab::in_ns(&ns, "nft").args(["add", "table", "inet", "lrgames"]));
        must(Lab::in_ns(&ns, "nft").args([
            "add",
            "chain",
            "inet",
            "lrgames",
            "out",
            "{ type filter hook output priority 0; }",
        ]));
        must(Lab::in_ns(&ns, "nft").args([
            "add", "rule", "inet", "lrgames", "out", "udp", "sport", "51820", "ip", "dscp", "ef",
            "counter",
        ]));
    }
    let ef_sent = |i: usize| -> u64 {
        let out =
            run(Lab::in_ns(&lab.player_ns(i), "nft")
                .args(["list", "chain", "inet", "lrgames", "out"]));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // A real query to the real server: quakestat's getstatus on the game port.
    let ping_game =
        || run(Lab::in_ns(&lab.player_ns(2), "quakestat").args(["-q3s", &format!("{a_ip}:27960")]));
    ping_game();
    assert_eq!(
        (ef_sent(1), ef_sent(2)),
        (0, 0),
        "nothing is marked while nobody plays"
    );

    let home = tempfile::tempdir().expect("home");
    let started = Instant::now();
    let (program, args) = Lab::openarena("lanrage-games-test");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = spawn(&lab, 1, program, &args, home.path());
    let pid = u64::from(server.0.id());
    let oa = wait_for(Duration::from_secs(6), || {
        find(&detected(&lab, 1), "openarena").cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "not detected within 6 s; daemon log: {}",
            lab.read_log("p1")
        )
    });
    println!("OpenArena detected after {:?}: {oa}", started.elapsed());
    assert!(started.elapsed() <= Duration::from_secs(6));
    assert_eq!(oa["name"], "OpenArena");
    assert_eq!(oa["method"], "process");
    assert!(oa["confidence"].as_f64().is_some_and(|c| c >= 0.9), "{oa}");
    // The Debian wrapper execs ioq3ded, so the server keeps the pid we started.
    assert_eq!(oa["pid"].as_u64(), Some(pid), "{oa}");
    let human = lab.cli_ok(1, &["games"]);
    assert!(human.contains("definitely OpenArena"), "{human}");

    // The party sees p1 playing it, in JSON and in the table.
    let seen = wait_for(Duration::from_secs(10), || {
        let s = lab.status(2);
        let m = s["party"]["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == "p1")?
            .clone();
        m["games"]
            .as_array()?
            .iter()
            .any(|g| g["id"] == "openarena" && g["name"] == "OpenArena")
            .then_some(m)
    });
    assert!(seen.is_some(), "p2 never saw p1 playing: {}", lab.status(2));
    let table = lab.cli_ok(2, &["status"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("p1") && l.contains("OpenArena")),
        "{table}"
    );

    // The profile is applied on both: LAN ports, priority ports with EF.
    for i in [1, 2] {
        let t = wait_for(Duration::from_secs(10), || {
            let t = json(&lab, i, &["games", "tuning", "--json"]);
            (!t.is_null()).then_some(t)
        })
        .unwrap_or_else(|| panic!("p{i} applied nothing"));
        assert_eq!(t["dscp"], 46, "p{i}: {t}");
        assert!(
            t["priority_ports"]
                .as_array()
                .is_some_and(|p| p.iter().any(|r| r == 27960 || r == "27960-27963")),
            "p{i}: {t}"
        );
        let lan = json(&lab, i, &["lan", "status", "--json"]);
        let ports = lan["profile_ports"].as_array().cloned().unwrap_or_default();
        assert!(
            (27960..=27963).all(|p| ports.contains(&Value::from(p))),
            "p{i}: {lan}"
        );
    }
    // A query and its answer both travel marked EF.
    let (a0, b0) = (ef_sent(1), ef_sent(2));
    ping_game();
    let marked = wait_for(Duration::from_secs(5), || {
        (ef_sent(1) > a0 && ef_sent(2) > b0).then_some(())
    });
    assert!(
        marked.is_some(),
        "EF counters p1 {a0}->{} p2 {b0}->{}",
        ef_sent(1),
        ef_sent(2)
    );

    // Stopped: gone within 6 s, and everything is undone.
    drop(server);
    let stopped = Instant::now();
    let gone = wait_for(Duration::from_secs(6), || {
        detected(&lab, 1).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "still listed 6 s after it stopped: {:?}",
        detected(&lab, 1)
    );
    println!("OpenArena gone after {:?}", stopped.elapsed());
    let history = json(&lab, 1, &["games", "history", "--json"]);
    let events: Vec<&str> = history
        .as_array()
        .expect("history")
        .iter()
        .filter(|e| e["id"] == "openarena")
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(events, ["started", "stopped"]);
    for i in [1, 2] {
        let undone = wait_for(Duration::from_secs(10), || {
            let t = json(&lab, i, &["games", "tuning", "--json"]);
            let lan = json(&lab, i, &["lan", "status", "--json"]);
            (t.is_null() && lan["profile_ports"].as_array().is_some_and(Vec::is_empty))
                .then_some(())
        });
        assert!(
            undone.is_some(),
            "p{i} kept the profile: {}",
            json(&lab, i, &["lan", "status", "--json"])
        );
    }
    let (a1, b1) = (ef_sent(1), ef_sent(2));
    lab.ping_loss(2, &a_ip, 5);
    ping_game();
    assert_eq!(
        (ef_sent(1), ef_sent(2)),
        (a1, b1),
        "no marking once the game stopped"
    );
}

#[test]
fn renamed_binaries_globs_near_misses_ports_and_own_profiles() {
    let mut lab = Lab::new("gamenames", 1);
    let dir = tempfile::tempdir().expect("dir");
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).expect("mkdir");
    std::fs::write(
        profiles.join("mine.toml"),
        "[lan_test_game]\nname = \"LAN Test Game\"\nexecutables = [\"lanrage-test-game\"]\nports = [41999]\nmtu = 1380\nkeepalive = 7\npriority = \"high\"\n",
    )
    .expect("write");
    // The broken profile is on purpose: the daemon warns that it skipped it.
    lab.allow_log("game profile skipped");
    std::fs::write(
        profiles.join("broken.toml"),
        "[oops]\nname = \"Oops\"\nexecutables = [\"oops\"]\nports = [\"9-1\"]\n",
    )
    .expect("write");
    let dir_arg = profiles.display().to_string();
    lab.start_daemon(1, &["--profiles", &dir_arg]);
    // A party of one, so the interface exists for the MTU.
    lab.cli_ok(1, &["party", "create", "solo"]);
    let up = wait_for(Duration::from_secs(10), || {
        lab.status(1)["virtual_ip"].as_str().map(str::to_owned)
    });
    assert!(up.is_some());

    let loaded = json(&lab, 1, &["games", "profiles", "--json"]);
    let ids: Vec<&str> = loaded
        .as_array()
        .expect("profiles")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert!(
        ids.len() >= 151 && ids.contains(&"lan_test_game") && !ids.contains(&"oops"),
        "{}",
        ids.len()
    );
    let out = lab.cli(1, &["games", "profiles"]);
    let skipped = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        skipped.contains("broken.toml: oops.ports[0]: range \"9-1\" ends before it starts"),
        "{skipped}"
    );

    let bins = dir.path();
    let rl = fake_binary(bins, "RocketLeague.exe");
    let near = fake_binary(bins, "RockLeague.exe");
    let bf = fake_binary(bins, "bf4.exe");
    let mine = fake_binary(bins, "lanrage-test-game");
    let rl_p = spawn(&lab, 1, &rl, &["120"], bins);
    let _near_p = spawn(&lab, 1, &near, &["120"], bins);
    let _bf_p = spawn(&lab, 1, &bf, &["120"], bins);
    let mine_p = spawn(&lab, 1, &mine, &["120"], bins);
    // Holds only 0 A.D.'s UDP port; its name and arguments say nothing.
    let port_p = spawn(
        &lab,
        1,
        "python3",
        &[LANPEER, "listen", "20595", "--seconds", "120"],
        bins,
    );

    let all = wait_for(Duration::from_secs(12), || {
        let g = detected(&lab, 1);
        ["rocketleague", "battlefield", "zero_ad", "lan_test_game"]
            .iter()
            .all(|id| find(&g, id).is_some())
            .then_some(g)
    })
    .unwrap_or_else(|| panic!("not all found: {:?}", detected(&lab, 1)));
    let rlg = find(&all, "rocketleague").expect("rl");
    assert_eq!(
        (rlg["method"].as_str(), rlg["pid"].as_u64()),
        (Some("process"), Some(u64::from(rl_p.0.id())))
    );
    assert!(rlg["confidence"].as_f64().is_some_and(|c| c >= 0.9));
    assert_eq!(
        find(&all, "battlefield").expect("bf")["method"],
        "process",
        "the glob bf?.exe"
    );
    let port = find(&all, "zero_ad").expect("0ad");
    assert_eq!(
        (port["method"].as_str(), port["pid"].as_u64()),
        (Some("port"), Some(u64::from(port_p.0.id())))
    );
    let c = port["confidence"].as_f64().expect("confidence");
    assert!(
        c >= 0.5 && c < rlg["confidence"].as_f64().expect("c"),
        "by port is less sure: {c}"
    );
    assert_eq!(
        all.len(),
        4,
        "the near miss RockLeague.exe (0.83) is nothing: {all:?}"
    );
    assert_eq!(
        find(&all, "lan_test_game").expect("mine")["pid"].as_u64(),
        Some(u64::from(mine_p.0.id()))
    );

    // The player's profile asks for MTU 1380 and a 7 s keepalive.
    let mtu = || {
        let out = run(Lab::in_ns(&lab.player_ns(1), "ip").args(["-j", "link", "show", "lanrage0"]));
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v[0]["mtu"].as_u64())
    };
    let t = wait_for(Duration::from_secs(5), || {
        (mtu() == Some(1380)).then(|| json(&lab, 1, &["games", "tuning", "--json"]))
    });
    let t = t.unwrap_or_else(|| panic!("MTU is {:?}", mtu()));
    assert_eq!(
        (t["mtu"].as_u64(), t["keepalive_s"].as_f64()),
        (Some(1380), Some(7.0)),
        "{t}"
    );
    drop(mine_p);
    let restored = wait_for(Duration::from_secs(8), || {
        (mtu() == Some(1420)).then_some(())
    });
    assert!(restored.is_some(), "MTU stays {:?}", mtu());

    // Editing a profile file is picked up without a restart (notify).
    std::fs::write(
        profiles.join("mine.toml"),
        "[lan_test_game]\nname = \"Renamed Test Game\"\nexecutables = [\"RockLeague.exe\"]\nports = [41999]\n",
    )
    .expect("rewrite");
    let renamed = wait_for(Duration::from_secs(12), || {
        find(&detected(&lab, 1), "lan_test_game")
            .filter(|g| g["name"] == "Renamed Test Game")
            .cloned()
    });
    assert!(renamed.is_some(), "{:?}", detected(&lab, 1));
    drop(rl_p);
    drop(port_p);
}
