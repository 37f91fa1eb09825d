//! LAN emulation end to end: broadcast and multicast from one player's programs reach every
//! other player's, once, and their unicast answers come back; a real game server is found
//! by a real query tool; storms are cut; the trace shows where each packet went.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Lab, run, wait_for};

/// The discovery stand-in (see its docstring).
const LANPEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/e2e/lanpeer.py");
const PARTY_BROADCAST: &str = "10.66.255.255";

/// Players 1..=n in one party, every pair with a session (direct, on the lab's switch).
fn party(name: &str, n: usize) -> (Lab, Vec<String>) {
    let mut lab = Lab::new(name, n);
    lab.start_control();
    for i in 1..=n {
        lab.start_daemon(i, &[]);
    }
    let joiners: Vec<usize> = (2..=n).collect();
    lab.party(1, &joiners);
    let mut ips = Vec::new();
    for i in 1..=n {
        let others: Vec<String> = (1..=n)
            .filter(|&j| j != i)
            .map(|j| format!("p{j}"))
            .collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        let s = lab.wait_direct(i, &others, Duration::from_secs(20));
        ips.push(s["virtual_ip"].as_str().expect("virtual ip").to_owned());
    }
    (lab, ips)
}

/// JSON lines a lanpeer listener printed so far.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Datagrams in `path` from `ip` carrying `data` exactly.
fn received(path: &Path, ip: &str, data: &str) -> usize {
    lines(path)
        .iter()
        .filter(|v| {
            v["from"]
                .as_str()
                .is_some_and(|f| f.starts_with(&format!("{ip}:")))
                && v["data"] == data
        })
        .count()
}

/// Starts a lanpeer listener in player `i` and waits until it is bound.
fn listen(lab: &mut Lab, i: usize, name: &str, args: &[&str]) -> PathBuf {
    let mut full = vec![LANPEER, "listen"];
    full.extend_from_slice(args);
    let path = lab.spawn_logged(i, name, "python3", &full);
    let up = wait_for(Duration::from_secs(10), || {
        lines(&path)
            .iter()
            .any(|v| v.get("listening").is_some())
            .then_some(())
    });
    assert!(
        up.is_some(),
        "listener {name} did not start: {}",
        lab.read_log(name)
    );
    path
}

