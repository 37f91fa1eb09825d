//! A WireGuard handshake flood from many source addresses (issue 17, point 4): forged
//! initiations at player 2's UDP port must not take the real tunnel down.
//!
//! The attacker is a namespace on the lab's bridge (player 3's, with no daemon in it). It
//! writes raw IPv4 packets (`IP_HDRINCL`) with 150 spoofed sources from 10.98.0.0/24, a
//! subnet that exists nowhere: no address is configured for it and no neighbour entry is
//! ever made for it. Player 2 gets one route to it via the attacker, so its cookie replies
//! all go to one neighbour (the attacker's MAC, where they are dropped) instead of 150
//! unresolved ones in the kernel's IPv4 neighbour table, which all namespaces share
//! (`gc_thresh3` defaults to 1024) — no sysctl is changed.
//!
//! The forged initiations are 148 bytes of random content with a valid MAC1: MAC1 only
//! needs the responder's public key (every party member and the control plane know it),
//! and without it a message is refused by one BLAKE2s and tests nothing. With it, each one
//! reached the Diffie-Hellman in the old code (gotatun's limiter allowed 100 per source IP
//! per second, so 150 sources at 15 000 pps never tripped it).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Lab, must, run};

/// Forged initiations per second, over all 150 sources (the rate the probe used was
/// 14 000 pps).
const FLOOD_PPS: u32 = 15_000;
/// The flood stops by itself after this long: the ping below runs inside it.
const FLOOD_SECS: f64 = 11.0;
/// Pings through the tunnel during the flood, 20 ms apart (10 s).
const PINGS: u32 = 500;
const SPOOFED_NET: &str = "10.98.0.0/24";

/// Sends forged WireGuard handshake initiations (type 1, 148 bytes, random but for a
/// valid MAC1 and a zero MAC2) from 150 spoofed sources, paced to `pps`, for `secs`, then
/// prints `SENT <n> <seconds>`.
const FLOODER: &str = r#"
import base64, hashlib, os, socket, struct, sys, time
dst, port, key_b64, pps, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
mac1_key = hashlib.blake2s(b"mac1----" + base64.b64decode(key_b64)).digest()
dst_b = socket.inet_aton(dst)
pkts = []
for variant in range(8):
    for i in range(150):
        src = socket.inet_aton("10.98.0.%d" % (i + 1))
        body = b"\x01\x00\x00\x00" + os.urandom(112)
        wg = body + hashlib.blake2s(body, key=mac1_key, digest_size=16).digest() + bytes(16)
        udp = struct.pack("!HHHH", 20000 + i, port, 8 + len(wg), 0) + wg
        # Version/IHL, TOS, length, id, fragment, TTL, UDP, checksum (the kernel fills
        # in the checksum and the id), source, destination.
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst_b)
        pkts.append(ip + udp)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
start = time.monotonic()
sent = 0
n = len(pkts)
while True:
    elapsed = time.monotonic() - start
    if elapsed >= secs:
        break
    due = int(elapsed * pps) + 1
    while sent < due:
        try:
            s.sendto(pkts[sent % n], (dst, 0))
        except BlockingIOError:
            break
        sent += 1
    if sent >= due:
        time.sleep(0.0005)
print("SENT %d %.3f" % (sent, time.monotonic() - start), flush=True)
"#;

/// Packets received and sent on `eth0` in namespace `ns`.
fn packets(ns: &str) -> (u64, u64) {
    let out = must(Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", "eth0"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    let count = |dir: &str| {
        v[0]["stats64"][dir]["packets"]
            .as_u64()
            .expect("packet count")
    };
    (count("rx"), count("tx"))
}

/// (loss in percent, max RTT in ms) from ping's summary.
fn ping_summary(out: &str) -> (f64, f64) {
    let loss = out
        .lines()
        .find_map(|l| {
            let pct = l.split(',').find(|f| f.contains("packet loss"))?;
            pct.trim().split('%').next()?.parse::<f64>().ok()
        })
        .unwrap_or(100.0);
    // rtt min/avg/max/mdev = 0.071/0.110/0.210/0.030 ms
    let max = out
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(2))
        .and_then(|m| m.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    (loss, max)
}

