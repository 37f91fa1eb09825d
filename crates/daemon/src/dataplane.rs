//! The data plane: the TUN device, the one UDP socket and the mesh node, in one task.
//!
//! Every datagram on the socket is classified by its first byte (`lanrage_core::classify`);
//! WireGuard goes to the node, STUN and TURN ChannelData are counted until ICE and the relay
//! client claim them. The task owns the node, so no lock is ever held around it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use gotatun::x25519::StaticSecret;
use lanrage_core::games;
use lanrage_core::lifetime::Lifetime;
use lanrage_core::portmap::{Mapping, PortMapper};
use lanrage_core::stun::{NatProbe, NatReport};
use lanrage_core::turn::pick::RelayPicker;
use lanrage_core::turn::{Credentials, TurnClient};
use lanrage_core::{Node, PacketClass, PeerStats, Route, classify};
use lanrage_proto::DeviceKey;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tun_rs::{AsyncDevice, DeviceBuilder};

/// Name of the TUN interface.
pub const TUN_NAME: &str = "lanrage0";
/// Largest datagram read: a 1500-byte underlay plus slack for jumbo frames.
const RECV_BUF: usize = 65_536;
/// How often the NAT is probed again (public addresses and mappings change: DHCP, roaming,
/// router reboots).
const NAT_REPROBE: std::time::Duration = std::time::Duration::from_secs(300);
/// Packets taken from one ready source before the others get a turn; draining a burst in
/// one go saves a task wake-up per packet.
const BATCH: usize = 64;
/// Relays one daemon holds an allocation on: the second is the fallback when the first
/// fails, and lets each peer pair pick the faster of two.
const MAX_TURN: usize = 2;
/// A punching socket not sent on for this long is closed (the one that found a path is
/// probed every few seconds at least, so it stays).
const SPARE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// Datagrams from punching sockets waiting for the data-plane task.
const SPARE_QUEUE: usize = 256;
/// Within a batch of bulk packets, the game socket is looked at every this many.
const GAME_CHECK: usize = 16;
/// DSCP EF (46) in the IPv4 TOS byte.
const TOS_EF: u32 = 46 << 2;
/// Packets caught on the physical interface waiting for the data-plane task.
const PHYSICAL_QUEUE: usize = 256;

/// One peer the data plane should have (checked by `lanrage_core::party::check_view`).
pub use lanrage_core::party::CheckedPeer as PeerConfig;

/// What the data plane reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub peers: Vec<PeerStats>,
    /// The last NAT probe's result (`None` without STUN servers or before the first).
    pub nat: Option<NatReport>,
    pub dropped_spoofed: u64,
    /// The mesh node's counters: drops by reason, and handshakes cookied or dropped by
    /// the flood defence.
    pub wg_counters: lanrage_core::Counters,
    pub interface: Option<String>,
    /// TURN relayed addresses held now (candidates for peers).
    pub relayed: Vec<SocketAddr>,
    /// The server-reflexive address: the last probe's, else the first answer of the
    /// probe under way (published before the filtering tests end).
    pub public_addr: Option<SocketAddr>,
    /// The port mapping the home router granted (PCP or NAT-PMP), while it holds.
    pub port_mapping: Option<Mapping>,
    /// Where port mapping is asked for: the default gateway (`None` when disabled or
    /// there is no default route).
    pub gateway: Option<Ipv4Addr>,
    /// How long the NAT keeps an idle binding, as measured so far.
    pub binding_lifetime: Option<Lifetime>,
    /// How often paths that only need their binding held are probed.
    pub keepalive: std::time::Duration,
    /// The interface MTU in force.
    pub mtu: u16,
    /// The running games' tuning.
    pub games: Option<lanrage_core::games::Tuning>,
}

