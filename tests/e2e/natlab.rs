//! Players behind real Linux NAT routers, after the shared testbed's topology:
//!
//! ```text
//!   srv 203.0.113.10 + .11 (control plane; relay: STUN on both, TURN on .10)
//!          │
//!        inet (plain router)
//!      ┌───┴───┐
//!   rA wan 198.51.100.2   rB wan 192.0.2.2      (NAT + home-router firewall)
//!   pA 192.168.1.2         pB 192.168.2.2
//! ```
//!
//! Every link is a veth created inside the namespaces; `Drop` removes them all.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{BIN, must, require_root_and_tools, run, wait_for};
use crate::wanem::Wanem;

/// A router's NAT behaviour (RFC 4787 terms in the comments), as the shared testbed built
/// and verified them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// MASQUERADE: endpoint-independent mapping, address-and-port-dependent filtering
    /// ("port-restricted cone").
    Cone,
    /// Cone plus a DMZ DNAT for new inbound flows: endpoint-independent filtering.
    FullCone,
    /// Cone plus an nft set of contacted remote IPs: address-dependent filtering.
    Restricted,
    /// MASQUERADE --random-fully: address-and-port-dependent mapping ("symmetric").
    Symmetric,
}

impl Nat {
    pub fn name(self) -> &'static str {
        match self {
            Nat::Cone => "cone",
            Nat::FullCone => "fullcone",
            Nat::Restricted => "restricted",
            Nat::Symmetric => "symmetric",
        }
    }
}

pub struct NatLab {
    prefix: String,
    pub dir: tempfile::TempDir,
    procs: Vec<(String, Child)>,
    routers: Vec<&'static str>,
    wanem: Vec<Wanem>,
}

/// The TURN secret the lab's control plane and relay share.
pub const TURN_SECRET: &str = "natlab-turn-secret";
/// Where coturn listens when it is the lab's TURN server.
pub const COTURN_PORT: u16 = 3480;

pub const SRV1: &str = "203.0.113.10";
pub const SRV2: &str = "203.0.113.11";

impl NatLab {
    /// Each player behind its own router.
    pub fn new(name: &str, a: Nat, b: Nat) -> Self {
        Self::build(name, a, Some(b), false)
    }

    /// Both players behind router rA, on one LAN segment (pB at 192.168.1.3).
    pub fn same_nat(name: &str, nat: Nat) -> Self {
        Self::build(name, nat, None, false)
    }

    /// Like [`Self::new`], and router rB runs miniupnpd (PCP, NAT-PMP and UPnP IGD), so
    /// pB can have its UDP port forwarded. miniupnpd refuses to map on a WAN address from
    /// a reserved block (the documentation ranges the rest of the lab uses), so rB's WAN is
    /// 100.128.66.2: an address that, like every other here, exists only inside the lab's
    /// namespaces, which have no link to the machine's own network.
    pub fn with_port_mapping(name: &str, a: Nat, b: Nat) -> Self {
        let mut lab = Self::build(name, a, Some(b), true);
        lab.start_miniupnpd(true);
        lab
    }

    /// Like [`Self::with_port_mapping`], with miniupnpd speaking UPnP IGD only (PCP and
    /// NAT-PMP off), as many consumer routers do.
    pub fn with_upnp_only(name: &str, a: Nat, b: Nat) -> Self {
        let mut lab = Self::build(name, a, Some(b), true);
        lab.start_miniupnpd(false);
        lab
    }

