//! Issue 17 hardening end-to-end tests (security_relay): the relay is no door into
//! private networks, and no one client can take all its ports.
//!
//! Both run in the NAT lab. The TURN client is `turnprobe.py`, a few TURN messages written
//! from the RFCs with Python's standard library, run inside a player's namespace behind
//! its NAT router, with credentials minted from the relay's secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, Netns, must, run, wait_for};
use crate::natlab::{Nat, NatLab, SRV1, SRV2};

const TURNPROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/e2e/turnprobe.py");
const SECRET: &str = "security-relay-secret";
/// The UDP port every listener binds.
const PORT: u16 = 7777;

/// Processes this test started itself, killed (and reaped) on drop, before the lab's
/// namespaces go.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `lanrage relay ARGS` in the lab's server namespace, logging to `NAME.log`, and
/// waits until it serves TURN.
fn spawn_relay(lab: &NatLab, procs: &mut Procs, name: &str, args: &[&str]) -> PathBuf {
    let log = lab.dir.path().join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log");
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("srv"), BIN, "relay"])
        .args(["--secret", SECRET])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("relay");
    procs.0.push(child);
    let up = wait_for(Duration::from_secs(10), || {
        read(&log).contains("TURN enabled").then_some(())
    });
    assert!(up.is_some(), "{name} did not start: {}", read(&log));
    log
}

/// A `turnprobe.py listen` on `binds` in namespace `ns`, logging one JSON line per
/// datagram to `NAME.log`.
fn spawn_listener(
    lab: &NatLab,
    procs: &mut Procs,
    ns: &str,
    name: &str,
    binds: &[String],
) -> PathBuf {
    let log = lab.dir.path().join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "python3", TURNPROBE, "listen"]);
    for b in binds {
        cmd.args(["--bind", b]);
    }
    let child = cmd
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .expect("listener");
    procs.0.push(child);
    let up = wait_for(Duration::from_secs(10), || {
        read(&log).contains("listening").then_some(())
    });
    assert!(up.is_some(), "listener {name} did not start");
    log
}

/// Runs `turnprobe.py ARGS` in namespace `ns`; its JSON answer.
fn turnprobe(lab: &NatLab, ns: &str, args: &[&str]) -> Value {
    let out = run(Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(ns),
            "timeout",
            "120",
            "python3",
            TURNPROBE,
        ])
        .args(args)
        .args(["--secret", SECRET]));
    assert!(
        out.status.success(),
        "turnprobe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("turnprobe JSON")
}

/// A network beside the relay's host, as its operator's LAN or a cloud's metadata service
/// would be: a namespace on a veth from the relay's namespace holding `ips`, routed from
/// the relay's side. (Not on the relay host itself: the relay's own addresses are refused
/// whatever `--allow-peer` says.)
fn network_beside_relay(lab: &NatLab, ips: &[&str]) -> Netns {
    let name = format!("{}-lan", lab.ns("srv"));
    let ns = Netns::new(&name);
    let srv = lab.ns("srv");
    must(Command::new("ip").args([
        "-n", &srv, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", &name,
    ]));
    must(Command::new("ip").args(["-n", &srv, "link", "set", "lan0", "up"]));
    must(Command::new("ip").args(["-n", &name, "link", "set", "eth0", "up"]));
    for ip in ips {
        must(Command::new("ip").args([
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "eth0",
        ]));
        must(Command::new("ip").args([
            "-n",
            &srv,
            "route",
            "add",
            &format!("{ip}/32"),
            "dev",
            "lan0",
        ]));
    }
    // Answers go back to whoever asked, on the link.
    must(Command::new("ip").args(["-n", &name, "route", "add", "default", "dev", "eth0"]));
    ns
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Datagrams each listener address received, from a listener log.
fn received(log: &Path) -> BTreeMap<String, Vec<String>> {
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in read(log).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let (Some(to), Some(data)) = (v["to"].as_str(), v["data"].as_str()) {
            got.entry(to.to_owned()).or_default().push(data.to_owned());
        }
    }
    got
}