enum Command {
    /// Bring the TUN up with this address and make the peer set exactly `peers`.
    SetParty {
        virtual_ip: Ipv4Addr,
        prefix: u8,
        peers: Vec<PeerConfig>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    /// Remove every peer, the relay allocations and the TUN.
    Clear {
        reply: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<Snapshot>,
    },
    /// What LAN emulation forwards (applies to the next packet).
    SetLan(lanrage_core::lan::Settings),
    /// The running games' tuning (`None`: no game runs; undo everything).
    SetGames(Option<lanrage_core::games::Tuning>),
    /// LAN emulation's settings, counters and trace.
    Lan {
        reply: oneshot::Sender<LanView>,
    },
    /// STUN servers (besides the configured ones) and TURN servers with credentials.
    SetIce {
        stun: Vec<SocketAddr>,
        turn: Vec<(SocketAddr, Credentials)>,
    },
}

/// LAN emulation as the data plane sees it.
#[derive(Debug, Clone)]
pub struct LanView {
    pub settings: lanrage_core::lan::Settings,
    pub ports: std::collections::BTreeSet<u16>,
    pub groups: std::collections::BTreeSet<Ipv4Addr>,
    pub profile_ports: std::collections::BTreeSet<u16>,
    pub joined: std::collections::BTreeSet<Ipv4Addr>,
    pub counters: lanrage_core::lan::Counters,
    pub trace: Vec<lanrage_core::lan::Event>,
    /// The instant the view was taken, for dating the trace.
    pub now: Instant,
    pub physical: bool,
    pub physical_error: Option<String>,
}

/// A handle to the data-plane task.
#[derive(Clone)]
pub struct DataPlane {
    tx: mpsc::Sender<Command>,
    pub port: u16,
}

impl DataPlane {
    /// Binds the UDP socket and starts the task; it stops when every handle is dropped.
    pub async fn start(
        secret: StaticSecret,
        port: u16,
        mtu: u16,
        stun_servers: Vec<SocketAddr>,
        port_mapping: bool,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let (socket, game_socket) = bind_sockets(port).with_context(|| {
            format!("binding UDP port {port} (is another LANrage daemon running?)")
        })?;
        let port = socket.local_addr()?.port();
        let seed = u64::from_le_bytes(rand::random());
        let mut node = Node::new(secret, seed, Instant::now());
        node.set_mtu(mtu);
        let (tx, rx) = mpsc::channel(16);
        let (spare_tx, spare_rx) = mpsc::channel(SPARE_QUEUE);
        let (physical_tx, physical_rx) = mpsc::channel(PHYSICAL_QUEUE);
        let (routes, routes_rx) = watch::channel(None);
        let route_sync = crate::lan::spawn_route_sync(routes_rx);
        let now = Instant::now();
        let task = Task {
            node,
            socket: Arc::new(socket),
            game_socket: game_socket.map(Arc::new),
            game_buf: vec![0u8; RECV_BUF],
            tun: None,
            mtu,
            games: None,
            rx,
            probe: (!stun_servers.is_empty())
                .then(|| NatProbe::new(&stun_servers, port, seed ^ 0x5354_554e, now)),
            next_probe: now + NAT_REPROBE,
            configured_stun: stun_servers.clone(),
            stun_servers,
            nat: None,
            turn: Vec::new(),
            peer_ips: Vec::new(),
            spare: HashMap::new(),
            spare_tx,
            spare_rx,
            port_mapping,
            portmap: None,
            lifetime: None,
            binding: None,
            offered_turn: Vec::new(),
            picker: RelayPicker::default(),
            igd: None,
            routes,
            route_sync,
            physical: None,
            physical_error: None,
            physical_tx,
            physical_rx,
            tuns_created: 0,
        };
        let handle = tokio::spawn(task.run());
        Ok((Self { tx, port }, handle))
    }

    pub async fn set_party(
        &self,
        virtual_ip: Ipv4Addr,
        prefix: u8,
        peers: Vec<PeerConfig>,
    ) -> anyhow::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::SetParty {
                virtual_ip,
                prefix,
                peers,
                reply,
            })
            .await
            .context("the data plane has stopped")?;
        rx.await.context("the data plane has stopped")?
    }

    /// Uses these STUN and TURN servers (from the control plane) from now on.
    pub async fn set_ice(&self, stun: Vec<SocketAddr>, turn: Vec<(SocketAddr, Credentials)>) {
        let _ = self.tx.send(Command::SetIce { stun, turn }).await;
    }

    pub async fn clear(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Clear { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Changes what LAN emulation forwards.
    pub async fn set_lan(&self, settings: lanrage_core::lan::Settings) {
        let _ = self.tx.send(Command::SetLan(settings)).await;
    }

    /// Applies the running games' tuning, or undoes it with `None`.
    pub async fn set_games(&self, tuning: Option<lanrage_core::games::Tuning>) {
        let _ = self.tx.send(Command::SetGames(tuning)).await;
    }

    /// LAN emulation's state; `None` when the data plane has stopped.
    pub async fn lan(&self) -> Option<LanView> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Lan { reply }).await.ok()?;
        rx.await.ok()
    }

    pub async fn stats(&self) -> Snapshot {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Stats { reply }).await.is_err() {
            return Snapshot::default();
        }
        rx.await.unwrap_or_default()
    }
}

struct Tun {
    dev: AsyncDevice,
    /// Counts the TUNs this task created.
    generation: u64,
    ip: Ipv4Addr,
    prefix: u8,
}