    fn build(name: &str, a: Nat, b: Option<Nat>, mapped_wan: bool) -> Self {
        require_root_and_tools();
        let has_iptables = run(Command::new("sh").args(["-c", "command -v iptables"]))
            .status
            .success();
        assert!(
            has_iptables,
            "the NAT tests need iptables (apt-get install iptables)"
        );
        let lab = Self {
            prefix: format!("lrn{}-{name}", std::process::id() % 100_000),
            dir: tempfile::tempdir().expect("temp dir"),
            procs: Vec::new(),
            routers: if b.is_some() {
                vec!["rA", "rB"]
            } else {
                vec!["rA"]
            },
            wanem: Vec::new(),
        };
        let routers = lab.routers.clone();
        for ns in ["inet", "srv", "pA", "pB"].iter().chain(&routers) {
            must(Command::new("ip").args(["netns", "add", &lab.ns(ns)]));
            lab.x(ns, &["ip", "link", "set", "lo", "up"]);
        }
        lab.link("inet", "srv", "srv", "eth0");
        lab.link("inet", "ra", "rA", "wan0");
        let mut addrs = vec![
            ("inet", "srv", "203.0.113.1/24"),
            ("inet", "ra", "198.51.100.1/24"),
            ("srv", "eth0", "203.0.113.10/24"),
            ("srv", "eth0", "203.0.113.11/24"),
            ("rA", "wan0", "198.51.100.2/24"),
            ("rA", "lan0", "192.168.1.1/24"),
            ("pA", "eth0", "192.168.1.2/24"),
        ];
        let mut gateways = vec![
            ("srv", "203.0.113.1"),
            ("rA", "198.51.100.1"),
            ("pA", "192.168.1.1"),
        ];
        if b.is_some() {
            lab.link("inet", "rb", "rB", "wan0");
            lab.link("rA", "lan0", "pA", "eth0");
            lab.link("rB", "lan0", "pB", "eth0");
            addrs.extend([
                (
                    "inet",
                    "rb",
                    if mapped_wan {
                        "100.128.66.1/24"
                    } else {
                        "192.0.2.1/24"
                    },
                ),
                (
                    "rB",
                    "wan0",
                    if mapped_wan {
                        "100.128.66.2/24"
                    } else {
                        "192.0.2.2/24"
                    },
                ),
                ("rB", "lan0", "192.168.2.1/24"),
                ("pB", "eth0", "192.168.2.2/24"),
            ]);
            let wan_gw = if mapped_wan {
                "100.128.66.1"
            } else {
                "192.0.2.1"
            };
            gateways.extend([("rB", wan_gw), ("pB", "192.168.2.1")]);
        } else {
            // One home LAN: a bridge named like the single-player LAN port, so the
            // router's rules are the same.
            lab.x("rA", &["ip", "link", "add", "lan0", "type", "bridge"]);
            lab.x("rA", &["ip", "link", "set", "lan0", "up"]);
            lab.link("rA", "lana", "pA", "eth0");
            lab.link("rA", "lanb", "pB", "eth0");
            for port in ["lana", "lanb"] {
                lab.x("rA", &["ip", "link", "set", port, "master", "lan0"]);
            }
            addrs.push(("pB", "eth0", "192.168.1.3/24"));
            gateways.push(("pB", "192.168.1.1"));
        }
        for (ns, dev, addr) in addrs {
            lab.x(ns, &["ip", "addr", "add", addr, "dev", dev]);
        }
        for (ns, gw) in gateways {
            lab.x(ns, &["ip", "route", "add", "default", "via", gw]);
        }
        for ns in ["inet"].iter().chain(&routers) {
            lab.x(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        lab.router("rA", a);
        if let Some(b) = b {
            lab.router("rB", b);
        }
        lab
    }

    /// Delays every packet crossing a router's WAN link by `delay`, each way, and drops
    /// `loss_pct` percent of them (user space, see `wanem`).
    pub fn impair(&mut self, delay: Duration, loss_pct: f64) {
        for (i, r) in self.routers.clone().into_iter().enumerate() {
            self.slow_link(r, "wan0", delay, loss_pct, 0x5eed + i as u64);
        }
    }

    /// Sends every packet in or out of `dev` in namespace `ns` through a WAN emulator.
    fn slow_link(&mut self, ns: &str, dev: &str, delay: Duration, loss_pct: f64, seed: u64) {
        self.iptables(
            ns,
            &[
                &format!("-t mangle -A PREROUTING -i {dev} -j NFQUEUE --queue-num 0"),
                &format!("-t mangle -A POSTROUTING -o {dev} -j NFQUEUE --queue-num 0"),
            ],
        );
        self.wanem
            .push(Wanem::start(&self.ns(ns), 0, delay, loss_pct, seed));
    }

    /// Appends iptables rules (each written as iptables arguments) in namespace `ns`.
    fn iptables(&self, ns: &str, rules: &[&str]) {
        for rule in rules {
            let mut args = vec!["iptables", "-w"];
            args.extend(rule.split_whitespace());
            self.x(ns, &args);
        }
    }

    /// Packets the WAN emulators held, and dropped, so far.
    pub fn wan_packets(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.wanem.iter().fold((0, 0), |(p, d), w| {
            (p + w.packets.load(Relaxed), d + w.dropped.load(Relaxed))
        })
    }

    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Runs a command in a namespace; it must succeed.
    pub fn x(&self, ns: &str, args: &[&str]) {
        must(
            Command::new("ip")
                .args(["netns", "exec", &self.ns(ns)])
                .args(args),
        );
    }

    fn link(&self, a: &str, a_dev: &str, b: &str, b_dev: &str) {
        let (na, nb) = (self.ns(a), self.ns(b));
        must(Command::new("ip").args([
            "-n", &na, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", &nb,
        ]));
        must(Command::new("ip").args(["-n", &na, "link", "set", a_dev, "up"]));
        must(Command::new("ip").args(["-n", &nb, "link", "set", b_dev, "up"]));
    }

    /// A home router: NAT on wan0, a stateful firewall that drops unsolicited inbound.
    fn router(&self, r: &str, nat: Nat) {
        let player = if r == "rA" {
            "192.168.1.2"
        } else {
            "192.168.2.2"
        };
        let masquerade = if nat == Nat::Symmetric {
            "-t nat -A POSTROUTING -o wan0 -j MASQUERADE --random-fully"
        } else {
            "-t nat -A POSTROUTING -o wan0 -j MASQUERADE"
        };
        let dmz = format!("-t nat -A PREROUTING -i wan0 -j DNAT --to-destination {player}");
        let mut rules = vec![
            "-P FORWARD DROP",
            "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A FORWARD -i lan0 -o wan0 -j ACCEPT",
            // Between players on one LAN (a bridge: with br_netfilter loaded, bridged
            // frames pass this chain too), as a home router's switch would.
            "-A FORWARD -i lan0 -o lan0 -j ACCEPT",
            "-A FORWARD -i wan0 -o lan0 -m conntrack --ctstate DNAT -j ACCEPT",
            "-A INPUT -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A INPUT -i wan0 -j DROP",
            masquerade,
        ];
        if nat == Nat::FullCone {
            rules.push(&dmz);
        }
        self.iptables(r, &rules);
        if nat == Nat::Restricted {
            // {remote IP . mapping port} recorded on the way out; a new inbound flow is let
            // in only from an IP this mapping has sent to, from any port.
            let rules = format!(
                r#"table ip lanrage_nat {{
  set rdst {{ type ipv4_addr . inet_service; flags timeout; timeout 600s; }}
  chain lan_out {{
    type filter hook forward priority -10; policy accept;
    iifname "lan0" oifname "wan0" meta l4proto udp update @rdst {{ ip daddr . udp sport }}
  }}
  chain wan_in {{
    type nat hook prerouting priority -110; policy accept;
    iifname "wan0" meta l4proto udp ip saddr . udp dport @rdst dnat to {player}
  }}
}}
"#
            );
            let path = self.dir.path().join(format!("{r}.nft"));
            std::fs::write(&path, rules).expect("nft rules");
            self.x(r, &["nft", "-f", &path.display().to_string()]);
        }
    }