/// WARN and ERROR lines of a log (the relay must not raise any for what it refuses).
fn alarms(log: &Path) -> Vec<String> {
    read(log)
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

/// The relay's server holds extra addresses, each with a UDP listener on it: private,
/// link-local (the cloud metadata address), shared, loopback, and the relay's own other
/// IP and relay IP. A member with valid credentials, behind its NAT, allocates and asks
/// for each: CreatePermission and ChannelBind are refused with 403 and neither a Send
/// indication nor ChannelData reaches any of them. A documentation-range peer gets both.
/// A second relay started with `--allow-peer 10.77.0.0/24` relays to that range (and
/// still not to the others).
#[test]
fn a_member_cannot_relay_into_special_use_ranges() {
    let lab = NatLab::new("rpeer", Nat::Cone, Nat::Cone);
    let mut procs = Procs(Vec::new());
    let special = [
        "10.77.0.2",
        "169.254.169.254",
        "100.64.0.5",
        "172.16.0.5",
        "192.168.77.2",
    ];
    let beside = network_beside_relay(&lab, &special);
    // The relay's own addresses: 127.0.0.1, its other listen IP and its relay IP.
    let own = ["127.0.0.1", SRV2, SRV1];
    let at_port =
        |ips: &[&str]| -> Vec<String> { ips.iter().map(|ip| format!("{ip}:{PORT}")).collect() };
    let targets: Vec<String> = at_port(&special).into_iter().chain(at_port(&own)).collect();
    let inside = spawn_listener(
        &lab,
        &mut procs,
        beside.name(),
        "inside",
        &at_port(&special),
    );
    let itself = spawn_listener(&lab, &mut procs, &lab.ns("srv"), "itself", &at_port(&own));
    // A public peer: the internet router's address in a documentation range.
    let public = format!("198.51.100.1:{PORT}");
    let outside = spawn_listener(
        &lab,
        &mut procs,
        &lab.ns("inet"),
        "outside",
        std::slice::from_ref(&public),
    );
    let listen = format!("{SRV1}:3478,{SRV2}:3478");
    let relay = spawn_relay(
        &lab,
        &mut procs,
        "relay",
        &["--listen", &listen, "--relay-ports", "50000-50009"],
    );
    let server = format!("{SRV1}:3478");
    let mut args = vec!["probe", "--server", &server, "--user", "dev1.party1"];
    for t in targets.iter().chain([&public]) {
        args.extend(["--peer", t.as_str()]);
    }
    let result = turnprobe(&lab, "pA", &args);
    assert_eq!(result["allocate"], 0, "{result}");
    for t in &targets {
        let p = &result["peers"][t.as_str()];
        assert_eq!(p["permission"], 403, "CreatePermission {t}: {result}");
        assert_eq!(p["channel"], 403, "ChannelBind {t}: {result}");
    }
    let p = &result["peers"][public.as_str()];
    assert_eq!(
        (&p["permission"], &p["channel"]),
        (&0.into(), &0.into()),
        "{result}"
    );
    // The public peer got the Send indication and the ChannelData, from the relayed
    // address; no listener inside got anything.
    let relayed = result["relayed"].as_str().expect("a relayed address");
    let got = wait_for(Duration::from_secs(5), || {
        let got = received(&outside);
        (got.get(&public).map_or(0, Vec::len) >= 2).then_some(got)
    })
    .unwrap_or_else(|| panic!("the public peer got nothing: {}", read(&outside)));
    assert_eq!(
        got[&public],
        vec![format!("send {public}"), format!("chan {public}")]
    );
    assert!(read(&outside).contains(&format!("\"from\": \"{relayed}\"")));
    assert_eq!(received(&inside), BTreeMap::new(), "{}", read(&inside));
    assert_eq!(received(&itself), BTreeMap::new(), "{}", read(&itself));

    // An operator opens 10.77.0.0/24 on a second relay: that range, and only it, works.
    let open = spawn_relay(
        &lab,
        &mut procs,
        "relay-open",
        &[
            "--listen",
            &format!("{SRV1}:3490"),
            "--relay-ports",
            "50100-50109",
            "--allow-peer",
            "10.77.0.0/24",
        ],
    );
    let server = format!("{SRV1}:3490");
    let lan = format!("10.77.0.2:{PORT}");
    let metadata = format!("169.254.169.254:{PORT}");
    let own = format!("{SRV1}:{PORT}");
    let result = turnprobe(
        &lab,
        "pA",
        &[
            "probe",
            "--server",
            &server,
            "--user",
            "dev1.party1",
            "--peer",
            &lan,
            "--peer",
            &metadata,
            "--peer",
            &own,
        ],
    );
    assert_eq!(result["allocate"], 0, "{result}");
    assert_eq!(result["peers"][lan.as_str()]["permission"], 0, "{result}");
    assert_eq!(result["peers"][lan.as_str()]["channel"], 0, "{result}");
    for refused in [&metadata, &own] {
        assert_eq!(
            result["peers"][refused.as_str()]["permission"],
            403,
            "{result}"
        );
    }
    let got = wait_for(Duration::from_secs(5), || {
        let got = received(&inside);
        (got.get(&lan).map_or(0, Vec::len) >= 2).then_some(got)
    })
    .unwrap_or_else(|| panic!("the opened range got nothing: {}", read(&inside)));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        vec![&lan],
        "{}",
        read(&inside)
    );
    assert_eq!(received(&itself), BTreeMap::new(), "{}", read(&itself));
    for log in [&relay, &open] {
        assert_eq!(alarms(log), Vec::<String>::new());
    }
}

/// Thirty throw-away identities of one party, from one public IP, each asking for three
/// allocations (90 in all, against 64 relay ports): the relay grants that IP its quota (8)
/// and answers every other request 486 (Allocation Quota Reached), so a real member of
/// another party behind another IP still allocates.
#[test]
fn thirty_identities_cannot_exhaust_the_relay() {
    let lab = NatLab::new("rquota", Nat::Cone, Nat::Cone);
    let mut procs = Procs(Vec::new());
    let relay = spawn_relay(
        &lab,
        &mut procs,
        "relay",
        &[
            "--listen",
            &format!("{SRV1}:3478"),
            "--relay-ports",
            "50000-50063",
        ],
    );
    let server = format!("{SRV1}:3478");
    let users: Vec<String> = (0..30)
        .map(|i| format!("{i:016x}.00000000000000aa"))
        .collect();
    let mut args = vec!["allocate", "--server", &server, "--each", "3"];
    for u in &users {
        args.extend(["--user", u.as_str()]);
    }
    let result = turnprobe(&lab, "pA", &args);
    let codes: Vec<i64> = result["codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c[1].as_i64().expect("a code"))
        .collect();
    assert_eq!(codes.len(), 90);
    let granted = codes.iter().filter(|c| **c == 0).count();
    let quota = codes.iter().filter(|c| **c == 486).count();
    eprintln!("90 allocations from one IP: {granted} granted, {quota} refused with 486");
    assert_eq!((granted, quota), (8, 82), "{codes:?}");

    // A real member, another party, behind the other NAT.
    let result = turnprobe(
        &lab,
        "pB",
        &[
            "allocate",
            "--server",
            &server,
            "--user",
            "00000000000000bb.00000000000000cc",
        ],
    );
    assert_eq!(result["codes"][0][1], 0, "{result}\n{}", read(&relay));
    assert_eq!(alarms(&relay), Vec::<String>::new());
}