struct Task {
    node: Node,
    socket: Arc<UdpSocket>,
    /// The game socket: bound to the same port, sends with DSCP EF, and receives what
    /// arrives marked EF (a reuseport BPF program picks it), so a game's packets never
    /// wait behind a queue of bulk traffic in the kernel. `None` where the kernel
    /// refused it.
    game_socket: Option<Arc<UdpSocket>>,
    game_buf: Vec<u8>,
    tun: Option<Tun>,
    /// The configured MTU (a game's profile may lower it while it runs).
    mtu: u16,
    /// The running games' tuning.
    games: Option<lanrage_core::games::Tuning>,
    rx: mpsc::Receiver<Command>,
    /// `--stun` servers; the control plane's are added to them.
    configured_stun: Vec<SocketAddr>,
    stun_servers: Vec<SocketAddr>,
    /// One client per relay in use.
    turn: Vec<TurnClient>,
    /// IPs of every peer candidate: the TURN permissions.
    peer_ips: Vec<std::net::IpAddr>,
    /// The NAT probe round in progress.
    probe: Option<NatProbe>,
    next_probe: Instant,
    nat: Option<NatReport>,
    /// Extra sockets for birthday punching (`Route::Socket`), opened on first use.
    spare: HashMap<u16, Spare>,
    spare_tx: mpsc::Sender<(u16, SocketAddr, Vec<u8>)>,
    spare_rx: mpsc::Receiver<(u16, SocketAddr, Vec<u8>)>,
    /// Whether to ask the default gateway for a port mapping.
    port_mapping: bool,
    portmap: Option<PortMapper>,
    /// The binding lifetime measurement (started after the first NAT probe).
    lifetime: Option<crate::binding::Measurement>,
    binding: Option<Lifetime>,
    /// Every TURN server the control plane offers, best first.
    offered_turn: Vec<(SocketAddr, Credentials)>,
    /// Which of them to use, remembering the ones that failed.
    picker: RelayPicker,
    /// UPnP IGD, tried when the gateway answers neither PCP nor NAT-PMP.
    igd: Option<crate::igd::IgdMapper>,
    /// The broadcast and multicast routes wanted in the TUN (see `crate::lan`).
    routes: watch::Sender<Option<crate::lan::RouteWant>>,
    route_sync: tokio::task::JoinHandle<()>,
    /// The physical-interface catch, while LAN emulation wants it.
    physical: Option<crate::lan::PhysicalCapture>,
    physical_error: Option<String>,
    physical_tx: mpsc::Sender<Vec<u8>>,
    physical_rx: mpsc::Receiver<Vec<u8>>,
    tuns_created: u64,
}

/// One punching socket: its receive loop hands WireGuard datagrams to the task.
struct Spare {
    socket: Arc<UdpSocket>,
    last_send: Instant,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Spare {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Spare {
    fn open(index: u16, tx: mpsc::Sender<(u16, SocketAddr, Vec<u8>)>) -> std::io::Result<Self> {
        let std = std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        std.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std)?);
        let reader_socket = Arc::clone(&socket);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; RECV_BUF];
            loop {
                match reader_socket.recv_from(&mut buf).await {
                    Ok((n, from)) if classify(&buf[..n]) == PacketClass::WireGuard => {
                        // A full queue drops, as a busy socket would.
                        let _ = tx.try_send((index, from, buf[..n].to_vec()));
                    }
                    Ok(_) | Err(_) => {}
                }
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(Self {
            socket,
            last_send: Instant::now(),
            reader,
        })
    }
}