    /// miniupnpd on rB: its chains in an nftables table of their own (accepting; the
    /// router's iptables firewall already lets DNATed flows in), PCP and NAT-PMP for
    /// addresses of rB's LAN only, its pid and lease files in the lab's directory.
    fn start_miniupnpd(&mut self, natpmp: bool) {
        let has = run(Command::new("sh").args(["-c", "command -v miniupnpd"]))
            .status
            .success();
        assert!(
            has,
            "the port-mapping test needs miniupnpd (apt-get install miniupnpd-nftables)"
        );
        let tables = r#"table inet lanrage_upnp {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"#;
        let dir = self.dir.path();
        std::fs::write(dir.join("upnp.nft"), tables).expect("nft file");
        self.x(
            "rB",
            &["nft", "-f", &dir.join("upnp.nft").display().to_string()],
        );
        let conf = format!(
            "ext_ifname=wan0\nlistening_ip=lan0\nenable_natpmp={}\nenable_upnp=yes\n\
             secure_mode=yes\nsystem_uptime=yes\nupnp_table_name=lanrage_upnp\n\
             upnp_nat_table_name=lanrage_upnp\nlease_file={}\n\
             allow 1024-65535 192.168.2.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n",
            if natpmp { "yes" } else { "no" },
            dir.join("upnp.leases").display()
        );
        std::fs::write(dir.join("miniupnpd.conf"), conf).expect("miniupnpd.conf");
        let conf = dir.join("miniupnpd.conf").display().to_string();
        let pid = dir.join("miniupnpd.pid").display().to_string();
        // `-d`: stay in the foreground and log to stderr; the pid file is per lab.
        self.spawn_program(
            "rB",
            "miniupnpd",
            "miniupnpd",
            &["-d", "-f", &conf, "-P", &pid],
        );
        let listening = wait_for(Duration::from_secs(10), || {
            self.log("miniupnpd")
                .contains("HTTP listening on port")
                .then_some(())
        });
        assert!(
            listening.is_some(),
            "miniupnpd did not start: {}",
            self.log("miniupnpd")
        );
    }

