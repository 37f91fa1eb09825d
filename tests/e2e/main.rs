//! End-to-end scenarios on the real release binary, in network namespaces the tests create
//! and always delete. Run as root; see the README.

mod api_schema;
mod games;
mod harness;
mod observability;
mod security_control;
mod security_files;
mod security_flood;
mod security_relay;
mod web;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use std::process::Command;

use harness::{BIN, Lab, run, wait_for};
use lanrage_proto::{InviteCode, PartySecret};
use serde_json::Value;

fn member<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["party"]["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

fn vip(status: &Value) -> String {
    status["virtual_ip"]
        .as_str()
        .expect("virtual_ip")
        .to_owned()
}

fn wg_peer_keys(status: &Value) -> BTreeSet<String> {
    status["wireguard"]["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["public_key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Three players, one party: addresses, full mesh of pings, a TCP transfer, and status.
#[test]
fn three_players_share_one_virtual_lan() {
    let mut lab = Lab::new("mesh", 3);
    lab.start_control();
    for i in 1..=3 {
        lab.start_daemon(i, &[]);
    }
    lab.party(1, &[2, 3]);
    let names = ["p1", "p2", "p3"];
    let mut ips = Vec::new();
    for i in 1..=3 {
        let others: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| *n != names[i - 1])
            .collect();
        let s = lab.wait_direct(i, &others, Duration::from_secs(15));
        // The contract scripts depend on.
        assert_eq!(s["party"]["name"], "e2e party");
        assert_eq!(s["party"]["host"], "p1");
        assert!(s["party"]["id"].as_str().is_some_and(|id| id.len() == 16));
        for m in s["party"]["members"].as_array().expect("members") {
            for field in [
                "name",
                "virtual_ip",
                "public_key",
                "path",
                "latency_ms",
                "online",
            ] {
                assert!(m.get(field).is_some(), "member lacks {field}: {m}");
            }
            assert_eq!(m["online"], true);
        }
        ips.push(vip(&s));
    }
    assert_eq!(ips, ["10.66.0.1", "10.66.0.2", "10.66.0.3"]);
    for i in 1..=3 {
        for (j, ip) in ips.iter().enumerate() {
            if j + 1 != i {
                let loss = lab.ping_loss(i, ip, 20);
                assert_eq!(loss, 0.0, "p{i} -> {ip}: {loss}% loss");
            }
        }
    }
    lab.spawn_in(1, "iperf3", &["-s", "-1", "-B", "10.66.0.1"]);
    // The server needs a moment to listen; a refused connection is retried, bounded.
    // (iperf3 -J exits 0 even on errors: the JSON says whether it ran.)
    let report: Value = wait_for(Duration::from_secs(5), || {
        let out = harness::run(Lab::in_ns(&lab.player_ns(2), "iperf3").args([
            "-c",
            "10.66.0.1",
            "-t",
            "3",
            "-J",
        ]));
        let report: Value = serde_json::from_slice(&out.stdout).ok()?;
        report.get("error").is_none().then_some(report)
    })
    .expect("iperf3 through the tunnel did not complete");
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no iperf3 result in: {report:#}"));
    assert!(bps > 1e6, "TCP through the tunnel moved only {bps} bit/s");
    eprintln!("iperf3 p2 -> p1 through LANrage: {:.0} Mbit/s", bps / 1e6);
}

/// Leaving removes the peer everywhere within 3 s; rejoining gives the same address.
#[test]
fn leave_is_seen_at_once_and_rejoin_keeps_the_address() {
    let mut lab = Lab::new("leave", 3);
    lab.start_control();
    for i in 1..=3 {
        lab.start_daemon(i, &[]);
    }
    let invite = lab.party(1, &[2, 3]);
    lab.wait_direct(1, &["p2", "p3"], Duration::from_secs(15));
    lab.wait_direct(2, &["p1", "p3"], Duration::from_secs(15));
    let p3 = lab.status(3);
    let p3_ip = vip(&p3);
    let p3_key = p3["public_key"].as_str().expect("key").to_owned();

    let left_at = Instant::now();
    lab.cli_ok(3, &["party", "leave"]);
    let gone = wait_for(Duration::from_secs(3), || {
        [1, 2]
            .iter()
            .all(|&i| {
                lab.try_status(i).is_some_and(|s| {
                    member(&s, "p3").is_none() && !wg_peer_keys(&s).contains(&p3_key)
                })
            })
            .then(|| left_at.elapsed())
    });
    let took = gone.unwrap_or_else(|| {
        panic!(
            "p3 still listed 3 s after it left: {:#} {:#}",
            lab.status(1),
            lab.status(2)
        )
    });
    assert!(took <= Duration::from_secs(3), "leave took {took:?}");
    eprintln!("leave seen by both peers {took:?} after the command started");
    let s3 = lab.status(3);
    assert!(s3["party"].is_null() && s3["virtual_ip"].is_null());
    let link = harness::run(Lab::in_ns(&lab.player_ns(3), "ip").args(["link", "show", "lanrage0"]));
    assert!(
        !link.status.success(),
        "lanrage0 still exists after leaving"
    );

    lab.cli_ok(3, &["party", "join", &invite]);
    let s3 = lab.wait_direct(3, &["p1", "p2"], Duration::from_secs(15));
    assert_eq!(vip(&s3), p3_ip, "rejoin must give the same virtual IP");
    assert_eq!(lab.ping_loss(1, &p3_ip, 5), 0.0);
}

/// A daemon killed with SIGKILL comes back into its party; a control-plane restart does
/// not disturb traffic between members already connected.
#[test]
fn crash_recovery_and_control_plane_restart() {
    let mut lab = Lab::new("crash", 2);
    lab.start_control();
    lab.start_daemon(1, &[]);
    lab.start_daemon(2, &[]);
    lab.party(1, &[2]);
    lab.wait_direct(1, &["p2"], Duration::from_secs(15));
    let before = vip(&lab.status(2));

    lab.kill9(2);
    // A leftover interface (as a crash of an older build or another tool could leave) must
    // be replaced, not block the restart.
    harness::must(
        Lab::in_ns(&lab.player_ns(2), "ip")
            .args(["tuntap", "add", "dev", "lanrage0", "mode", "tun"]),
    );
    let restarted = Instant::now();
    lab.start_daemon(2, &[]);
    let back = wait_for(Duration::from_secs(10), || {
        let s = lab.try_status(2)?;
        (s["virtual_ip"].as_str() == Some(before.as_str()) && lab.ping_loss(1, &before, 1) == 0.0)
            .then(|| restarted.elapsed())
    });
    let took = back.unwrap_or_else(|| panic!("p2 not back after restart: {:#}", lab.status(2)));
    assert!(
        took <= Duration::from_secs(10),
        "p2 took {took:?} to come back"
    );
    eprintln!("p2 reachable again {took:?} after the restart began");
    assert_eq!(lab.ping_loss(1, &before, 20), 0.0);
    let link = harness::must(
        Lab::in_ns(&lab.player_ns(2), "ip").args(["-br", "addr", "show", "lanrage0"]),
    );
    assert!(String::from_utf8_lossy(&link.stdout).contains(&format!("{before}/16")));

    lab.kill_control();
    assert_eq!(
        lab.ping_loss(1, &before, 20),
        0.0,
        "data plane broke with the control plane down"
    );
    // Stay down past a heartbeat (15 s), so the daemons have seen it fail.
    let noticed = wait_for(Duration::from_secs(20), || {
        lab.try_status(1)?["control"]
            .as_str()?
            .starts_with("unreachable")
            .then_some(())
    });
    assert!(
        noticed.is_some(),
        "p1 never noticed the control plane was gone"
    );
    std::thread::sleep(Duration::from_secs(16));
    assert_eq!(
        lab.ping_loss(2, "10.66.0.1", 20),
        0.0,
        "data plane broke after a failed heartbeat"
    );
    assert_eq!(lab.status(2)["party"]["members"][0]["path"], "direct");
    lab.start_control();
    let reconnected = wait_for(Duration::from_secs(10), || {
        (lab.try_status(1)?["control"] == "connected").then_some(())
    });
    assert!(
        reconnected.is_some(),
        "p1 did not reconnect: {:#}",
        lab.status(1)
    );
    assert_eq!(lab.ping_loss(2, "10.66.0.1", 10), 0.0);
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// Every refusal is one clear line on stderr and a non-zero exit.
#[test]
fn bad_invites_locked_and_full_parties_are_refused() {
    let mut lab = Lab::new("refuse", 3);
    // The daemon is not running yet: exit 3, and with --json the same as a JSON error.
    let out = lab.cli(1, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr_of(&out).contains("daemon is not running") && stderr_of(&out).contains("lanrage up"),
        "{}",
        stderr_of(&out)
    );
    let out = lab.cli(1, &["status", "--json"]);
    let err: Value = serde_json::from_slice(&out.stdout).expect("JSON error on stdout");
    assert_eq!(err["error"]["code"], "daemon_not_running");
    // No TUN permission: `up` says what to do and exits 5 before creating anything.
    let out = run(Lab::in_ns(&lab.player_ns(1), "setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "up",
            "--state-dir",
        ])
        .arg(std::env::temp_dir().join("lanrage-nobody")));
    assert_eq!(out.status.code(), Some(5), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("start-up step `tun` failed")
            && stderr_of(&out).contains("run it as root")
            && stderr_of(&out).contains("CAP_NET_ADMIN"),
        "{}",
        stderr_of(&out)
    );
    lab.start_control();
    for i in 1..=3 {
        lab.start_daemon(i, &[]);
    }
    let out = lab.cli(2, &["party", "leave"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("not in a party"),
        "{}",
        stderr_of(&out)
    );

    let invite = lab.cli_ok(1, &["party", "create", "tiny", "--max-members", "2"]);
    let code: InviteCode = invite.parse().expect("invite parses");
    let wrong = InviteCode::new(
        &code.control_url,
        code.party,
        PartySecret::from_bytes([7; 16]),
    )
    .expect("valid")
    .to_string();
    let cases = [
        // The same answer as for an ended party: it must not tell which party ids exist.
        (wrong.as_str(), "the invite is wrong"),
        ("lr1-this-is-not-an-invite", "malformed invite code"),
        ("hello", "malformed invite code"),
    ];
    for (bad, expect) in cases {
        let out = lab.cli(2, &["party", "join", bad]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(4), "join with {bad:?}: {err}");
        assert!(err.contains(expect), "join with {bad:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }

    lab.cli_ok(1, &["party", "lock"]);
    let out = lab.cli(2, &["party", "join", &invite]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("locked"), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out).lines().count(),
        1,
        "one line: {}",
        stderr_of(&out)
    );
    lab.cli_ok(1, &["party", "unlock"]);
    lab.cli_ok(2, &["party", "join", &invite]);
    let out = lab.cli(3, &["party", "join", &invite, "--json"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr_of(&out).contains("full") && stderr_of(&out).contains("ask the host"),
        "{}",
        stderr_of(&out)
    );
    let err: Value = serde_json::from_slice(&out.stdout).expect("JSON error on stdout");
    assert_eq!(err["error"]["code"], "party_full");
    assert_eq!(
        stderr_of(&out).lines().count(),
        1,
        "one line: {}",
        stderr_of(&out)
    );
    // Non-hosts cannot kick; the host can.
    let out = lab.cli(2, &["party", "kick", "p1"]);
    assert!(
        stderr_of(&out).contains("only the party's host"),
        "{}",
        stderr_of(&out)
    );
    lab.cli_ok(1, &["party", "kick", "p2"]);
    let kicked = wait_for(Duration::from_secs(3), || {
        lab.try_status(2)?["party"].is_null().then_some(())
    });
    assert!(kicked.is_some(), "p2 still in the party after the kick");
    // The control plane is gone: a join says so, with what to do, and exits 6.
    lab.kill_control();
    let out = lab.cli(2, &["party", "join", &invite]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("cannot reach the party's control plane")
            && stderr_of(&out).contains("ask the host"),
        "{}",
        stderr_of(&out)
    );
}

/// Twenty players joining at the same instant get twenty distinct addresses.
#[test]
fn twenty_simultaneous_joins_get_distinct_addresses() {
    const JOINERS: usize = 20;
    let mut lab = Lab::new("twenty", JOINERS + 1);
    lab.start_control();
    for i in 1..=lab.players() {
        lab.start_daemon(i, &[]);
    }
    let invite = lab.cli_ok(1, &["party", "create", "crowd"]);
    // Start every join before waiting for any.
    let spawned: Vec<_> = (2..=JOINERS + 1)
        .map(|i| {
            Lab::in_ns(&lab.player_ns(i), BIN)
                .args([
                    "party",
                    "join",
                    &invite,
                    "--state-dir",
                    &lab.state_dir(i).display().to_string(),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn join")
        })
        .collect();
    for child in spawned {
        let out = child.wait_with_output().expect("join finished");
        assert!(out.status.success(), "a join failed: {}", stderr_of(&out));
    }
    let mut ips = BTreeSet::new();
    for i in 2..=JOINERS + 1 {
        ips.insert(vip(&lab.status(i)));
    }
    assert_eq!(ips.len(), JOINERS, "duplicate addresses: {ips:?}");
    assert!(!ips.contains("10.66.0.1"));
    let all_seen = wait_for(Duration::from_secs(5), || {
        let host = lab.try_status(1)?;
        (host["party"]["members"].as_array().map(Vec::len) == Some(JOINERS)).then_some(())
    });
    assert!(all_seen.is_some(), "host sees: {:#}", lab.status(1));
}

/// Host mode: no control server; the first daemon embeds it and invites point at it.
#[test]
fn host_mode_embeds_the_control_plane() {
    let mut lab = Lab::new("host", 2);
    // No --advertise: the daemon finds its own address for the invite.
    lab.start_daemon(1, &["--control-listen", "0.0.0.0:8667"]);
    lab.start_daemon(2, &["--control-listen", "127.0.0.1:8667"]);
    let invite = lab.cli_ok(1, &["party", "create", "lan night"]);
    let code: InviteCode = invite.parse().expect("invite parses");
    assert_eq!(
        code.control_url,
        format!("http://{}:8667", Lab::player_addr(1))
    );
    assert_eq!(lab.status(1)["host_mode"], true);
    lab.cli_ok(2, &["party", "join", &invite]);
    lab.wait_direct(2, &["p1"], Duration::from_secs(15));
    assert_eq!(lab.ping_loss(2, "10.66.0.1", 10), 0.0);
}

/// SIGTERM (and SIGINT) shut the daemon down cleanly: exit 0 and no interface left behind;
/// the membership survives for the next start.
#[test]
fn sigterm_removes_the_interface_and_keeps_the_membership() {
    let mut lab = Lab::new("term", 2);
    lab.start_control();
    lab.start_daemon(1, &[]);
    lab.start_daemon(2, &[]);
    lab.party(1, &[2]);
    lab.wait_direct(2, &["p1"], Duration::from_secs(15));
    let ip = vip(&lab.status(2));
    assert!(
        lab.terminate(2),
        "the daemon did not exit cleanly on SIGTERM"
    );
    let link = harness::run(Lab::in_ns(&lab.player_ns(2), "ip").args(["link", "show", "lanrage0"]));
    assert!(!link.status.success(), "lanrage0 left behind after SIGTERM");
    lab.start_daemon(2, &[]);
    let s = lab.wait_direct(2, &["p1"], Duration::from_secs(10));
    assert_eq!(vip(&s), ip);
}

mod lan;
mod natlab;
mod wanem;

/// Two players behind endpoint-independent NATs with home-router firewalls: STUN finds each
/// one's public address, both publish it, and their simultaneous handshakes open a direct
/// path through both NATs (no port forwarding, no relay).
#[test]
fn cone_nats_are_classified_and_traversed_directly() {
    use natlab::{Nat, NatLab};
    let mut lab = NatLab::new("cone", Nat::Cone, Nat::Cone);
    lab.start_servers();
    lab.start_player("pA");
    lab.start_player("pB");
    for (p, public) in [("pA", "198.51.100.2:51820"), ("pB", "192.0.2.2:51820")] {
        let nat = wait_for(Duration::from_secs(10), || {
            let s = lab.try_status(p)?;
            (!s["nat"].is_null()).then(|| s["nat"].clone())
        })
        .unwrap_or_else(|| panic!("{p} never classified its NAT: {}", lab.log(p)));
        assert_eq!(nat["mapping"], "endpoint_independent", "{p}: {nat}");
        // MASQUERADE only lets in answers from the exact address and port it sent to.
        assert_eq!(nat["filtering"], "address_and_port_dependent", "{p}: {nat}");
        assert_eq!(nat["public_addr"], public, "{p}: {nat}");
        assert_eq!(nat["port_preserved"], true);
    }
    lab.form_party("behind nat");
    let direct = direct_endpoint(&lab, "pB", Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "no direct path through the NATs: {:#}\n{}",
            lab.try_status("pB").unwrap_or_default(),
            lab.log("pB")
        )
    });
    // The peer is reached at its router's public address: the path crosses both NATs.
    assert_eq!(direct, "198.51.100.2:51820");
    assert_eq!(lab.ping_loss("pB", "10.66.0.1", 20), 0.0);
    assert_eq!(lab.ping_loss("pA", "10.66.0.2", 20), 0.0);
    // The relay going away does not disturb a direct pair.
    lab.kill("relay");
    assert_eq!(lab.ping_loss("pB", "10.66.0.1", 30), 0.0);
    let s = lab.try_status("pB").unwrap_or_default();
    assert_eq!(s["party"]["members"][0]["path"], "direct", "{s}");
}

/// A symmetric NAT (random port per destination) is recognised as such.
#[test]
fn a_symmetric_nat_is_classified_as_address_and_port_dependent() {
    use natlab::{Nat, NatLab};
    let mut lab = NatLab::new("sym", Nat::Cone, Nat::Symmetric);
    lab.start_servers();
    lab.start_player("pB");
    let nat = wait_for(Duration::from_secs(10), || {
        let s = lab.try_status("pB")?;
        (!s["nat"].is_null()).then(|| s["nat"].clone())
    })
    .unwrap_or_else(|| panic!("pB never classified its NAT: {}", lab.log("pB")));
    assert_eq!(nat["mapping"], "address_and_port_dependent", "{nat}");
    assert_eq!(nat["filtering"], "address_and_port_dependent", "{nat}");
    assert!(
        nat["public_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("192.0.2.2:")),
        "{nat}"
    );
}

/// Symmetric NATs on both sides: no direct path exists, so the pair meets through the TURN
/// relay (each side's relayed address is a candidate). Killing the relay breaks the pair;
/// restarting it brings the pair back within 10 s (the TURN clients notice the lost
/// allocation on their next refresh and allocate again).
#[test]
fn symmetric_pair_connects_through_the_relay_and_survives_a_relay_restart() {
    use natlab::{Nat, NatLab};
    let mut lab = NatLab::new("relay", Nat::Symmetric, Nat::Symmetric);
    lab.start_servers();
    lab.start_player("pA");
    lab.start_player("pB");
    let joined = lab.form_party("relayed");
    let member = wait_for(Duration::from_secs(20), || {
        let s = lab.try_status("pB")?;
        let m = s["party"]["members"][0].clone();
        (m["path"] == "relay").then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "no relayed path: {:#}\n{}\n{}",
            lab.try_status("pB").unwrap_or_default(),
            lab.log("pB"),
            lab.log("relay")
        )
    });
    eprintln!(
        "relayed after {:.2} s: {member}",
        joined.elapsed().as_secs_f64()
    );
    assert!(
        member["relay"]
            .as_str()
            .is_some_and(|r| r.starts_with(natlab::SRV1)),
        "{member}"
    );
    assert_eq!(lab.ping_loss("pB", "10.66.0.1", 20), 0.0);
    assert_eq!(lab.ping_loss("pA", "10.66.0.2", 20), 0.0);

    lab.kill("relay");
    assert!(
        wait_for(Duration::from_secs(10), || {
            (lab.ping_loss("pB", "10.66.0.1", 1) > 0.0).then_some(())
        })
        .is_some(),
        "pings still answered with the relay gone: the path was not relayed"
    );
    lab.start_relay();
    let restarted = Instant::now();
    let back = wait_for(Duration::from_secs(20), || {
        (lab.ping_loss("pB", "10.66.0.1", 1) == 0.0).then(|| restarted.elapsed())
    })
    .unwrap_or_else(|| panic!("the pair never came back: {}", lab.log("pB")));
    eprintln!(
        "relayed pair back {:.2} s after the relay restarted",
        back.as_secs_f64()
    );
    assert!(back < Duration::from_secs(10), "took {back:?}");
}

/// The direct path is cut mid-session (the router in front of A drops everything to and from
/// B's public address): traffic moves to the relay within 3 s; when the cut is lifted it
/// moves back to direct within 30 s. A ping every 100 ms throughout loses at most 30.
#[test]
fn a_blocked_direct_path_fails_over_to_the_relay_and_back() {
    use natlab::{Nat, NatLab};
    let mut lab = NatLab::new("fail", Nat::Cone, Nat::Cone);
    lab.start_servers();
    lab.start_player("pA");
    lab.start_player("pB");
    lab.form_party("failover");
    let path = |lab: &NatLab| {
        lab.try_status("pB")
            .map(|s| {
                s["party"]["members"][0]["path"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(20), || (path(&lab) == "direct")
            .then_some(()))
        .is_some(),
        "never direct: {}",
        lab.log("pB")
    );
    // Both relayed addresses are published and probed before the cut.
    let relayed_ready = wait_for(Duration::from_secs(15), || {
        let s = lab.try_status("pA")?;
        (s["relayed"].as_array()?.len() == 1).then_some(())
    });
    assert!(
        relayed_ready.is_some(),
        "pA holds no relay allocation: {}",
        lab.log("pA")
    );
    std::thread::sleep(Duration::from_secs(3));

    let pinger = lab.spawn_ping("pB", "10.66.0.1", 100, 400);
    std::thread::sleep(Duration::from_secs(5));
    let block = |op: &str| {
        for dir in ["-s", "-d"] {
            lab.x(
                "rA",
                &[
                    "iptables",
                    "-w",
                    op,
                    "FORWARD",
                    dir,
                    "192.0.2.2",
                    "-j",
                    "DROP",
                ],
            );
        }
    };
    block("-I");
    let cut = Instant::now();
    let to_relay = wait_for(Duration::from_secs(10), || {
        (path(&lab) == "relay").then(|| cut.elapsed())
    })
    .unwrap_or_else(|| panic!("never moved to the relay: {}", lab.log("pB")));
    std::thread::sleep(Duration::from_secs(8));
    block("-D");
    let healed = Instant::now();
    let back = wait_for(Duration::from_secs(40), || {
        (path(&lab) == "direct").then(|| healed.elapsed())
    })
    .unwrap_or_else(|| panic!("never back to direct: {}", lab.log("pB")));
    let out = pinger.wait_with_output().expect("ping");
    let lost = lost_of(&String::from_utf8_lossy(&out.stdout));
    eprintln!(
        "failover to relay {:.2} s, back to direct {:.2} s after the cut was lifted, {lost} of 400 pings lost",
        to_relay.as_secs_f64(),
        back.as_secs_f64(),
    );
    assert!(
        to_relay < Duration::from_secs(3),
        "failover took {to_relay:?}"
    );
    assert!(back < Duration::from_secs(30), "recovery took {back:?}");
    assert!(lost <= 30, "{lost} pings lost");
}

/// coturn as the TURN server (the control plane hands it out with REST credentials signed
/// with the shared secret): two symmetric NATs meet through it.
#[test]
fn daemons_relay_through_coturn() {
    use natlab::{Nat, NatLab};
    let mut lab = NatLab::new("cot", Nat::Symmetric, Nat::Symmetric);
    lab.start_servers_with_coturn();
    lab.start_player("pA");
    lab.start_player("pB");
    lab.form_party("coturn");
    let member = wait_for(Duration::from_secs(20), || {
        let s = lab.try_status("pB")?;
        let m = s["party"]["members"][0].clone();
        (m["path"] == "relay").then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "no path through coturn: {}\n{}",
            lab.log("pB"),
            lab.log("coturn")
        )
    });
    // coturn: its listen port (our own allocation) or one of its relay ports (the
    // peer's), never our relay's.
    let relay = member["relay"].as_str().unwrap_or_default().to_owned();
    let port: u16 = relay
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(
        relay.starts_with(natlab::SRV1)
            && (port == natlab::COTURN_PORT || (50_100..=50_199).contains(&port)),
        "{member}"
    );
    assert_eq!(lab.ping_loss("pB", "10.66.0.1", 20), 0.0);
    assert_eq!(lab.ping_loss("pA", "10.66.0.2", 20), 0.0);
}

/// coturn's own test client against our relay, with the same secret: allocations (RTP and
/// RTCP pairs: EVEN-PORT with a reservation), permissions, channels and Send indications
/// (`-s`), every message echoed by coturn's test peer; a wrong secret gets no allocation.
#[test]
fn coturn_test_client_works_against_our_relay() {
    harness::require_root_and_tools();
    let ns = format!("lru{}", std::process::id() % 100_000);
    let _cleanup = harness::Netns::new(&ns);
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut relay = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            BIN,
            "relay",
            "--listen",
            "127.0.0.1:3478",
        ])
        .args(["--secret", "uclient-secret", "--relay-ports", "50000-50015"])
        // Everything here is on loopback, which relays refuse as a peer range unless it
        // is opened. The peer is turnutils_peer on 127.0.0.2: two clients relaying to each
        // other (`-y`) would relay through the relay's own address, refused always.
        .args(["--allow-peer", "127.0.0.0/8"])
        .stdout(log.reopen().expect("log"))
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("relay");
    let mut peer = Command::new("ip")
        .args(["netns", "exec", &ns, "turnutils_peer", "-L", "127.0.0.2"])
        .args(["-p", "3480"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("turnutils_peer");
    std::thread::sleep(Duration::from_millis(500));
    let uclient = |extra: &[&str], secret: &str| {
        let out = run(Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &ns, "turnutils_uclient"])
            .args([
                "-W",
                secret,
                "-u",
                "lanrage-test",
                "-n",
                "50",
                "-m",
                "2",
                "-e",
                "127.0.0.2",
                "-r",
                "3480",
            ])
            .args(extra)
            .arg("127.0.0.1"));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    for mode in [&[][..], &["-s"][..]] {
        let out = uclient(mode, "uclient-secret");
        let totals = out
            .lines()
            .rev()
            .find_map(|l| l.split("tot_send_msgs=").nth(1))
            .unwrap_or_else(|| panic!("no totals from turnutils_uclient {mode:?}:\n{out}"));
        let nums: Vec<u32> = totals
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        eprintln!("turnutils_uclient {mode:?}: sent/received {nums:?}");
        assert!(
            nums.len() >= 2 && nums[0] == 100 && nums[1] == 100,
            "{mode:?}:\n{out}"
        );
        assert!(out.contains("Total lost packets 0 "), "{mode:?}:\n{out}");
    }
    let out = uclient(&[], "not-the-secret");
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    let _ = peer.kill();
    let _ = peer.wait();
    let _ = relay.kill();
    let _ = relay.wait();
}

/// Every pair of NAT flavours, and both players behind one NAT: the final path, the time
/// from `party join` to the first ping reply, and to a direct path. Every pair connects,
/// directly wherever at least one side's mapping is endpoint independent (STUN-learned
/// addresses and simultaneous handshakes; birthday punching when the other side is
/// symmetric), through the TURN relay when both are symmetric.
#[test]
fn nat_matrix() {
    use natlab::Nat;
    let kinds = [Nat::Cone, Nat::FullCone, Nat::Restricted, Nat::Symmetric];
    let mut rows = Vec::new();
    for (i, &a) in kinds.iter().enumerate() {
        for &b in &kinds[i..] {
            rows.push(matrix_row(a, Some(b)));
        }
    }
    rows.push(matrix_row(Nat::Symmetric, None));
    eprintln!(
        "\nNAT A       NAT B       A map/filt B map/filt path         join→1st ping  join→direct"
    );
    for r in &rows {
        eprintln!("{r}");
    }
    assert_eq!(rows.len(), 11);
}

/// Two relays, one 25 ms further away each way: a relayed pair (both symmetric) holds
/// allocations on both and sends through the one with the smaller round trip (the sum of
/// both sides' legs, measured end to end by the path probes). Killing that relay moves
/// the pair to the other within 3 s, with the WireGuard session and the pings going on.
#[test]
fn the_nearer_relay_carries_a_relayed_pair_and_the_other_takes_over() {
    use natlab::{Nat, NatLab, SRV1};
    let mut lab = NatLab::new("relays", Nat::Symmetric, Nat::Symmetric);
    lab.start_servers();
    lab.start_far_relay(Duration::from_millis(25));
    lab.start_player("pA");
    lab.start_player("pB");
    lab.form_party("relays");
    let relay_ip = |lab: &NatLab| -> Option<String> {
        let s = lab.try_status("pB")?;
        let m = &s["party"]["members"][0];
        (m["path"] == "relay").then(|| {
            let relay = m["relay"].as_str().unwrap_or_default();
            relay
                .rsplit_once(':')
                .map_or(relay, |(ip, _)| ip)
                .to_owned()
        })
    };
    // Both relays allocated; traffic through the near one.
    let both = wait_for(Duration::from_secs(15), || {
        let s = lab.try_status("pB")?;
        let relayed: Vec<String> = s["relayed"]
            .as_array()?
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        (relayed.len() == 2).then_some(relayed)
    });
    let both = both.unwrap_or_else(|| {
        panic!(
            "not on two relays: {:?}\n{}",
            lab.try_status("pB"),
            lab.log("pB")
        )
    });
    assert!(
        both.iter().any(|r| r.starts_with("198.18.0.2:")),
        "{both:?}"
    );
    let near = wait_for(Duration::from_secs(10), || {
        relay_ip(&lab).filter(|ip| ip == SRV1)
    });
    assert!(
        near.is_some(),
        "not through the near relay: {:?}",
        lab.try_status("pB")
    );
    let near_ms = lab.try_status("pB").expect("status")["party"]["members"][0]["latency_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    // The near relay dies: the far one takes over.
    let ping = lab.spawn_ping("pB", "10.66.0.1", 100, 100);
    std::thread::sleep(Duration::from_millis(1_000));
    let killed = Instant::now();
    lab.kill("relay");
    let moved = wait_for(Duration::from_secs(5), || {
        relay_ip(&lab)
            .filter(|ip| ip == "198.18.0.2")
            .map(|_| killed.elapsed())
    });
    let out = ping.wait_with_output().expect("ping");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let moved =
        moved.unwrap_or_else(|| panic!("never moved to the far relay: {:?}", lab.try_status("pB")));
    let far_ms = lab.try_status("pB").expect("status")["party"]["members"][0]["latency_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let lost = lost_of(&summary);
    eprintln!(
        "near relay {near_ms:.1} ms; killed → far relay ({far_ms:.1} ms) after {:.2} s; \
         {lost} of 100 pings lost",
        moved.as_secs_f64()
    );
    assert!(moved < Duration::from_secs(3), "{moved:?}");
    assert!(far_ms > near_ms + 50.0, "{near_ms} → {far_ms}");
    assert!(lost <= 30, "{summary}");
}

/// Lost pings from ping's summary (`N packets transmitted, M received`).
/// The endpoint `player` reaches its first party member at, once that path is direct.
fn direct_endpoint(lab: &natlab::NatLab, player: &str, within: Duration) -> Option<Value> {
    wait_for(within, || {
        let s = lab.try_status(player)?;
        let m = &s["party"]["members"][0];
        (m["path"] == "direct").then(|| m["endpoint"].clone())
    })
}

/// The port mapping `player`'s router granted, once it has.
fn port_mapping_of(lab: &natlab::NatLab, player: &str, within: Duration) -> Option<Value> {
    wait_for(within, || {
        let s = lab.try_status(player)?;
        (!s["port_mapping"].is_null()).then(|| s["port_mapping"].clone())
    })
}

fn lost_of(summary: &str) -> u32 {
    let line = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {summary}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    nums[0] - nums[1]
}

/// Two port-restricted cones with 20 ms of delay each way on every WAN link (40 ms one way
/// between the players, through both routers): join→first ping reply under 2 s and
/// join→direct under 3 s at the 95th percentile of 10 runs, each on a fresh lab (fresh
/// daemons, empty conntrack tables).
#[test]
fn a_cone_pair_over_a_slow_wan_connects_within_seconds() {
    use natlab::{Nat, NatLab, first_reply};
    let mut pings = Vec::new();
    let mut directs = Vec::new();
    for run in 0..10 {
        let mut lab = NatLab::new(&format!("slow{run}"), Nat::Cone, Nat::Cone);
        lab.impair(Duration::from_millis(20), 0.0);
        if run == 0 {
            // The impairment is there: a round trip to the server crosses one WAN link
            // twice.
            let out = run_ping(&lab, "pA", natlab::SRV1);
            let min = rtt_min_ms(&out).unwrap_or_else(|| panic!("no ping summary: {out}"));
            assert!((40.0..80.0).contains(&min), "rtt {min} ms:\n{out}");
            assert!(lab.wan_packets().0 >= 20, "{:?}", lab.wan_packets());
        }
        lab.start_servers();
        lab.start_player("pA");
        lab.start_player("pB");
        for p in ["pA", "pB"] {
            let probed = wait_for(Duration::from_secs(15), || {
                let s = lab.try_status(p)?;
                (!s["nat"].is_null()).then_some(())
            });
            assert!(probed.is_some(), "{p} never probed its NAT");
        }
        let joined_at = lab.form_party("slow");
        let wall_at_join = std::time::SystemTime::now() - joined_at.elapsed();
        let ping = lab.spawn_stamped_ping("pB", "10.66.0.1", 5);
        let direct = wait_for(Duration::from_secs(10), || {
            let s = lab.try_status("pB")?;
            (s["party"]["members"][0]["path"] == "direct").then(|| joined_at.elapsed())
        });
        let first = first_reply(ping)
            .and_then(|t| t.duration_since(wall_at_join).ok())
            .unwrap_or_else(|| panic!("run {run}: no ping reply within 5 s: {}", lab.log("pB")));
        let direct = direct.unwrap_or_else(|| panic!("run {run}: never direct"));
        eprintln!(
            "run {run}: join→first ping {:.3} s, join→direct {:.3} s",
            first.as_secs_f64(),
            direct.as_secs_f64()
        );
        pings.push(first);
        directs.push(direct);
    }
    let (p95_ping, p95_direct) = (p95(&mut pings), p95(&mut directs));
    eprintln!(
        "p95 over 10 runs: join→first ping {:.3} s, join→direct {:.3} s",
        p95_ping.as_secs_f64(),
        p95_direct.as_secs_f64()
    );
    assert!(p95_ping < Duration::from_secs(2), "{pings:?}");
    assert!(p95_direct < Duration::from_secs(3), "{directs:?}");
}

/// The 95th percentile by nearest rank.
fn p95(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    let rank = (samples.len() * 95).div_ceil(100);
    samples[rank.saturating_sub(1)]
}

fn run_ping(lab: &natlab::NatLab, player: &str, ip: &str) -> String {
    let out = lab
        .spawn_stamped_ping(player, ip, 1)
        .wait_with_output()
        .expect("ping");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The minimum round trip from ping's summary line (`rtt min/avg/max/mdev = a/b/c/d ms`).
fn rtt_min_ms(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    line.split('=')
        .nth(1)?
        .trim()
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// One row of the NAT matrix: players behind routers of kinds `a` and `b` (`None`: both
/// behind `a`), with its expectations asserted.
fn matrix_row(a: natlab::Nat, b: Option<natlab::Nat>) -> String {
    use natlab::{Nat, NatLab};
    let relay_only = a == Nat::Symmetric && b == Some(Nat::Symmetric);
    let mut lab = match b {
        Some(b) => NatLab::new(&format!("{}{}", &a.name()[..2], &b.name()[..2]), a, b),
        None => NatLab::same_nat(&format!("{}sh", &a.name()[..2]), a),
    };
    lab.start_servers();
    lab.start_player("pA");
    lab.start_player("pB");
    // Both have classified their NAT before the party forms, and correctly.
    let mut seen = Vec::new();
    for (p, kind) in [("pA", a), ("pB", b.unwrap_or(a))] {
        let nat = wait_for(Duration::from_secs(15), || {
            let s = lab.try_status(p)?;
            (!s["nat"].is_null()).then(|| s["nat"].clone())
        })
        .unwrap_or_else(|| panic!("{p} never probed its NAT"));
        let expect = match kind {
            Nat::Cone => ("endpoint_independent", "address_and_port_dependent"),
            Nat::FullCone => ("endpoint_independent", "endpoint_independent"),
            Nat::Restricted => ("endpoint_independent", "address_dependent"),
            Nat::Symmetric => ("address_and_port_dependent", "address_and_port_dependent"),
        };
        let got = (
            nat["mapping"].as_str().unwrap_or("?"),
            nat["filtering"].as_str().unwrap_or("?"),
        );
        assert_eq!(got, expect, "{p} behind {kind:?}: {nat}");
        seen.push(format!("{}/{}", abbrev(got.0), abbrev(got.1)));
    }
    let joined_at = lab.form_party("matrix");
    let first_ping = wait_for(Duration::from_secs(20), || {
        (lab.ping_loss("pB", "10.66.0.1", 1) == 0.0).then(|| joined_at.elapsed())
    });
    let limit = Duration::from_secs(if relay_only { 8 } else { 30 });
    let direct = wait_for(limit, || {
        let s = lab.try_status("pB")?;
        (s["party"]["members"][0]["path"] == "direct").then(|| joined_at.elapsed())
    });
    let path = lab
        .try_status("pB")
        .map(|s| {
            s["party"]["members"][0]["path"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_default();
    let row = format!(
        "{:<11} {:<11} {:<10} {:<10} {:<12} {:>14} {:>14}",
        a.name(),
        b.map_or("(same NAT)", Nat::name),
        seen[0],
        seen[1],
        path,
        first_ping.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        direct.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
    );
    assert!(
        first_ping.is_some(),
        "{a:?}/{b:?}: no ping reply: {}",
        lab.log("pB")
    );
    assert_eq!(lab.ping_loss("pB", "10.66.0.1", 10), 0.0, "{a:?}/{b:?}");
    if relay_only {
        assert_eq!(path, "relay", "{a:?}/{b:?}");
    } else if b.is_some() && (a == Nat::Symmetric) != (b == Some(Nat::Symmetric)) {
        // One symmetric side: the direct path uses a port its NAT chose for this peer,
        // not the one it published (learned from the peer's packets, or punched).
        let (sym, other) = if a == Nat::Symmetric {
            ("pA", "pB")
        } else {
            ("pB", "pA")
        };
        let published = lab.try_status(sym).expect("status")["nat"]["public_addr"].clone();
        let wait = direct_endpoint(&lab, other, Duration::from_secs(5));
        let endpoint = wait.unwrap_or_else(|| panic!("{a:?}/{b:?}: {other} not direct"));
        assert_ne!(endpoint, published, "{a:?}/{b:?}");
        if a == Nat::Cone || b == Some(Nat::Cone) {
            // Port-restricted filtering lets in nothing unguessed: this took the spray.
            let log = lab.log(other);
            assert!(log.contains("birthday punching"), "{log}");
        }
        assert!(direct.is_some(), "{a:?}/{b:?} never went direct");
    } else {
        assert!(
            direct.is_some(),
            "{a:?}/{b:?} never went direct: {}\n{}",
            lab.log("pA"),
            lab.log("pB")
        );
    }
    row
}

fn abbrev(s: &str) -> &'static str {
    match s {
        "endpoint_independent" => "EI",
        "address_dependent" => "AD",
        "address_and_port_dependent" => "APD",
        "endpoint_dependent" => "ED",
        _ => "?",
    }
}

/// Both NATs symmetric, so no hole punching can work and the pair would be relayed; but pB's
/// router runs miniupnpd, pB's daemon asks it (PCP) to forward its UDP port, publishes the
/// forwarded address as a candidate, and pA reaches it there: a direct path.
#[test]
fn a_forwarded_port_lets_a_symmetric_pair_go_direct() {
    use natlab::{Nat, NatLab};
    let mut lab = NatLab::with_port_mapping("pmap", Nat::Symmetric, Nat::Symmetric);
    lab.start_servers();
    lab.start_player("pA");
    lab.start_player("pB");
    let mapping = port_mapping_of(&lab, "pB", Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "pB got no port mapping: {}\n{}",
            lab.log("pB"),
            lab.log("miniupnpd")
        )
    });
    assert_eq!(mapping["protocol"], "pcp", "{mapping}");
    assert_eq!(mapping["external"], "100.128.66.2:51820", "{mapping}");
    assert_eq!(mapping["gateway"], "192.168.2.1", "{mapping}");
    assert!(
        mapping["expires_in_s"].as_u64().unwrap_or(0) > 3600,
        "{mapping}"
    );
    // pA's router has no port-mapping service: nothing granted, nothing claimed.
    let a = lab.try_status("pA").expect("pA status");
    assert!(a["port_mapping"].is_null(), "{a}");
    lab.form_party("forwarded");
    let endpoint = direct_endpoint(&lab, "pA", Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "no direct path to the forwarded port: {:#}\n{}",
            lab.try_status("pA").unwrap_or_default(),
            lab.log("pA")
        )
    });
    assert_eq!(endpoint, "100.128.66.2:51820");
    // pB answers from the forwarded port too, so its side is direct as well.
    let b_direct = wait_for(Duration::from_secs(10), || {
        let s = lab.try_status("pB")?;
        (s["party"]["members"][0]["path"] == "direct").then_some(())
    });
    assert!(
        b_direct.is_some(),
        "{:#}",
        lab.try_status("pB").unwrap_or_default()
    );
    assert_eq!(lab.ping_loss("pA", "10.66.0.2", 20), 0.0);
    assert_eq!(lab.ping_loss("pB", "10.66.0.1", 20), 0.0);
    // Stopping the daemon hands the port back: miniupnpd deletes the mapping.
    lab.stop("pB");
    let released = wait_for(Duration::from_secs(5), || {
        lab.log("miniupnpd")
            .contains("PCP: UDP port 51820 mapping removed")
            .then_some(())
    });
    assert!(released.is_some(), "{}", lab.log("miniupnpd"));
}

/// RFC 5780 binding lifetime discovery against our relay, behind a router whose conntrack
/// forgets idle UDP flows after 6 s: the daemon brackets the lifetime, sizes its keepalive
/// from it, and the pair it then forms stays up (its paths are probed far more often).
#[test]
fn the_binding_lifetime_is_measured_and_sizes_the_keepalive() {
    use natlab::{Nat, NatLab};
    let mut lab = NatLab::new("life", Nat::Cone, Nat::Cone);
    lab.x(
        "rA",
        &[
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_udp_timeout=6",
            "net.netfilter.nf_conntrack_udp_timeout_stream=6",
        ],
    );
    lab.start_servers();
    lab.start_player("pA");
    lab.start_player("pB");
    let nat = wait_for(Duration::from_secs(90), || {
        let s = lab.try_status("pA")?;
        let b = &s["nat"]["binding_lifetime"];
        (b["measuring"] == false).then(|| s["nat"].clone())
    })
    .unwrap_or_else(|| {
        panic!(
            "pA never finished measuring: {:#}\n{}",
            lab.try_status("pA").unwrap_or_default(),
            lab.log("pA")
        )
    });
    let life = &nat["binding_lifetime"];
    let at_least = life["at_least_s"].as_f64().expect("at_least_s");
    let below = life["below_s"].as_f64().expect("below_s");
    assert!(
        (3.0..=6.0).contains(&at_least) && below > 6.0,
        "6 s not bracketed: {nat}"
    );
    assert_eq!(nat["keepalive_s"].as_f64(), Some(at_least / 2.0), "{nat}");
    eprintln!(
        "rA (conntrack 6 s): idle binding kept {at_least} s, lost at {below} s; keepalive {} s",
        at_least / 2.0
    );
    // pB's router keeps Linux's defaults (120 s once a flow is answered): by now it has
    // seen its binding outlive rA's and is still measuring, on the default keepalive.
    let b = lab.try_status("pB").expect("pB status");
    let b_life = &b["nat"]["binding_lifetime"];
    assert!(
        b_life["at_least_s"].as_f64().unwrap_or(0.0) > 6.0,
        "{:#}",
        b["nat"]
    );
    assert_eq!(b_life["measuring"], true, "{:#}", b["nat"]);
    assert_eq!(b["nat"]["keepalive_s"].as_f64(), Some(5.0));
    lab.form_party("short bindings");
    let direct = wait_for(Duration::from_secs(20), || {
        let s = lab.try_status("pB")?;
        (s["party"]["members"][0]["path"] == "direct").then_some(())
    });
    assert!(direct.is_some(), "{}", lab.log("pB"));
    assert_eq!(lab.ping_loss("pB", "10.66.0.1", 20), 0.0);
}

/// Host mode with no server of ours anywhere: the host's daemon embeds a relay next to its
/// control plane, hands it out as the party's STUN and TURN server, and two guests behind
/// symmetric NATs (no direct path possible) meet through it.
#[test]
fn host_mode_relays_guests_behind_two_symmetric_nats() {
    use natlab::{Nat, NatLab};
    let mut lab = NatLab::new("hostrelay", Nat::Symmetric, Nat::Symmetric);
    lab.start_host();
    lab.start_guest("pA");
    lab.start_guest("pB");
    let out = lab.cli("srv", &["party", "create", "host relay"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let invite = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for p in ["pA", "pB"] {
        let out = lab.cli(p, &["party", "join", &invite]);
        assert!(out.status.success(), "{p}: {}", stderr_of(&out));
    }
    let relay = wait_for(Duration::from_secs(20), || {
        let s = lab.try_status("pA")?;
        let m = member(&s, "pB")?;
        (m["path"] == "relay").then(|| (m["relay"].clone(), m["virtual_ip"].clone()))
    })
    .unwrap_or_else(|| {
        panic!(
            "pA never reached pB through the host's relay: {:#}\n{}\n{}",
            lab.try_status("pA").unwrap_or_default(),
            lab.log("pA"),
            lab.log("srv")
        )
    });
    // Either our allocation (the relay's listen address) or pB's (a relayed port of the
    // same relay, reached straight from our socket): the host's relay either way.
    assert!(
        relay
            .0
            .as_str()
            .is_some_and(|r| r.starts_with("203.0.113.10:")),
        "the host's relay carries the pair: {}",
        relay.0
    );
    let b_ip = relay.1.as_str().expect("pB's virtual IP").to_owned();
    assert_eq!(lab.ping_loss("pA", &b_ip, 20), 0.0);
    // The guests learned their public addresses from the host's relay too.
    let a = lab.try_status("pA").expect("pA status");
    assert!(
        a["nat"]["public_addr"]
            .as_str()
            .is_some_and(|p| p.starts_with("198.51.100.2:")),
        "{:#}",
        a["nat"]
    );
    assert!(lab.log("srv").contains("host mode: relay embedded"));
}

/// A router that speaks only UPnP IGD (PCP and NAT-PMP off): the daemon, answered by
/// neither, finds the IGD over SSDP, maps its port with SOAP, and the symmetric pair goes
/// direct through it as with PCP; stopping the daemon deletes the mapping.
#[test]
fn a_router_speaking_only_upnp_igd_forwards_the_port_too() {
    use natlab::{Nat, NatLab};
    let mut lab = NatLab::with_upnp_only("igd", Nat::Symmetric, Nat::Symmetric);
    lab.start_servers();
    lab.start_player("pA");
    lab.start_player("pB");
    let mapping = port_mapping_of(&lab, "pB", Duration::from_secs(25)).unwrap_or_else(|| {
        panic!(
            "pB got no UPnP mapping: {}\n{}",
            lab.log("pB"),
            lab.log("miniupnpd")
        )
    });
    assert_eq!(mapping["protocol"], "upnp-igd", "{mapping}");
    assert_eq!(mapping["external"], "100.128.66.2:51820", "{mapping}");
    lab.form_party("igd");
    let endpoint = direct_endpoint(&lab, "pA", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no direct path: {}", lab.log("pA")));
    assert_eq!(endpoint, "100.128.66.2:51820");
    assert_eq!(lab.ping_loss("pA", "10.66.0.2", 20), 0.0);
    let rb = lab.ns("rB");
    let rules = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &rb, "nft", "list", "chain", "inet"])
            .args(["lanrage_upnp", "prerouting_miniupnpd"])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        rules().contains("dport 51820"),
        "no forward on rB: {}",
        rules()
    );
    lab.stop("pB");
    let deleted = wait_for(Duration::from_secs(5), || {
        (!rules().contains("dport 51820")).then_some(())
    });
    assert!(
        deleted.is_some(),
        "the forward outlived the daemon: {}\n{}",
        rules(),
        lab.log("miniupnpd")
    );
}
