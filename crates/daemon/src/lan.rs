//! The OS side of LAN emulation: routes that bring the party's broadcast and multicast into
//! `lanrage0`, and the opt-in catch of discovery sent out of the physical interface.
//! What is forwarded, and to whom, is decided in `lanrage_core::lan`.
//!
//! Routes (Linux):
//! - the party's directed broadcast needs nothing: the kernel's `broadcast` route for the
//!   interface's prefix already sends it into the TUN;
//! - `255.255.255.255/32 dev lanrage0`: a program that sends a limited broadcast without
//!   choosing an interface reaches the party (Linux sends it by the routing table);
//! - one `/32` per forwarded group (`224.0.0.0/4` when every group is forwarded): sending to
//!   the group, and joining it without naming an interface, both use `lanrage0`.
//!
//! The physical catch is a packet socket with a classic BPF filter, so the kernel hands over
//! only outgoing Ethernet frames to a broadcast or multicast MAC carrying IPv4 UDP; the
//! port and group checks follow in the node.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::sync::{mpsc, watch};

use lanrage_core::lan;
use lanrage_proto::local::{LanSettings, LanSettingsUpdate, LanUpdate};

use crate::dataplane::TUN_NAME;

/// The player's settings as LAN emulation takes them.
pub fn to_core(s: &LanSettings) -> lan::Settings {
    lan::Settings {
        all: s.all,
        physical: s.physical,
        ports: s.ports.iter().copied().collect(),
        groups: s.groups.iter().copied().collect(),
        rate_packets: s.rate_packets_per_s,
        rate_bytes: s.rate_bytes_per_s,
    }
}

/// LAN emulation's settings as the API shows and stores them.
pub fn from_core(s: &lan::Settings) -> LanSettings {
    LanSettings {
        all: s.all,
        physical: s.physical,
        ports: s.ports.iter().copied().collect(),
        groups: s.groups.iter().copied().collect(),
        rate_packets_per_s: s.rate_packets,
        rate_bytes_per_s: s.rate_bytes,
    }
}

/// Applies a settings-page change (lists replace the whole list); a message naming the bad
/// field (`lan.ports`, …) when it is invalid.
pub fn apply_patch(
    current: &lan::Settings,
    p: &LanSettingsUpdate,
) -> Result<lan::Settings, String> {
    if let Some(ports) = &p.ports
        && ports.contains(&0)
    {
        return Err("lan.ports: 0 is not a UDP port (1-65535)".into());
    }
    if let Some(g) = p.groups.iter().flatten().find(|g| !g.is_multicast()) {
        return Err(format!(
            "lan.groups: {g} is not a multicast group (224.0.0.0 to 239.255.255.255)"
        ));
    }
    let u = LanUpdate {
        all: p.all,
        physical: p.physical,
        allow_ports: p.ports.clone().unwrap_or_default(),
        remove_ports: p.ports.as_ref().map_or_else(Vec::new, |new| {
            current
                .ports
                .iter()
                .filter(|x| !new.contains(x))
                .copied()
                .collect()
        }),
        allow_groups: p.groups.clone().unwrap_or_default(),
        remove_groups: p.groups.as_ref().map_or_else(Vec::new, |new| {
            current
                .groups
                .iter()
                .filter(|x| !new.contains(x))
                .copied()
                .collect()
        }),
        rate_packets_per_s: p.rate_packets_per_s,
        rate_bytes_per_s: p.rate_bytes_per_s,
    };
    apply_update(current, &u).map_err(|m| format!("lan.{m}"))
}

/// Applies a change to `current`; a message naming the bad field when it is invalid.
pub fn apply_update(current: &lan::Settings, u: &LanUpdate) -> Result<lan::Settings, String> {
    let mut s = current.clone();
    if let Some(&p) = u
        .allow_ports
        .iter()
        .chain(&u.remove_ports)
        .find(|p| **p == 0)
    {
        return Err(format!("port {p} is not a UDP port (1-65535)"));
    }
    if let Some(g) = u
        .allow_groups
        .iter()
        .chain(&u.remove_groups)
        .find(|g| !g.is_multicast())
    {
        return Err(format!(
            "{g} is not a multicast group (224.0.0.0 to 239.255.255.255)"
        ));
    }
    if u.rate_packets_per_s == Some(0) {
        return Err("rate_packets_per_s must be at least 1".into());
    }
    if u.rate_bytes_per_s.is_some_and(|b| b < 1500) {
        return Err("rate_bytes_per_s must be at least 1500 (one full packet)".into());
    }
    s.all = u.all.unwrap_or(s.all);
    s.physical = u.physical.unwrap_or(s.physical);
    s.ports.extend(&u.allow_ports);
    for p in &u.remove_ports {
        s.ports.remove(p);
    }
    s.groups.extend(&u.allow_groups);
    for g in &u.remove_groups {
        s.groups.remove(g);
    }
    s.rate_packets = u.rate_packets_per_s.unwrap_or(s.rate_packets);
    s.rate_bytes = u.rate_bytes_per_s.unwrap_or(s.rate_bytes);
    Ok(s)
}

/// What should be routed into the TUN; `None` while there is no TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteWant {
    /// Which TUN (counting from 1 as each is created): a new one has none of the routes.
    pub tun: u64,
    pub all: bool,
    pub groups: BTreeSet<Ipv4Addr>,
}

impl RouteWant {
    fn prefixes(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::from(["255.255.255.255/32".to_owned()]);
        if self.all {
            out.insert("224.0.0.0/4".to_owned());
        } else {
            out.extend(self.groups.iter().map(|g| format!("{g}/32")));
        }
        out
    }
}

