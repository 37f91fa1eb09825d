//! A throwaway lab of Linux network namespaces running the real `lanrage` binary.
//!
//! Layout: a switch namespace holding a bridge; a control namespace at 10.99.0.1; players
//! at 10.99.0.2, .3, … Every veth is created inside the switch namespace, so nothing
//! touches the host's own network, and `Drop` kills every process and deletes every
//! namespace even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_lanrage");
pub const CONTROL_IP: &str = "10.99.0.1";

/// Fails loudly (never skips) when the test cannot run here.
pub fn require_root_and_tools() {
    assert!(
        nix_is_root(),
        "the end-to-end tests need root (network namespaces, TUN); run them as root"
    );
    for tool in [
        "ip",
        "ping",
        "iperf3",
        "bash",
        "turnserver",
        "turnutils_uclient",
        "python3",
        "quakestat",
        "/usr/games/openarena-server",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "the end-to-end tests need `{tool}` (apt-get install iproute2 iputils-ping iperf3 coturn python3 qstat openarena-server)"
        );
    }
    assert!(
        Path::new("/dev/net/tun").exists(),
        "the end-to-end tests need /dev/net/tun"
    );
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command and returns its output; panics with the command line if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pings `ip` from namespace `ns` (`count` pings, 50 ms apart); returns the loss in
/// percent (100 when ping could not run).
pub fn ping_loss_in(ns: &str, ip: &str, count: u32) -> f64 {
    let out =
        run(Lab::in_ns(ns, "ping").args(["-c", &count.to_string(), "-i", "0.05", "-W", "1", ip]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let pct = l.split(',').find(|f| f.contains("packet loss"))?;
            pct.trim().split('%').next()?.parse::<f64>().ok()
        })
        .unwrap_or(100.0)
}

pub struct Lab {
    prefix: String,
    pub dir: tempfile::TempDir,
    players: usize,
    control: Option<Child>,
    daemons: Vec<Option<Child>>,
    extra: Vec<Child>,
    /// Log lines at WARN or ERROR this test expects (substrings); any other fails it.
    allowed: Vec<String>,
}