impl Task {
    async fn run(mut self) {
        self.find_gateway(Instant::now());
        let mut udp_buf = vec![0u8; RECV_BUF];
        let mut tun_buf = vec![0u8; RECV_BUF];
        loop {
            self.drain_game_socket();
            let deadline = tokio::time::Instant::from_std(self.poll_timeout());
            tokio::select! {
                r = recv_game(self.game_socket.as_deref(), &mut self.game_buf) => match r {
                    Ok((n, from)) => {
                        let data = self.game_buf[..n].to_vec();
                        self.datagram(&data, from);
                    }
                    Err(e) => tracing::trace!(error = %e, "game socket receive error"),
                },
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    self.command(cmd);
                }
                r = self.socket.recv_from(&mut udp_buf) => match r {
                    Ok((n, from)) => {
                        self.datagram(&udp_buf[..n], from);
                        for i in 1..BATCH {
                            if i % GAME_CHECK == 0 {
                                self.drain_game_socket();
                            }
                            match self.socket.try_recv_from(&mut udp_buf) {
                                Ok((n, from)) => self.datagram(&udp_buf[..n], from),
                                Err(_) => break,
                            }
                        }
                    }
                    // ICMP errors (port unreachable) surface here on Linux; not fatal.
                    Err(e) => tracing::trace!(error = %e, "udp receive error"),
                },
                Some(packet) = self.physical_rx.recv() => {
                    let now = Instant::now();
                    self.node.handle_physical_packet(&packet, now);
                    while let Ok(packet) = self.physical_rx.try_recv() {
                        self.node.handle_physical_packet(&packet, now);
                    }
                }
                Some((index, from, data)) = self.spare_rx.recv() => {
                    let now = Instant::now();
                    self.node.handle_datagram(Route::Socket { index, peer: from }, &data, now);
                    while let Ok((index, from, data)) = self.spare_rx.try_recv() {
                        self.node.handle_datagram(Route::Socket { index, peer: from }, &data, now);
                    }
                }
                r = recv_tun(self.tun.as_ref(), &mut tun_buf) => match r {
                    Ok(n) => {
                        let now = Instant::now();
                        self.node.handle_tun_packet(&tun_buf[..n], now);
                        for i in 1..BATCH {
                            if i % GAME_CHECK == 0 {
                                self.drain_game_socket();
                            }
                            let Some(tun) = &self.tun else { break };
                            match tun.dev.try_recv(&mut tun_buf) {
                                Ok(n) => self.node.handle_tun_packet(&tun_buf[..n], now),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TUN read failed; closing the interface");
                        self.tun = None;
                    }
                },
                () = tokio::time::sleep_until(deadline) => self.timeout(Instant::now()),
            }
            self.sync_lan();
            self.flush().await;
        }

        // Hand the port back rather than leave it forwarded for the lease's hours.
        let release = self
            .portmap
            .as_mut()
            .and_then(|pm| Some((pm.server(), pm.release()?)));
        if let Some((server, bytes)) = release {
            self.send_udp(&bytes, server).await;
        }
        if let Some(igd) = self.igd.take() {
            igd.release().await;
        }
        // The routes go with the interface; let a change under way finish.
        self.physical = None;
        let Task {
            routes, route_sync, ..
        } = self;
        drop(routes);
        let _ = route_sync.await;
        tracing::debug!("data plane stopped");
    }

    /// Brings the OS in line with LAN emulation: routes into the TUN, and the physical
    /// catch on or off. Cheap when nothing changed.
    fn sync_lan(&mut self) {
        let lan = self.node.lan();
        let want = self.tun.as_ref().map(|t| crate::lan::RouteWant {
            tun: t.generation,
            all: lan.settings().all,
            groups: lan.groups(),
        });
        self.routes.send_if_modified(|current| {
            let changed = *current != want;
            if changed {
                current.clone_from(&want);
            }
            changed
        });
        let physical = self.tun.is_some() && lan.wants_physical();
        if physical && self.physical.is_none() && self.physical_error.is_none() {
            match crate::lan::PhysicalCapture::start(self.physical_tx.clone()) {
                Ok(c) => {
                    tracing::info!("catching LAN discovery on the physical interfaces");
                    self.physical = Some(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot catch LAN discovery on the physical interfaces (needs CAP_NET_RAW)");
                    self.physical_error = Some(format!(
                        "cannot open a packet socket: {e} (run as root or grant CAP_NET_RAW)"
                    ));
                }
            }
        } else if !physical {
            self.physical = None;
            self.physical_error = None;
        }
    }

    fn poll_timeout(&self) -> Instant {
        let node = self.node.poll_timeout();
        let stun = match &self.probe {
            Some(p) => p.poll_timeout().unwrap_or(node),
            None if self.stun_servers.is_empty() => node,
            None => self.next_probe,
        };
        let others = self
            .turn
            .iter()
            .filter_map(TurnClient::poll_timeout)
            .chain(self.portmap.as_ref().and_then(PortMapper::poll_timeout));
        others.fold(node.min(stun), Instant::min)
    }

    fn timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        for t in &mut self.turn {
            let had = t.relayed();
            t.handle_timeout(now);
            if t.relayed() != had {
                t.set_peers(self.peer_ips.iter().copied(), now);
            }
        }
        let port = self.local_port();
        if let Some(pm) = &mut self.portmap {
            pm.handle_timeout(now);
            if self.igd.is_none() && pm.failures() > 0 && pm.mapping(now).is_none() {
                self.igd = Some(crate::igd::IgdMapper::start(
                    pm.gateway(),
                    pm.client(),
                    port,
                ));
            }
        }
        if self.probe.is_none() && !self.stun_servers.is_empty() && now >= self.next_probe {
            self.find_gateway(now);
            let seed = rand::random();
            self.probe = Some(NatProbe::new(
                &self.stun_servers,
                self.local_port(),
                seed,
                now,
            ));
        }
        if let Some(p) = &mut self.probe {
            p.handle_timeout(now);
        }
        self.finish_probe(now);
        self.track_lifetime();
        let mut failed = false;
        for t in &self.turn {
            if self.picker.observe(t.server(), t.relayed().is_some(), now) {
                tracing::warn!(relay = %t.server(), "TURN relay failed; trying the next one");
                failed = true;
            }
        }
        if failed {
            self.pick_relays(now);
        }
        self.spare
            .retain(|_, s| now.saturating_duration_since(s.last_send) < SPARE_IDLE);
    }

    /// Starts (or restarts, after the network changed) port mapping with the default
    /// gateway. Called at start and with every NAT probe.
    fn find_gateway(&mut self, now: Instant) {
        if !self.port_mapping {
            return;
        }
        let found = crate::net::default_gateway();
        let current = self.portmap.as_ref().map(|p| (p.gateway(), p.client()));
        if found == current {
            return;
        }
        self.igd = None;
        self.portmap = found.map(|(gateway, client)| {
            tracing::debug!(%gateway, %client, "asking the gateway for a port mapping");
            PortMapper::new(gateway, client, self.local_port(), rand::random(), now)
        });
    }

    /// The router's forward in force: PCP or NAT-PMP, else UPnP IGD.
    fn port_mapping(&self, now: Instant) -> Option<Mapping> {
        self.portmap
            .as_ref()
            .and_then(|p| p.mapping(now))
            .or_else(|| {
                let igd = self.igd.as_ref()?;
                let m = *igd.mapping.borrow();
                m.filter(|m| m.expires > now)
            })
    }

    /// Follows the binding lifetime measurement and sizes the keepalive from its result.
    fn track_lifetime(&mut self) {
        let Some(m) = &self.lifetime else { return };
        let found = *m.result.borrow();
        self.binding = found.or(self.binding);
        match found {
            Some(l) if l.done => self.size_keepalive(),
            // Nothing learned (the server cannot redirect answers, or went away): try
            // again with the next NAT probe.
            None if m.finished() => self.lifetime = None,
            _ => {}
        }
    }

    fn local_port(&self) -> u16 {
        self.socket.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    fn finish_probe(&mut self, now: Instant) {
        let Some(report) = self.probe.as_ref().and_then(NatProbe::report) else {
            return;
        };
        tracing::info!(mapping = ?report.mapping, public = ?report.public_addr, "NAT probed");
        if self.lifetime.is_none()
            && let Some(server) = self.stun_servers.first()
        {
            self.lifetime = Some(crate::binding::Measurement::start(*server));
        }
        self.node.set_nat(report.hint());
        self.nat = Some(report);
        self.probe = None;
        self.next_probe = now + NAT_REPROBE;
    }

    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        let now = Instant::now();
        if let Some(pm) = &mut self.portmap
            && from == pm.server()
        {
            if pm.handle_datagram(data, now) {
                match pm.mapping(now) {
                    Some(m) => tracing::info!(
                        protocol = m.protocol.as_str(),
                        external = %m.external,
                        "the router forwards a port to us"
                    ),
                    None => tracing::info!("the router's port mapping ended"),
                }
            }
            return;
        }
        let class = classify(data);
        match class {
            PacketClass::WireGuard => {
                self.node.handle_datagram(Route::Direct(from), data, now);
                return;
            }
            PacketClass::Stun if self.probe.is_some() => {
                if let Some(p) = &mut self.probe {
                    p.handle_response(from, data);
                }
                self.finish_probe(now);
            }
            _ => {}
        }
        if matches!(class, PacketClass::Stun | PacketClass::ChannelData)
            && let Some(t) = self.turn.iter_mut().find(|t| t.server() == from)
        {
            let had = t.relayed();
            let relayed = t.handle_datagram(data, now);
            if t.relayed() != had {
                t.set_peers(self.peer_ips.iter().copied(), now);
            }
            if let Some((peer, payload)) = relayed
                && classify(&payload) == PacketClass::WireGuard
            {
                let route = Route::Relay { server: from, peer };
                self.node.handle_datagram(route, &payload, now);
            }
            return;
        }
        if class != PacketClass::Stun {
            tracing::trace!(len = data.len(), "datagram with no consumer dropped");
        }
    }

    async fn send_udp(&self, payload: &[u8], dst: SocketAddr) {
        let sent = match self.socket.try_send_to(payload, dst) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.socket.send_to(payload, dst).await
            }
            other => other,
        };
        if let Err(e) = sent {
            tracing::trace!(error = %e, %dst, "udp send failed");
        }
    }

    /// Sends from punching socket `index`, opening it first if needed.
    fn send_spare(&mut self, index: u16, payload: &[u8], dst: SocketAddr, now: Instant) {
        let spare = match self.spare.entry(index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                match Spare::open(index, self.spare_tx.clone()) {
                    Ok(s) => v.insert(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "punching socket not opened");
                        return;
                    }
                }
            }
        };
        spare.last_send = now;
        // Best effort: a full send buffer drops the packet, as the network might.
        if let Err(e) = spare.socket.try_send_to(payload, dst) {
            tracing::trace!(error = %e, %dst, "punching send failed");
        }
    }

    fn set_ice(
        &mut self,
        stun: Vec<SocketAddr>,
        turn: Vec<(SocketAddr, Credentials)>,
        now: Instant,
    ) {
        let mut servers = self.configured_stun.clone();
        for s in stun {
            if !servers.contains(&s) {
                servers.push(s);
            }
        }
        if servers != self.stun_servers {
            self.stun_servers = servers;
            self.probe = None;
            self.next_probe = now;
        }
        self.offered_turn = turn;
        self.pick_relays(now);
    }

    /// Holds allocations on the best [`MAX_TURN`] offered relays, skipping ones that failed
    /// recently unless nothing else is offered.
    fn pick_relays(&mut self, now: Instant) {
        let offered: Vec<SocketAddr> = self.offered_turn.iter().map(|(a, _)| *a).collect();
        let held: Vec<SocketAddr> = self.turn.iter().map(TurnClient::server).collect();
        let wanted = self.picker.choose(&offered, &held, MAX_TURN, now);
        self.turn.retain(|t| wanted.contains(&t.server()));
        for addr in wanted {
            let Some((_, creds)) = self.offered_turn.iter().find(|(a, _)| *a == addr) else {
                continue;
            };
            // Credentials of another user id (another party's membership): the old
            // allocation was revoked with that membership, so allocate afresh.
            let user = |c: &Credentials| {
                lanrage_core::turn::parse_rest_username(&c.username).map(|(_, id)| id.to_owned())
            };
            if let Some(i) = self
                .turn
                .iter()
                .position(|t| t.server() == addr && user(t.credentials()) != user(creds))
            {
                tracing::debug!(relay = %addr, "new membership: a new relay allocation");
                self.turn.swap_remove(i);
            }
            match self.turn.iter_mut().find(|t| t.server() == addr) {
                Some(t) => t.set_credentials(creds.clone()),
                None => {
                    tracing::info!(relay = %addr, "using TURN relay");
                    self.turn
                        .push(TurnClient::new(addr, creds.clone(), rand::random(), now));
                }
            }
        }
    }

    async fn flush(&mut self) {
        while let Some((dst, bytes)) = self.probe.as_mut().and_then(NatProbe::poll_transmit) {
            if let Err(e) = self.socket.send_to(&bytes, dst).await {
                tracing::debug!(error = %e, %dst, "STUN request not sent");
            }
        }
        if let Some(pm) = &mut self.portmap {
            let server = pm.server();
            let mut out = Vec::new();
            while let Some(bytes) = pm.poll_transmit() {
                out.push(bytes);
            }
            for bytes in out {
                self.send_udp(&bytes, server).await;
            }
        }
        let now = Instant::now();
        while let Some(t) = self.node.poll_transmit() {
            if t.priority
                && let Some(game) = &self.game_socket
            {
                let framed = match t.dst {
                    Route::Direct(dst) => Some((t.payload.clone(), dst)),
                    Route::Relay { server, peer } => self
                        .turn
                        .iter_mut()
                        .find(|c| c.server() == server)
                        .and_then(|c| c.send(peer, &t.payload, now))
                        .map(|f| (f, server)),
                    Route::Socket { .. } => None,
                };
                if let Some((bytes, dst)) = framed {
                    if let Err(e) = game.try_send_to(&bytes, dst) {
                        tracing::trace!(error = %e, %dst, "game send failed");
                    }
                    continue;
                }
            }
            match t.dst {
                Route::Direct(dst) => self.send_udp(&t.payload, dst).await,
                Route::Socket { index, peer } => self.send_spare(index, &t.payload, peer, now),
                Route::Relay { server, peer } => {
                    let framed = self
                        .turn
                        .iter_mut()
                        .find(|c| c.server() == server)
                        .and_then(|c| c.send(peer, &t.payload, now));
                    if let Some(framed) = framed {
                        self.send_udp(&framed, server).await;
                    }
                }
            }
        }
        for i in 0..self.turn.len() {
            let server = self.turn[i].server();
            while let Some(bytes) = self.turn[i].poll_transmit() {
                self.send_udp(&bytes, server).await;
            }
        }
        while let Some(p) = self.node.poll_tun() {
            let Some(tun) = &self.tun else { continue };
            let written = match tun.dev.try_send(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tun.dev.send(&p).await,
                other => other,
            };
            if let Err(e) = written {
                tracing::trace!(error = %e, "TUN write failed");
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::SetParty {
                virtual_ip,
                prefix,
                peers,
                reply,
            } => {
                let result = self.ensure_tun(virtual_ip, prefix);
                if result.is_ok() {
                    self.node.set_local(Some((virtual_ip, prefix)));
                    let wanted: Vec<DeviceKey> = peers.iter().map(|p| p.key).collect();
                    let stale: Vec<DeviceKey> = self
                        .node
                        .peer_keys()
                        .filter(|k| !wanted.contains(k))
                        .copied()
                        .collect();
                    for key in stale {
                        self.node.remove_peer(&key);
                    }
                    let mut ips: Vec<std::net::IpAddr> = peers
                        .iter()
                        .flat_map(|p| {
                            // Peers send to our relayed address from their own addresses,
                            // never from their relays.
                            p.candidates
                                .iter()
                                .filter(|c| !p.relayed.contains(c))
                                .map(SocketAddr::ip)
                        })
                        .collect();
                    ips.sort_unstable();
                    ips.dedup();
                    if ips != self.peer_ips {
                        for t in &mut self.turn {
                            t.set_peers(ips.iter().copied(), now);
                        }
                        self.peer_ips = ips;
                    }
                    for p in peers {
                        let (key, nat) = (p.key, p.nat);
                        self.node
                            .upsert_peer(key, p.virtual_ip, p.candidates, p.relayed, now);
                        self.node.set_peer_nat(&key, nat);
                    }
                }
                let _ = reply.send(result);
            }
            Command::Clear { reply } => {
                let keys: Vec<DeviceKey> = self.node.peer_keys().copied().collect();
                for key in keys {
                    self.node.remove_peer(&key);
                }
                self.node.set_local(None);
                self.spare.clear();
                // Relay credentials belong to the membership that ended (the relay has
                // revoked them); the next party brings its own.
                self.offered_turn.clear();
                self.turn.clear();
                self.tun = None; // closing the descriptor deletes the interface
                let _ = reply.send(());
            }
            Command::Stats { reply } => {
                let _ = reply.send(Snapshot {
                    nat: self.nat.clone(),
                    peers: self.node.peer_stats(now),
                    dropped_spoofed: self.node.counters().dropped_spoofed,
                    wg_counters: self.node.counters(),
                    interface: self.tun.as_ref().map(|_| TUN_NAME.to_owned()),
                    relayed: self.turn.iter().filter_map(TurnClient::relayed).collect(),
                    public_addr: self
                        .nat
                        .as_ref()
                        .and_then(|n| n.public_addr)
                        .or_else(|| self.probe.as_ref().and_then(NatProbe::public_addr)),
                    port_mapping: self.port_mapping(now),
                    gateway: self.portmap.as_ref().map(PortMapper::gateway),
                    binding_lifetime: self.binding,
                    keepalive: self.node.keepalive(),
                    mtu: self.effective_mtu(),
                    games: self.games.clone(),
                });
            }
            Command::SetIce { stun, turn } => self.set_ice(stun, turn, now),
            Command::SetLan(settings) => self.node.lan_mut().set_settings(settings),
            Command::SetGames(tuning) => self.set_games(tuning),
            Command::Lan { reply } => {
                let lan = self.node.lan();
                let _ = reply.send(LanView {
                    settings: lan.settings().clone(),
                    ports: lan.ports(),
                    groups: lan.groups(),
                    profile_ports: lan.profile().ports.clone(),
                    joined: lan.joined().clone(),
                    counters: lan.counters(),
                    trace: lan.trace().cloned().collect(),
                    now,
                    physical: self.physical.is_some(),
                    physical_error: self.physical_error.clone(),
                });
            }
        }
    }

    /// The keepalive: sized from the measured binding lifetime; while a game runs, the
    /// game's own value or the NAT class's (never longer than the binding was seen to
    /// last).
    fn size_keepalive(&mut self) {
        let every = match &self.games {
            None => match self.binding {
                Some(l) if l.done => crate::binding::keepalive_for(&l),
                _ => return,
            },
            Some(t) => {
                let class = self.nat.as_ref().map_or(games::NatClass::Unknown, |n| {
                    games::NatClass::from_behaviour(n.mapping, n.filtering)
                });
                let dropped = self
                    .binding
                    .filter(|l| l.below.is_some())
                    .map(|l| (l.at_least / 2).max(std::time::Duration::from_secs(1)));
                games::keepalive(t.keepalive, class, dropped)
            }
        };
        if self.node.keepalive() != every {
            tracing::info!(keepalive_s = every.as_secs_f64(), "keepalive sized");
            self.node.set_keepalive(every);
        }
    }

    fn effective_mtu(&self) -> u16 {
        match self.games.as_ref().and_then(|t| t.mtu) {
            Some(m) => m.min(self.mtu),
            None => self.mtu,
        }
    }

    fn set_games(&mut self, tuning: Option<games::Tuning>) {
        let t = tuning.clone().unwrap_or_default();
        self.node.lan_mut().set_profile(t.lan);
        self.node.set_priority_ports(t.priority);
        let before = self.effective_mtu();
        let was_running = self.games.is_some();
        self.games = tuning;
        let mtu = self.effective_mtu();
        if mtu != before {
            self.node.set_mtu(mtu);
            if let Some(tun) = &self.tun
                && let Err(e) = tun.dev.set_mtu(mtu)
            {
                tracing::warn!(error = %e, mtu, "could not set the interface MTU for the game");
            }
            tracing::info!(mtu, "interface MTU set for the running games");
        }
        if self.games.is_none() && was_running {
            // Back to the measured keepalive, or the default before any measurement.
            let every = match self.binding {
                Some(l) if l.done => crate::binding::keepalive_for(&l),
                _ => lanrage_core::wg::DEFAULT_KEEPALIVE,
            };
            self.node.set_keepalive(every);
        } else {
            self.size_keepalive();
        }
    }

    /// Handles what waits on the game socket, before anything else.
    fn drain_game_socket(&mut self) {
        let Some(game) = self.game_socket.clone() else {
            return;
        };
        for _ in 0..BATCH {
            match game.try_recv_from(&mut self.game_buf) {
                Ok((n, from)) => {
                    let data = self.game_buf[..n].to_vec();
                    self.datagram(&data, from);
                }
                Err(_) => break,
            }
        }
    }

    fn ensure_tun(&mut self, ip: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
        if self
            .tun
            .as_ref()
            .is_some_and(|t| t.ip == ip && t.prefix == prefix)
        {
            return Ok(());
        }
        self.tun = None;
        remove_stale_interface()?;
        let dev = DeviceBuilder::new()
            .name(TUN_NAME)
            .ipv4(ip, prefix, None)
            .mtu(self.effective_mtu())
            .build_async()
            .with_context(|| {
                format!("creating the TUN device {TUN_NAME} (needs root or CAP_NET_ADMIN)")
            })?;
        disable_ipv6();
        tracing::info!(%ip, prefix, "interface {TUN_NAME} up");
        self.tuns_created += 1;
        self.tun = Some(Tun {
            dev,
            generation: self.tuns_created,
            ip,
            prefix,
        });
        Ok(())
    }
}