/// Keeps the routes in line with the wanted set, one change at a time, until the sender
/// is dropped. Runs `ip route` (iproute2) off the data-plane task.
pub fn spawn_route_sync(mut rx: watch::Receiver<Option<RouteWant>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut installed: BTreeSet<String> = BTreeSet::new();
        let mut installed_tun = 0;
        loop {
            let want = rx.borrow_and_update().clone();
            let wanted = want.as_ref().map(RouteWant::prefixes).unwrap_or_default();
            let tun = want.as_ref().map_or(0, |w| w.tun);
            if tun != installed_tun {
                // The interface is gone or new: its routes went with the old one.
                installed.clear();
                installed_tun = tun;
            }
            let add: Vec<String> = wanted.difference(&installed).cloned().collect();
            let del: Vec<String> = installed.difference(&wanted).cloned().collect();
            if !add.is_empty() || !del.is_empty() {
                let done = tokio::task::spawn_blocking(move || apply_routes(&add, &del)).await;
                if let Ok(failed) = done {
                    installed = wanted;
                    for prefix in failed {
                        installed.remove(&prefix);
                    }
                }
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    })
}

/// Adds and deletes routes; returns the prefixes that could not be added.
fn apply_routes(add: &[String], del: &[String]) -> Vec<String> {
    for prefix in del {
        let _ = std::process::Command::new("ip")
            .args(["route", "del", prefix, "dev", TUN_NAME])
            .output();
    }
    let mut failed = Vec::new();
    for prefix in add {
        let out = std::process::Command::new("ip")
            .args(["route", "replace", prefix, "dev", TUN_NAME])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                tracing::debug!(%prefix, "routed into {TUN_NAME}");
            }
            Ok(o) => {
                tracing::warn!(
                    %prefix,
                    error = %String::from_utf8_lossy(&o.stderr).trim(),
                    "could not route LAN traffic into {TUN_NAME}"
                );
                failed.push(prefix.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not run `ip route` (is iproute2 installed?)");
                failed.push(prefix.clone());
            }
        }
    }
    failed
}

/// Ethernet header length: the IP packet starts after it.
const ETH_HEADER: usize = 14;

/// The physical catch: a reader thread handing IPv4 packets to the data plane. It blocks
/// on the packet socket for at most [`READ_TIMEOUT`] at a time, so it notices within that
/// when it is dropped.
pub struct PhysicalCapture {
    stop: Arc<AtomicBool>,
}

/// How long the reader waits for a frame before checking whether it should stop.
const READ_TIMEOUT: Duration = Duration::from_millis(250);

impl Drop for PhysicalCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PhysicalCapture {
    /// Opens the packet socket (needs CAP_NET_RAW) and starts reading.
    pub fn start(tx: mpsc::Sender<Vec<u8>>) -> std::io::Result<Self> {
        // ETH_P_ALL in network byte order: outgoing frames are seen only by such sockets.
        let all = i32::from(0x0003u16.to_be());
        let socket = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(all)))?;
        socket.attach_filter(&outgoing_udp_broadcast_filter())?;
        socket.set_read_timeout(Some(READ_TIMEOUT))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("lan-physical".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while !stopped.load(Ordering::Relaxed) && !tx.is_closed() {
                    match (&socket).read(&mut buf) {
                        Ok(n) if n > ETH_HEADER => {
                            // A full queue drops, as a busy link would.
                            let _ = tx.try_send(buf[ETH_HEADER..n].to_vec());
                        }
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock
                                    | std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "physical capture read failed");
                            break;
                        }
                    }
                }
            })?;
        Ok(Self { stop })
    }
}

/// Classic BPF (Linux `Documentation/networking/filter.rst`): accept outgoing frames on
/// Ethernet devices whose destination MAC is group-addressed (broadcast or multicast) and
/// that carry IPv4 UDP; drop everything else in the kernel.
fn outgoing_udp_broadcast_filter() -> [SockFilter; 12] {
    const LD_W_ABS: u16 = 0x20;
    const LD_H_ABS: u16 = 0x28;
    const LD_B_ABS: u16 = 0x30;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    const SKF_AD_OFF: u32 = 0xffff_f000; // -0x1000: the ancillary data area
    const SKF_AD_PKTTYPE: u32 = 4;
    const SKF_AD_HATYPE: u32 = 28;
    const PACKET_OUTGOING: u32 = 4;
    const ARPHRD_ETHER: u32 = 1;
    const ETH_P_IP: u32 = 0x0800;
    const IPPROTO_UDP: u32 = 17;
    // Instruction 11 drops; each `jf` below is the distance to it.
    [
        SockFilter::new(LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE),
        SockFilter::new(JEQ_K, 0, 9, PACKET_OUTGOING),
        SockFilter::new(LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_HATYPE),
        SockFilter::new(JEQ_K, 0, 7, ARPHRD_ETHER),
        SockFilter::new(LD_H_ABS, 0, 0, 12), // EtherType
        SockFilter::new(JEQ_K, 0, 5, ETH_P_IP),
        SockFilter::new(LD_B_ABS, 0, 0, 0), // first byte of the destination MAC
        SockFilter::new(JSET_K, 0, 3, 1),   // the group bit
        SockFilter::new(LD_B_ABS, 0, 0, 23), // IPv4 protocol (14 + 9)
        SockFilter::new(JEQ_K, 0, 1, IPPROTO_UDP),
        SockFilter::new(RET_K, 0, 0, 0xffff),
        SockFilter::new(RET_K, 0, 0, 0),
    ]
}