#[test]
fn a_handshake_flood_from_many_sources_leaves_the_tunnel_up() {
    let mut lab = Lab::new("flood", 3);
    lab.start_control();
    lab.start_daemon(1, &[]);
    lab.start_daemon(2, &[]);
    lab.party(1, &[2]);
    let s1 = lab.wait_direct(1, &["p2"], Duration::from_secs(15));
    lab.wait_direct(2, &["p1"], Duration::from_secs(15));
    let p2 = s1["party"]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "p2"))
        .expect("p2 in p1's status")
        .clone();
    let key = p2["public_key"].as_str().expect("p2's key").to_owned();
    let vip2 = p2["virtual_ip"].as_str().expect("p2's address").to_owned();

    let (p2_ns, attacker) = (lab.player_ns(2), lab.player_ns(3));
    let attacker_ip = Lab::player_addr(3);
    must(Command::new("ip").args([
        "-n",
        &p2_ns,
        "route",
        "add",
        SPOOFED_NET,
        "via",
        &attacker_ip,
    ]));
    let (rx_before, tx_before) = packets(&p2_ns);

    let flood = Lab::in_ns(&attacker, "python3")
        .args([
            "-c",
            FLOODER,
            &Lab::player_addr(2),
            &lanrage_proto::DEFAULT_UDP_PORT.to_string(),
            &key,
            &FLOOD_PPS.to_string(),
            &FLOOD_SECS.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the flooder");
    // The flood is under way before the first ping and outlasts the last.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let ping = run(Lab::in_ns(&lab.player_ns(1), "ping").args([
        "-c",
        &PINGS.to_string(),
        "-i",
        "0.02",
        "-W",
        "1",
        &vip2,
    ]));
    let ping_took = started.elapsed();
    let flood = flood.wait_with_output().expect("flooder output");
    let flood_out = String::from_utf8_lossy(&flood.stdout);
    assert!(
        flood.status.success(),
        "flooder failed: {flood_out}{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    let (sent, secs) = flood_out
        .lines()
        .find_map(|l| {
            let mut f = l.strip_prefix("SENT ")?.split(' ');
            Some((
                f.next()?.parse::<u64>().ok()?,
                f.next()?.parse::<f64>().ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("no SENT line from the flooder: {flood_out}"));
    let rate = sent as f64 / secs;
    let (rx_after, tx_after) = packets(&p2_ns);
    let (arrived, answered) = (rx_after - rx_before, tx_after - tx_before);
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    let (loss, max_rtt) = ping_summary(&ping_out);
    eprintln!(
        "flood: {sent} forged initiations from 150 sources in {secs:.1} s ({rate:.0} pps), \
         {arrived} packets reached p2, which sent {answered} (cookie replies); tunnel ping during it: {loss}% loss of {PINGS}, \
         max RTT {max_rtt} ms, {:.1} s",
        ping_took.as_secs_f64()
    );
    assert!(
        rate >= 14_000.0,
        "the flooder reached only {rate:.0} pps (machine too busy?); the claim needs ≥ 14 000"
    );
    assert!(
        arrived >= sent * 9 / 10,
        "only {arrived} of {sent} forged packets reached p2's interface"
    );
    // Under load, every forged initiation past the first hundred or so is answered with a
    // cookie reply instead of a Diffie-Hellman (the old code answered none: it did the DH).
    assert!(
        answered >= sent * 9 / 10,
        "p2 sent only {answered} packets for {sent} forged initiations: no cookie replies?"
    );
    assert!(
        loss < 1.0,
        "{loss}% of the tunnel pings were lost during the flood:\n{ping_out}"
    );
    // The daemon says so itself: its /metrics counts the cookie replies.
    let metrics = run(Lab::in_ns(&p2_ns, "curl").args(["-sf", "http://127.0.0.1:8666/metrics"]));
    let text = String::from_utf8_lossy(&metrics.stdout);
    let cookied: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("lanrage_handshakes_cookied_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no lanrage_handshakes_cookied_total in /metrics:\n{text}"));
    assert!(
        cookied >= (sent * 8 / 10) as f64,
        "/metrics counts {cookied} cookie replies for {sent} forged initiations"
    );
    // The tunnel is still direct and answering afterwards.
    lab.wait_direct(1, &["p2"], Duration::from_secs(5));
}