/// The party network is IPv4; without this the kernel would send router solicitations and
/// MLD reports into the tunnel, which the node can only drop.
fn disable_ipv6() {
    let path = format!("/proc/sys/net/ipv6/conf/{TUN_NAME}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(error = %e, "could not disable IPv6 on {TUN_NAME}");
    }
}

async fn recv_game(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Binds the data socket on `port` and, on the same port, the game socket (see
/// `Task::game_socket`). The port is first bound alone, so a port another program holds
/// is an error rather than a shared group.
fn bind_sockets(port: u16) -> std::io::Result<(UdpSocket, Option<UdpSocket>)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let open = |port: u16| -> std::io::Result<Socket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
        Ok(s)
    };
    if port != 0 {
        drop(std::net::UdpSocket::bind(SocketAddr::from((
            [0, 0, 0, 0],
            port,
        )))?);
    }
    let main = open(port)?;
    let port = main.local_addr()?.as_socket().map_or(port, |a| a.port());
    let game = open(port).and_then(|g| {
        g.set_tos_v4(TOS_EF)?;
        attach_ef_steering(&main)?;
        Ok(g)
    });
    let main = UdpSocket::from_std(main.into())?;
    match game {
        Ok(g) => Ok((main, Some(UdpSocket::from_std(g.into())?))),
        Err(e) => {
            tracing::info!(error = %e, "no game socket; game traffic is prioritised inside the daemon only");
            Ok((main, None))
        }
    }
}