/// Sends from player `i`; returns the replies (JSON lines) that came back.
fn send(lab: &Lab, i: usize, args: &[&str]) -> Vec<Value> {
    let mut full = vec![LANPEER, "send"];
    full.extend_from_slice(args);
    let out = run(Lab::in_ns(&lab.player_ns(i), "python3").args(&full));
    assert!(
        out.status.success(),
        "lanpeer send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn replied(replies: &[Value], ip: &str, data: &str) -> bool {
    let want = format!("reply:{data}");
    replies.iter().any(|v| {
        v["from"]
            .as_str()
            .is_some_and(|f| f.starts_with(&format!("{ip}:")))
            && v["data"] == want
    })
}

fn lan_json(lab: &Lab, i: usize, what: &[&str]) -> Value {
    let mut args = vec!["lan"];
    args.extend_from_slice(what);
    args.push("--json");
    serde_json::from_str(&lab.cli_ok(i, &args)).expect("lan json")
}

/// A broadcast from B reaches a program on A that answers it unicast, for the directed and
/// the limited broadcast and for mDNS and SSDP multicast; then with 4 players each of four
/// broadcasts reaches each other player exactly once, and the trace names the recipients.
#[test]
fn broadcast_and_multicast_reach_every_member_once_and_answers_come_back() {
    let (mut lab, ips) = party("lanbc", 4);
    let (a, b) = (&ips[0], &ips[1]);

    // Directed and limited broadcast, answered unicast.
    let a_7777 = listen(
        &mut lab,
        1,
        "a7777",
        &["7777", "--reply", "--seconds", "90"],
    );
    for dst in [PARTY_BROADCAST, "255.255.255.255"] {
        let data = format!("lobby?{dst}");
        let replies = send(&lab, 2, &[dst, "7777", &data, "--wait", "3"]);
        assert!(
            replied(&replies, a, &data),
            "B's {dst} query was not answered by A: {replies:?}\nA heard: {:?}\nB trace: {}",
            lines(&a_7777),
            lab.cli_ok(2, &["lan", "trace"])
        );
        assert_eq!(received(&a_7777, b, &data), 1, "A heard {dst} once");
    }

    // Multicast groups, joined the way games join them (no interface named: the kernel
    // picks lanrage0 by its route).
    for (group, port) in [("224.0.0.251", "5353"), ("239.255.255.250", "1900")] {
        let name = format!("a{port}");
        let heard = listen(
            &mut lab,
            1,
            &name,
            &[port, "--group", group, "--reply", "--seconds", "60"],
        );
        let data = format!("query {group}");
        let replies = send(&lab, 2, &[group, port, &data, "--wait", "3"]);
        assert!(
            replied(&replies, a, &data),
            "B's {group}:{port} query was not answered by A: {replies:?}\nA heard: {:?}",
            lines(&heard)
        );
        assert_eq!(received(&heard, b, &data), 1);
    }

    // Four players listening; each broadcasts once: every other player hears it once.
    let ears: Vec<PathBuf> = (1..=4)
        .map(|i| {
            listen(
                &mut lab,
                i,
                &format!("ear{i}"),
                &["27015", "--seconds", "60"],
            )
        })
        .collect();
    for i in 1..=4 {
        send(
            &lab,
            i,
            &[
                PARTY_BROADCAST,
                "27015",
                &format!("hello from p{i}"),
                "--wait",
                "0",
            ],
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    for (r, ear) in ears.iter().enumerate() {
        for (s, ip) in ips.iter().enumerate() {
            if r == s {
                continue; // a sender's own kernel loops its broadcast back, as on any LAN
            }
            assert_eq!(
                received(ear, ip, &format!("hello from p{}", s + 1)),
                1,
                "p{} heard p{}'s broadcast a wrong number of times: {:?}",
                r + 1,
                s + 1,
                lines(ear)
            );
        }
    }
    // Nothing was delivered twice anywhere, and no member sent anything back on.
    for i in 1..=4 {
        let c = &lan_json(&lab, i, &["status"])["counters"];
        assert_eq!(c["deduplicated"], 0, "p{i}: {c}");
        assert_eq!(c["rate_limited"], 0, "p{i}: {c}");
    }

    // The trace shows p2's broadcast going to the three others by name, and p1 receiving it.
    let trace = lan_json(&lab, 2, &["trace"]);
    let event = trace["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["direction"] == "out" && e["dst"] == format!("{PARTY_BROADCAST}:27015"))
        .unwrap_or_else(|| panic!("p2's broadcast in its trace: {trace:#}"));
    let mut to: Vec<&str> = event["sent_to"]
        .as_array()
        .expect("sent_to")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    to.sort_unstable();
    assert_eq!(to, ["p1", "p3", "p4"], "{event:#}");
    assert_eq!(event["kind"], "broadcast");
    assert!(event["dropped"].is_null());
    let trace = lan_json(&lab, 1, &["trace"]);
    assert!(
        trace["events"].as_array().expect("events").iter().any(|e| {
            e["direction"] == "in" && e["from"]["name"] == "p2" && e["dropped"].is_null()
        }),
        "{trace:#}"
    );
    // The human table says the same.
    let table = lab.cli_ok(2, &["lan", "trace"]);
    assert!(
        table.contains("sent to p1, p3, p4") || table.contains("sent to"),
        "{table}"
    );
}

/// A group joined on lanrage0 by a local program is forwarded (IGMP honoured), a port
/// added to the allow-list is forwarded at once, and `all` forwards any port.
#[test]
fn joined_groups_and_allowed_ports_apply_live() {
    let (mut lab, ips) = party("lanlive", 2);
    let (a, b) = (&ips[0], &ips[1]);
    let group = "239.77.0.1";
    // Both sides' programs join the group on their party address, as a game bound to the
    // LANrage adapter does; the IGMP reports tell each daemon.
    let heard = listen(
        &mut lab,
        1,
        "a-group",
        &["7777", "--group", group, "--join-ip", a, "--seconds", "60"],
    );
    let _b_member = listen(
        &mut lab,
        2,
        "b-group",
        &["7777", "--group", group, "--join-ip", b, "--seconds", "60"],
    );
    let joined = wait_for(Duration::from_secs(10), || {
        let s = lan_json(&lab, 2, &["status"]);
        s["joined_groups"]
            .as_array()?
            .iter()
            .any(|g| g == group)
            .then_some(s)
    });
    assert!(joined.is_some(), "{}", lab.cli_ok(2, &["lan", "status"]));
    // The join gave the group a route into lanrage0.
    let routes =
        run(Lab::in_ns(&lab.player_ns(2), "ip").args(["route", "show", "dev", "lanrage0"]));
    assert!(String::from_utf8_lossy(&routes.stdout).contains(group));
    send(&lab, 2, &[group, "7777", "to the group", "--wait", "1"]);
    assert_eq!(
        received(&heard, b, "to the group"),
        1,
        "{:?}",
        lines(&heard)
    );

    // A port outside the defaults: dropped, then allowed live, then carried.
    let odd = listen(
        &mut lab,
        1,
        "a-odd",
        &["40123", "--reply", "--seconds", "60"],
    );
    send(
        &lab,
        2,
        &[PARTY_BROADCAST, "40123", "before", "--wait", "1"],
    );
    assert_eq!(received(&odd, b, "before"), 0);
    let trace = lan_json(&lab, 2, &["trace"]);
    assert!(trace["events"].as_array().expect("events").iter().any(|e| {
        e["dst"] == format!("{PARTY_BROADCAST}:40123") && e["dropped"] == "port not forwarded"
    }));
    lab.cli_ok(2, &["lan", "allow", "40123"]);
    let replies = send(&lab, 2, &[PARTY_BROADCAST, "40123", "after", "--wait", "2"]);
    assert!(replied(&replies, a, "after"), "{replies:?}");
    lab.cli_ok(2, &["lan", "remove", "40123"]);
    send(
        &lab,
        2,
        &[PARTY_BROADCAST, "40123", "removed", "--wait", "1"],
    );
    assert_eq!(received(&odd, b, "removed"), 0);
    // `all`: every port.
    lab.cli_ok(2, &["lan", "all", "on"]);
    send(
        &lab,
        2,
        &[PARTY_BROADCAST, "40123", "all on", "--wait", "1"],
    );
    assert_eq!(received(&odd, b, "all on"), 1);
    // Settings survive a restart of the daemon.
    assert!(lab.terminate(2));
    lab.start_daemon(2, &[]);
    let s = lan_json(&lab, 2, &["status"]);
    assert_eq!(s["settings"]["all"], true, "{s:#}");
}

/// A storm of 10 000 broadcasts a second from one member is cut to the rate limit at its
/// source, and another member's traffic keeps flowing meanwhile.
#[test]
fn a_broadcast_storm_is_cut_to_the_rate_limit() {
    let (mut lab, ips) = party("lanstorm", 3);
    let (a, b, c) = (&ips[0], &ips[1], &ips[2]);
    for i in 1..=3 {
        lab.cli_ok(i, &["lan", "rate", "--packets", "200"]);
    }
    let ear = listen(&mut lab, 1, "storm-ear", &["7777", "--seconds", "60"]);
    // 20 000 distinct broadcasts at 10 000/s from B, in the background.
    let storm = lab.spawn_logged(
        2,
        "storm",
        "python3",
        &[
            LANPEER,
            "send",
            PARTY_BROADCAST,
            "7777",
            "storm",
            "--count",
            "20000",
            "--rate",
            "10000",
            "--wait",
            "0",
        ],
    );
    // Meanwhile C and A exchange pings and a lobby query.
    let loss = lab.ping_loss(3, a, 20);
    assert_eq!(loss, 0.0, "C's pings to A were lost during the storm");
    let replies_ok = {
        let _lobby = listen(
            &mut lab,
            1,
            "lobby",
            &["6112", "--reply", "--seconds", "30"],
        );
        let replies = send(
            &lab,
            3,
            &[PARTY_BROADCAST, "6112", "lobby during storm", "--wait", "2"],
        );
        replied(&replies, a, "lobby during storm")
    };
    assert!(
        replies_ok,
        "C's lobby query went unanswered during the storm"
    );
    // Let the storm end (2 s of sending).
    let done = wait_for(Duration::from_secs(20), || {
        let s = lan_json(&lab, 2, &["status"]);
        let captured = s["counters"]["captured"].as_u64()?;
        (captured >= 20_000).then_some(s)
    });
    let s = done.unwrap_or_else(|| panic!("storm did not finish: {}", lab.read_log("storm")));
    let _ = storm;
    std::thread::sleep(Duration::from_secs(1));
    let heard = received_prefix(&ear, b, "storm#");
    // 200 of burst plus 200 per second over the storm's ~2 s, with a little slack for timing.
    assert!(
        (150..=700).contains(&heard),
        "A heard {heard} of B's 20 000 broadcasts; B: {}",
        s["counters"]
    );
    let limited = s["counters"]["rate_limited"].as_u64().unwrap_or(0);
    assert!(
        limited >= 19_000,
        "B rate-limited {limited}: {}",
        s["counters"]
    );
    let _ = c;
}

fn received_prefix(path: &Path, ip: &str, prefix: &str) -> usize {
    lines(path)
        .iter()
        .filter(|v| {
            v["from"]
                .as_str()
                .is_some_and(|f| f.starts_with(&format!("{ip}:")))
                && v["data"].as_str().is_some_and(|d| d.starts_with(prefix))
        })
        .count()
}

/// OpenArena's dedicated server (ioquake3, Debian `openarena-server`) runs on A; qstat
/// (Debian `qstat`), the classic server browser, finds it on B by broadcast through LANrage.
#[test]
fn qstat_finds_an_openarena_server_by_broadcast() {
    let (mut lab, ips) = party("lanoa", 2);
    let a = &ips[0];
    let (program, args) = Lab::openarena("lanrage-lan-test");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn_logged(1, "openarena", program, &args);
    // Quake III's LAN browser port; a game profile adds it once game detection runs.
    lab.cli_ok(2, &["lan", "allow", "27960"]);
    for target in ["+10.66.255.255:27960", "+255.255.255.255:27960"] {
        let found = wait_for(Duration::from_secs(30), || {
            let out = run(Lab::in_ns(&lab.player_ns(2), "quakestat").args(["-q3s", target]));
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines()
                .any(|l| l.starts_with(&format!("{a}:27960")) && l.contains("lanrage-lan-test"))
                .then_some(text)
        });
        assert!(
            found.is_some(),
            "qstat {target} did not find A's server; server log: {}\nB trace: {}",
            lab.read_log("openarena"),
            lab.cli_ok(2, &["lan", "trace"])
        );
    }
}

/// With physical capture on, a broadcast a program sends out of the physical interface
/// (to the physical subnet's broadcast address) also reaches the party, from A's virtual
/// IP, and the answer comes back through the tunnel.
#[test]
fn physical_capture_carries_discovery_sent_out_of_the_physical_interface() {
    let (mut lab, ips) = party("lanphys", 2);
    let (a, b) = (&ips[0], &ips[1]);
    let heard = listen(
        &mut lab,
        2,
        "b-phys",
        &["7777", "--reply", "--seconds", "60"],
    );
    // Off by default: B hears A only natively, on the lab's shared switch.
    send(&lab, 1, &["10.99.0.255", "7777", "phys off", "--wait", "1"]);
    assert_eq!(received(&heard, a, "phys off"), 0);
    assert_eq!(received(&heard, &Lab::player_addr(1), "phys off"), 1);
    lab.cli_ok(1, &["lan", "physical", "on"]);
    let on = wait_for(Duration::from_secs(5), || {
        let s = lan_json(&lab, 1, &["status"]);
        (s["physical_capture"] == true).then_some(())
    });
    assert!(on.is_some(), "{}", lab.cli_ok(1, &["lan", "status"]));
    let replies = send(&lab, 1, &["10.99.0.255", "7777", "phys on", "--wait", "2"]);
    assert_eq!(received(&heard, a, "phys on"), 1, "{:?}", lines(&heard));
    assert!(
        replied(&replies, b, "phys on"),
        "the answer to A's virtual IP: {replies:?}"
    );
    let s = lan_json(&lab, 1, &["status"]);
    assert!(
        s["counters"]["captured_physical"].as_u64() >= Some(1),
        "{s:#}"
    );
}