    fn spawn(&mut self, ns: &str, log: &str, args: &[&str]) {
        self.spawn_program(ns, log, BIN, args);
    }

    fn spawn_program(&mut self, ns: &str, log: &str, program: &str, args: &[&str]) {
        let file = std::fs::File::create(self.dir.path().join(format!("{log}.log"))).expect("log");
        let err = file.try_clone().expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), program])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("LANRAGE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("spawn");
        self.procs.push((log.to_owned(), child));
    }

    /// Stops a process started under the log name `name` with SIGTERM, as a service
    /// manager would, and waits (10 s at most, then SIGKILL) for it to exit.
    pub fn stop(&mut self, name: &str) {
        for (n, c) in &mut self.procs {
            if n == name {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let exited = wait_for(Duration::from_secs(10), || c.try_wait().ok().flatten());
                if exited.is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        self.procs.retain(|(n, _)| n != name);
    }

    /// Kills a process started under the log name `name` (SIGKILL: a crash).
    pub fn kill(&mut self, name: &str) {
        for (n, c) in &mut self.procs {
            if n == name {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.procs.retain(|(n, _)| n != name);
    }

    /// The relay: STUN on two IPs × two ports (the RFC 5780 set that lets daemons test
    /// filtering), TURN on the first, registered with the control plane.
    pub fn start_relay(&mut self) {
        let control = format!("http://{SRV1}:8667");
        let key = self.relay_key_file("relay");
        self.spawn_relay(&[
            "--secret",
            TURN_SECRET,
            "--relay-ports",
            "50000-50063",
            "--control",
            &control,
            "--key-file",
            &key,
        ]);
    }

    /// Where relay `name` keeps its signing key (in the lab's directory).
    pub fn relay_key_file(&self, name: &str) -> String {
        self.dir
            .path()
            .join(format!("{name}.key"))
            .display()
            .to_string()
    }

    /// The public key of relay `name`, creating its key file the way an operator would
    /// (`lanrage relay --print-key`), for the control plane's `--trust-relay`.
    pub fn relay_key(&self, name: &str) -> String {
        let out = run(Command::new(BIN).args([
            "relay",
            "--key-file",
            &self.relay_key_file(name),
            "--print-key",
        ]));
        assert!(
            out.status.success(),
            "relay --print-key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Our relay on the RFC 5780 set of addresses, with `extra` flags.
    fn spawn_relay(&mut self, extra: &[&str]) {
        let listen = format!("{SRV1}:3478,{SRV2}:3478,{SRV1}:3479,{SRV2}:3479");
        let mut args = vec!["relay", "--listen", &listen];
        args.extend_from_slice(extra);
        self.spawn("srv", "relay", &args);
    }

    /// A second relay, on its own server (`far`, 198.18.0.2) whose link to the internet
    /// core adds `delay` each way; registered with the same control plane.
    pub fn start_far_relay(&mut self, delay: Duration) {
        must(Command::new("ip").args(["netns", "add", &self.ns("far")]));
        self.x("far", &["ip", "link", "set", "lo", "up"]);
        self.link("inet", "far", "far", "eth0");
        self.x(
            "inet",
            &["ip", "addr", "add", "198.18.0.1/24", "dev", "far"],
        );
        self.x(
            "far",
            &["ip", "addr", "add", "198.18.0.2/24", "dev", "eth0"],
        );
        self.x(
            "far",
            &["ip", "route", "add", "default", "via", "198.18.0.1"],
        );
        self.slow_link("far", "eth0", delay, 0.0, 0xfa);
        let control = format!("http://{SRV1}:8667");
        let key = self.relay_key_file("far-relay");
        self.spawn(
            "far",
            "far-relay",
            &[
                "relay",
                "--listen",
                "198.18.0.2:3478",
                "--secret",
                TURN_SECRET,
                "--relay-ports",
                "50100-50163",
                "--control",
                &control,
                "--region",
                "far",
                "--key-file",
                &key,
            ],
        );
        self.wait_for_registration("far-relay");
    }

    /// Control plane and relay (STUN + TURN) on the public server.
    pub fn start_servers(&mut self) {
        self.start_control(&[]);
        self.start_relay();
        self.wait_for_control();
        self.wait_for_registration("relay");
    }

    /// Waits until the relay logged under `name` has registered with the control plane.
    fn wait_for_registration(&self, name: &str) {
        let registered = wait_for(Duration::from_secs(15), || {
            self.log(name).contains("relay registered").then_some(())
        });
        assert!(
            registered.is_some(),
            "{name} never registered: {}",
            self.log(name)
        );
    }

    /// Control plane and a STUN-only relay of ours, with coturn (`use-auth-secret`, the
    /// same secret) as the TURN server the control plane hands out.
    pub fn start_servers_with_coturn(&mut self) {
        let coturn = format!("{SRV1}:{COTURN_PORT}");
        self.start_control(&["--turn", &coturn]);
        self.spawn_relay(&[]);
        let secret = format!("--static-auth-secret={TURN_SECRET}");
        let port = COTURN_PORT.to_string();
        self.spawn_program(
            "srv",
            "coturn",
            "turnserver",
            &[
                "-n",
                "--use-auth-secret",
                &secret,
                "--realm=lanrage-lab",
                "--listening-ip",
                SRV1,
                "--relay-ip",
                SRV1,
                "--listening-port",
                &port,
                "--min-port",
                "50100",
                "--max-port",
                "50199",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--no-cli",
                "--no-rfc5780",
                "--log-file=stdout",
            ],
        );
        self.wait_for_control();
    }

    fn start_control(&mut self, extra: &[&str]) {
        let db = format!("sqlite://{}", self.dir.path().join("control.db").display());
        let listen = format!("{SRV1}:8667");
        // The lab's two relays (`start_relay`, `start_far_relay`), trusted up front.
        let trusted = format!(
            "{},{}",
            self.relay_key("relay"),
            self.relay_key("far-relay")
        );
        let mut args = vec![
            "control",
            "--listen",
            &listen,
            "--database",
            &db,
            "--turn-secret",
            TURN_SECRET,
            "--trust-relay",
            &trusted,
        ];
        args.extend_from_slice(extra);
        self.spawn("srv", "control", &args);
    }

    fn wait_for_control(&self) {
        let ns = self.ns("srv");
        let up = wait_for(Duration::from_secs(10), || {
            run(Command::new("ip").args([
                "netns",
                "exec",
                &ns,
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{SRV1}/8667"),
            ]))
            .status
            .success()
            .then_some(())
        });
        assert!(up.is_some(), "control plane did not start");
    }

    pub fn state_dir(&self, player: &str) -> PathBuf {
        self.dir.path().join(player)
    }

    /// A player's daemon with STUN on both server addresses.
    pub fn start_player(&mut self, player: &str) {
        // Primary first (filtering tests), then another IP and another port (mapping tests).
        let stun = format!("{SRV1}:3478,{SRV2}:3478,{SRV1}:3479");
        self.start_daemon(player, &["--stun", &stun]);
    }

    /// A player's daemon on the lab's control plane, with `extra` flags.
    fn start_daemon(&mut self, player: &str, extra: &[&str]) {
        let dir = self.state_dir(player).display().to_string();
        let control = format!("http://{SRV1}:8667");
        let mut args = vec![
            "up",
            "--control",
            &control,
            "--state-dir",
            &dir,
            "--name",
            player,
        ];
        args.extend_from_slice(extra);
        self.spawn(player, player, &args);
        let ok = wait_for(Duration::from_secs(10), || self.try_status(player));
        assert!(ok.is_some(), "daemon {player} did not come up");
    }

    /// A daemon in host mode on the public server (log and state under "srv"): it embeds
    /// the control plane and a relay (STUN + TURN) at the address invites carry.
    pub fn start_host(&mut self) {
        let dir = self.state_dir("srv").display().to_string();
        self.spawn(
            "srv",
            "srv",
            &[
                "up",
                "--state-dir",
                &dir,
                "--name",
                "host",
                "--advertise",
                SRV1,
                "--host-relay-ports",
                "50200-50263",
            ],
        );
        let ok = wait_for(Duration::from_secs(10), || self.try_status("srv"));
        assert!(
            ok.is_some(),
            "the host did not come up: {}",
            self.log("srv")
        );
    }

    /// A player's daemon that learns its STUN and TURN servers from the control plane only.
    pub fn start_guest(&mut self, player: &str) {
        self.start_daemon(player, &[]);
    }

    /// pA creates a party and pB joins it; returns when the join was sent.
    pub fn form_party(&self, name: &str) -> std::time::Instant {
        let out = self.cli("pA", &["party", "create", name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let invite = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let joined = std::time::Instant::now();
        let out = self.cli("pB", &["party", "join", &invite]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        joined
    }

    pub fn cli(&self, player: &str, args: &[&str]) -> std::process::Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns(player), BIN])
            .args(args)
            .args(["--state-dir", &self.state_dir(player).display().to_string()]))
    }

    pub fn try_status(&self, player: &str) -> Option<Value> {
        let out = self.cli(player, &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())?
    }

    /// A ping running in the background: `count` echoes every `interval_ms`.
    pub fn spawn_ping(&self, player: &str, ip: &str, interval_ms: u32, count: u32) -> Child {
        let interval = format!("{:.3}", f64::from(interval_ms) / 1000.0);
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(player),
                "ping",
                "-n",
                "-q",
                "-W",
                "1",
            ])
            .args(["-i", &interval, "-c", &count.to_string(), ip])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ping")
    }

    /// Starts pinging `ip` every 50 ms for `secs` seconds, printing a wall-clock stamp
    /// per reply (`ping -D`); read the result with [`first_reply`].
    pub fn spawn_stamped_ping(&self, player: &str, ip: &str, secs: u32) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(player), "ping", "-n", "-D"])
            .args(["-i", "0.05", "-W", "1", "-w", &secs.to_string(), ip])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ping")
    }

    pub fn ping_loss(&self, player: &str, ip: &str, count: u32) -> f64 {
        crate::harness::ping_loss_in(&self.ns(player), ip, count)
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.wanem.clear();
        for ns in ["pA", "pB", "rA", "rB", "srv", "far", "inet"] {
            let _ = run(Command::new("ip").args(["netns", "del", &self.ns(ns)]));
        }
    }
}

/// The wall-clock time of the first reply a [`NatLab::spawn_stamped_ping`] printed, after
/// it finished.
pub fn first_reply(ping: Child) -> Option<std::time::SystemTime> {
    let out = ping.wait_with_output().expect("ping output");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .find_map(|l| {
            let stamp = l.strip_prefix('[')?.split(']').next()?;
            let secs: f64 = stamp.parse().ok()?;
            Some(std::time::UNIX_EPOCH + Duration::from_secs_f64(secs))
        })
}