/// Steers datagrams marked DSCP EF to the second socket of the port's reuseport group and
/// everything else to the first: a classic BPF program reading the IPv4 TOS byte.
fn attach_ef_steering(socket: &socket2::Socket) -> std::io::Result<()> {
    // SKF_NET_OFF: loads relative to the network header.
    const NET_OFF: i32 = -0x10_0000;
    let tos = u32::from_ne_bytes((NET_OFF + 1).to_ne_bytes());
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut program = [
        op(0x30, 0, 0, tos),    // ldb [net + 1]: the TOS byte
        op(0x54, 0, 0, 0xfc),   // and #0xfc: DSCP without ECN
        op(0x15, 0, 1, TOS_EF), // jeq #EF, to the game socket, else the main one
        op(0x06, 0, 0, 1),      // ret #1: the game socket
        op(0x06, 0, 0, 0),      // ret #0: the main socket
    ];
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).unwrap_or(0),
        filter: program.as_mut_ptr(),
    };
    nix::sys::socket::setsockopt(
        socket,
        nix::sys::socket::sockopt::AttachReusePortCbpf,
        &prog,
    )
    .map_err(std::io::Error::from)
}

async fn recv_tun(tun: Option<&Tun>, buf: &mut [u8]) -> std::io::Result<usize> {
    match tun {
        Some(t) => t.dev.recv(buf).await,
        None => std::future::pending().await,
    }
}