impl Lab {
    /// Builds the namespaces for a control plane and `players` players.
    pub fn new(name: &str, players: usize) -> Self {
        require_root_and_tools();
        let prefix = format!("lre{}-{name}", std::process::id() % 100_000);
        let lab = Self {
            prefix,
            dir: tempfile::tempdir().expect("temp dir"),
            players,
            control: None,
            daemons: (0..players).map(|_| None).collect(),
            extra: Vec::new(),
            allowed: Vec::new(),
        };
        let sw = lab.ns_name("sw");
        must(Command::new("ip").args(["netns", "add", &sw]));
        must(Command::new("ip").args(["-n", &sw, "link", "add", "br0", "type", "bridge"]));
        must(Command::new("ip").args(["-n", &sw, "link", "set", "br0", "up"]));
        for i in 0..=players {
            let ns = if i == 0 {
                lab.ns_name("ctl")
            } else {
                lab.player_ns(i)
            };
            let veth = format!("v{i}");
            must(Command::new("ip").args(["netns", "add", &ns]));
            must(Command::new("ip").args([
                "-n", &sw, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]));
            must(Command::new("ip").args(["-n", &sw, "link", "set", &veth, "master", "br0", "up"]));
            let addr = format!("10.99.0.{}/24", i + 1);
            must(Command::new("ip").args(["-n", &ns, "addr", "add", &addr, "dev", "eth0"]));
            must(Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "up"]));
            must(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        }
        lab
    }

    fn ns_name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// Namespace of player `i` (1-based).
    pub fn player_ns(&self, i: usize) -> String {
        self.ns_name(&format!("p{i}"))
    }

    pub fn player_addr(i: usize) -> String {
        format!("10.99.0.{}", i + 1)
    }

    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("p{i}"))
    }

    pub fn control_url() -> String {
        format!("http://{CONTROL_IP}:8667")
    }

    /// `ip netns exec NS cmd…`
    pub fn in_ns(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file")
    }

    /// Namespace of the control plane (10.99.0.1).
    pub fn control_ns(&self) -> String {
        self.ns_name("ctl")
    }

    /// A WARN or ERROR line containing `what` is expected in this test (e.g. the control
    /// plane being killed on purpose); say why where it is called.
    pub fn allow_log(&mut self, what: &str) {
        self.allowed.push(what.to_owned());
    }

    /// Every WARN or ERROR line in the lab's logs that no [`Lab::allow_log`] expects.
    pub fn unexpected_log_lines(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.dir.path()) else {
            return bad;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines() {
                let level = match serde_json::from_str::<Value>(line) {
                    Ok(v) => v["level"].as_str().unwrap_or_default().to_owned(),
                    // Human format: `TIMESTAMP LEVEL target: message`.
                    Err(_) => line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned(),
                };
                if (level == "WARN" || level == "ERROR")
                    && !self.allowed.iter().any(|a| line.contains(a.as_str()))
                {
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                    bad.push(format!("{}: {line}", name.unwrap_or_default()));
                }
            }
        }
        bad
    }

    /// Starts (or restarts) the control plane and waits until it accepts connections.
    pub fn start_control(&mut self) {
        self.start_control_with(&[]);
    }

    /// Runs `lanrage ARGS` in the control plane's namespace (a relay, say), logging to
    /// `NAME.log`; it is killed with the lab.
    pub fn spawn_control_side(&mut self, name: &str, args: &[&str]) {
        let child = Self::in_ns(&self.ns_name("ctl"), BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(self.log(name))
            .stderr(self.log(name))
            .spawn()
            .expect("spawn");
        self.extra.push(child);
    }

    /// [`Lab::start_control`] with extra arguments.
    pub fn start_control_with(&mut self, extra: &[&str]) {
        let db = format!(
            "sqlite://{}",
            self.dir.path().join("control/control.db").display()
        );
        let child = Self::in_ns(&self.ns_name("ctl"), BIN)
            .args([
                "control",
                "--listen",
                &format!("{CONTROL_IP}:8667"),
                "--database",
                &db,
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(self.log("control"))
            .stderr(self.log("control"))
            .spawn()
            .expect("spawn control");
        self.control = Some(child);
        let ns = self.ns_name("ctl");
        let up = wait_for(Duration::from_secs(10), || {
            let probe = format!("exec 3<>/dev/tcp/{CONTROL_IP}/8667");
            run(Self::in_ns(&ns, "bash").args(["-c", &probe]))
                .status
                .success()
                .then_some(())
        });
        assert!(
            up.is_some(),
            "control plane did not start; log: {}",
            self.read_log("control")
        );
    }

    /// Stops the control plane (SIGKILL: the worst case for its clients).
    pub fn kill_control(&mut self) {
        if let Some(mut c) = self.control.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts player `i`'s daemon against the lab's control plane (or in host mode with
    /// `extra` args) and waits for its local API.
    pub fn start_daemon(&mut self, i: usize, extra: &[&str]) {
        let dir = self.state_dir(i);
        let name = format!("p{i}");
        let mut cmd = Self::in_ns(&self.player_ns(i), BIN);
        cmd.args([
            "up",
            "--state-dir",
            &dir.display().to_string(),
            "--name",
            &name,
        ]);
        if extra.is_empty() {
            cmd.args(["--control", &Self::control_url()]);
        } else {
            cmd.args(extra);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(self.log(&name))
            .stderr(self.log(&name))
            .spawn()
            .expect("spawn daemon");
        self.daemons[i - 1] = Some(child);
        let ok = wait_for(Duration::from_secs(10), || self.try_status(i));
        assert!(
            ok.is_some(),
            "daemon p{i} did not come up; log: {}",
            self.read_log(&name)
        );
    }

    /// `kill -9` player `i`'s daemon.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.daemons[i - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to player `i`'s daemon; waits (bounded) for it to exit and returns whether
    /// it exited successfully.
    pub fn terminate(&mut self, i: usize) -> bool {
        let Some(mut c) = self.daemons[i - 1].take() else {
            return false;
        };
        let pid = c.id().to_string();
        let _ = run(Command::new("kill").args(["-TERM", &pid]));
        let status = wait_for(Duration::from_secs(10), || c.try_wait().ok().flatten());
        match status {
            Some(s) => s.success(),
            None => {
                let _ = c.kill();
                let _ = c.wait();
                false
            }
        }
    }

    /// Runs the CLI as player `i` (with its state dir).
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        run(Self::in_ns(&self.player_ns(i), BIN)
            .args(args)
            .args(["--state-dir", &self.state_dir(i).display().to_string()]))
    }

    /// Runs the CLI as player `i` and returns its stdout; panics on failure.
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            out.status.success(),
            "p{i} `lanrage {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn try_status(&self, i: usize) -> Option<Value> {
        let out = self.cli(i, &["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self, i: usize) -> Value {
        self.try_status(i).unwrap_or_else(|| {
            panic!(
                "status of p{i} failed; log: {}",
                self.read_log(&format!("p{i}"))
            )
        })
    }

    /// Creates a party as player `host` and joins every other started player to it.
    pub fn party(&self, host: usize, joiners: &[usize]) -> String {
        let invite = self.cli_ok(host, &["party", "create", "e2e party"]);
        for &j in joiners {
            self.cli_ok(j, &["party", "join", &invite]);
        }
        invite
    }

    /// Waits until player `i` sees exactly `names` as direct peers with a latency.
    pub fn wait_direct(&self, i: usize, names: &[&str], timeout: Duration) -> Value {
        let want: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        wait_for(timeout, || {
            let s = self.try_status(i)?;
            let members = s["party"]["members"].as_array()?;
            let mut got: Vec<String> = members
                .iter()
                .filter(|m| m["path"] == "direct" && m["latency_ms"].as_f64().is_some())
                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                .collect();
            got.sort();
            (got == want && members.len() == want.len()).then_some(s)
        })
        .unwrap_or_else(|| {
            panic!(
                "p{i} never saw {names:?} direct; status: {:#}\nlog: {}",
                self.try_status(i).unwrap_or_default(),
                self.read_log(&format!("p{i}"))
            )
        })
    }

    /// Pings `ip` from player `i`; returns the loss in percent.
    pub fn ping_loss(&self, i: usize, ip: &str, count: u32) -> f64 {
        ping_loss_in(&self.player_ns(i), ip, count)
    }

    /// Starts a background process in player `i`'s namespace, owned by the lab.
    pub fn spawn_in(&mut self, i: usize, program: &str, args: &[&str]) {
        let child = Self::in_ns(&self.player_ns(i), program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        self.extra.push(child);
    }

    /// Starts a background process in player `i`'s namespace, owned by the lab, with its
    /// output in `<name>.out` in the lab directory; returns that path.
    pub fn spawn_logged(&mut self, i: usize, name: &str, program: &str, args: &[&str]) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.out"));
        let out = std::fs::File::create(&path).expect("output file");
        let child = Self::in_ns(&self.player_ns(i), program)
            .args(args)
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdout(out)
            .stderr(self.log(name))
            .spawn()
            .expect("spawn");
        self.extra.push(child);
        path
    }

    /// Debian's OpenArena dedicated server (ioquake3), its program and arguments: UDP
    /// 27960, map oa_dm1, announcing `hostname`.
    pub fn openarena(hostname: &str) -> (&'static str, Vec<String>) {
        let args = [
            "+set",
            "dedicated",
            "1",
            "+set",
            "net_port",
            "27960",
            "+set",
            "sv_hostname",
            hostname,
            "+map",
            "oa_dm1",
        ];
        (
            "/usr/games/openarena-server",
            args.iter().map(|a| (*a).to_owned()).collect(),
        )
    }

    pub fn read_log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn players(&self) -> usize {
        self.players
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self
            .daemons
            .iter_mut()
            .flatten()
            .chain(self.control.iter_mut())
            .chain(self.extra.iter_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 1..=self.players {
            let _ = run(Command::new("ip").args(["netns", "del", &self.player_ns(i)]));
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.ns_name("ctl")]));
        let _ = run(Command::new("ip").args(["netns", "del", &self.ns_name("sw")]));
        // A normal run logs no WARN or ERROR; one that does fails (after cleaning up).
        if !std::thread::panicking() {
            let bad = self.unexpected_log_lines();
            assert!(
                bad.is_empty(),
                "unexpected WARN/ERROR log lines:\n{}",
                bad.join("\n")
            );
        }
    }
}

/// A bare network namespace (loopback up), deleted on drop.
pub struct Netns(String);

impl Netns {
    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn new(name: &str) -> Self {
        let _ = run(Command::new("ip").args(["netns", "del", name]));
        must(Command::new("ip").args(["netns", "add", name]));
        must(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        Self(name.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.0]));
    }
}