/// A `lanrage0` left behind (a persistent TUN from a crashed run, or a leftover of another
/// tool) would make creating ours fail or attach to foreign state: delete it first. One that
/// a live process in this network namespace holds open belongs to someone (another daemon):
/// leave it and say so.
fn remove_stale_interface() -> anyhow::Result<()> {
    if !std::path::Path::new("/sys/class/net")
        .join(TUN_NAME)
        .exists()
    {
        return Ok(());
    }
    if let Some(pid) = tun_holder_in_this_netns(TUN_NAME) {
        anyhow::bail!("{TUN_NAME} is in use by process {pid} (another LANrage daemon?)");
    }
    tracing::info!("removing a stale {TUN_NAME} interface");
    let status = std::process::Command::new("ip")
        .args(["link", "delete", TUN_NAME])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        tracing::warn!("could not delete the stale {TUN_NAME}; creating it may fail");
    }
    Ok(())
}

/// The process, in this network namespace, with a TUN descriptor for `name` open: the
/// kernel shows `iff:\t<name>` in such a descriptor's fdinfo.
fn tun_holder_in_this_netns(name: &str) -> Option<u32> {
    let me = std::process::id();
    let my_ns = std::fs::read_link("/proc/self/ns/net").ok()?;
    let needle = format!("iff:\t{name}\n");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let ns = std::fs::read_link(entry.path().join("ns/net")).ok();
        if pid == me || ns.as_ref() != Some(&my_ns) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_to_string(fd.path()).is_ok_and(|info| info.contains(&needle)) {
                return Some(pid);
            }
        }
    }
    None
}
