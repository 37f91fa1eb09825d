//! The LANrage relay: a STUN server (RFC 8489 Binding; on two IPs and two ports it is the
//! RFC 5780 setup that lets daemons classify their NAT) and a TURN server (RFC 8656 UDP
//! subset, see [`turn`]) with TURN REST shared-secret credentials.
//!
//! The protocol steps are sans-IO ([`answer`] and [`turn::Server`]); [`serve`] is the UDP
//! shell around them, [`register`] announces the relay to a control plane, and [`metrics`]
//! serves its numbers to Prometheus.

pub mod metrics;
pub mod register;
pub mod turn;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use lanrage_core::stun;
use tokio::net::UdpSocket;

/// The reply to one datagram that arrived on `local`, if it deserves one, and which of
/// `sockets` sends it. Only Binding requests are answered; the answer is 44 bytes (56 for
/// IPv6) against a request of at least 20, so a spoofed source gains at most a small
/// reflection.
///
/// With sockets on two IPs and two ports (RFC 5780 §4.1), answers carry OTHER-ADDRESS and
/// CHANGE-REQUEST is honoured by answering from the other IP and/or port, which is how
/// clients test their NAT's filtering. A change this relay cannot make is not answered.
///
/// RFC 8489 §6.3.1: a request with a FINGERPRINT that does not match is dropped, one with
/// an unknown comprehension-required attribute gets 420 (at most 40 bytes). A classic RFC
/// 3489 request gets MAPPED-ADDRESS and CHANGED-ADDRESS (RFC 5389 §12.2), never sent
/// anywhere but back to its source (RESPONSE-ADDRESS is not honoured: a reflector).
pub fn answer(
    from: SocketAddr,
    local: SocketAddr,
    datagram: &[u8],
    sockets: &[SocketAddr],
) -> Option<turn::Transmit> {
    let request = stun::parse_request(datagram)?;
    let (change, response_port) = match &request {
        stun::ServerRequest::Binding {
            change,
            response_port,
            ..
        } => (*change, *response_port),
        stun::ServerRequest::Classic { change, .. } => (*change, None),
        stun::ServerRequest::Unknown { txid, attributes } => {
            return Some(turn::Transmit {
                from: local,
                to: from,
                payload: stun::unknown_attributes(*txid, attributes),
            });
        }
    };
    let other_ip = sockets
        .iter()
        .map(SocketAddr::ip)
        .find(|ip| *ip != local.ip());
    let other_port = sockets
        .iter()
        .map(SocketAddr::port)
        .find(|p| *p != local.port());
    let other = match (other_ip, other_port) {
        (Some(ip), Some(port)) => sockets
            .iter()
            .copied()
            .find(|s| s.ip() == ip && s.port() == port),
        _ => None,
    };
    let ip = if change.ip { other_ip? } else { local.ip() };
    let port = if change.port {
        other_port?
    } else {
        local.port()
    };
    let reply_from = sockets
        .iter()
        .copied()
        .find(|s| s.ip() == ip && s.port() == port)?;
    // RESPONSE-PORT redirects the answer to another port of the sender's own IP only.
    let to = SocketAddr::new(from.ip(), response_port.unwrap_or(from.port()));
    let payload = match request {
        stun::ServerRequest::Classic { txid, .. } => {
            stun::classic_binding_success(txid, from, other)
        }
        stun::ServerRequest::Binding { txid, .. } => stun::binding_success(txid, from, other),
        stun::ServerRequest::Unknown { .. } => return None,
    };
    Some(turn::Transmit {
        from: reply_from,
        to,
        payload,
    })
}

/// How a relay runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// STUN (and TURN) listen addresses.
    pub listen: Vec<SocketAddr>,
    /// TURN, when a secret is set.
    pub turn: Option<TurnOptions>,
}

/// The TURN half of a relay.
#[derive(Debug, Clone)]
pub struct TurnOptions {
    pub config: turn::Config,
    /// The IP relayed addresses are bound on and announced with.
    pub relay_ip: IpAddr,
    /// The relayed ports: one allocation per port.
    pub ports: RangeInclusive<u16>,
}

/// Most relay ports one relay binds (each is a socket and a task).
pub const MAX_RELAY_PORTS: usize = 4096;

/// What a running relay reports (for registration and metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Whether TURN runs (a secret was given); the TURN fields are zero otherwise.
    pub turn: bool,
    pub allocations: usize,
    /// How many more allocations the relay would grant: free ports within the relay-wide
    /// cap, 0 while draining.
    pub capacity: usize,
    /// Relay ports not allocated.
    pub free_ports: usize,
    /// Whether the relay refuses new allocations ([`Handle::drain`]).
    pub draining: bool,
    pub permissions: usize,
    pub channels: usize,
    pub counters: turn::Counters,
    /// STUN Binding requests answered.
    pub stun_answered: u64,
    /// Time since the relay bound its sockets.
    pub uptime: Duration,
}

/// A handle on a running relay's state.
#[derive(Clone)]
pub struct Handle {
    server: Option<Arc<Mutex<turn::Server>>>,
    shell: Arc<ShellStats>,
}

impl Handle {
    pub fn load(&self) -> Load {
        let mut load = Load {
            stun_answered: self.shell.stun_answered.load(Ordering::Relaxed),
            uptime: self.shell.started.elapsed(),
            ..Load::default()
        };
        if let Some(server) = &self.server {
            let s = lock(server);
            load.turn = true;
            load.allocations = s.allocations();
            load.capacity = s.capacity();
            load.free_ports = s.free_ports();
            load.draining = s.draining();
            load.permissions = s.permissions();
            load.channels = s.channels();
            load.counters = s.counters();
        }
        load
    }

    /// Drops every allocation of TURN user id `user` and refuses its credentials that
    /// expire at or before `until_unix` (see [`turn::Server::revoke`]). No-op without TURN.
    pub fn revoke(&self, user: &str, until_unix: u64) {
        if let Some(server) = &self.server {
            lock(server).revoke(user, until_unix);
        }
    }

    /// Refuses new allocations (508) from now on; existing ones go on. No-op without TURN.
    pub fn drain(&self) {
        if let Some(server) = &self.server {
            lock(server).drain();
        }
    }
}

/// What the UDP shell counts itself (the TURN server counts the rest).
struct ShellStats {
    started: Instant,
    stun_answered: AtomicU64,
}

fn lock(server: &Mutex<turn::Server>) -> std::sync::MutexGuard<'_, turn::Server> {
    // The server's state stays consistent between calls, so a panic elsewhere while the
    // lock was held leaves nothing half-done.
    server
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Shared {
    listen: Vec<(SocketAddr, Arc<UdpSocket>)>,
    relays: HashMap<SocketAddr, Arc<UdpSocket>>,
    server: Option<Arc<Mutex<turn::Server>>>,
    stats: Arc<ShellStats>,
}

impl Shared {
    fn socket(&self, addr: SocketAddr) -> Option<&Arc<UdpSocket>> {
        self.listen
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, s)| s)
            .or_else(|| self.relays.get(&addr))
    }
}

/// Binds every socket; the relay runs once [`Relay::run`] is awaited.
pub struct Relay {
    shared: Arc<Shared>,
}

impl Relay {
    pub async fn bind(options: &Options) -> anyhow::Result<Self> {
        let mut listen = Vec::new();
        for &addr in &options.listen {
            let socket = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding UDP {addr}"))?;
            let bound = socket.local_addr()?;
            listen.push((bound, Arc::new(socket)));
        }
        let mut relays = HashMap::new();
        let mut server = None;
        if let Some(t) = &options.turn {
            let count = t.ports.clone().count();
            if count == 0 || count > MAX_RELAY_PORTS {
                anyhow::bail!(
                    "--relay-ports must name between 1 and {MAX_RELAY_PORTS} ports (got {count})"
                );
            }
            if t.relay_ip.is_unspecified() {
                anyhow::bail!(
                    "relayed addresses need a reachable IP: listen on a specific IP or pass --relay-ip"
                );
            }
            for port in t.ports.clone() {
                let addr = SocketAddr::new(t.relay_ip, port);
                match UdpSocket::bind(addr).await {
                    Ok(s) => {
                        relays.insert(addr, Arc::new(s));
                    }
                    Err(e) => tracing::debug!(%addr, error = %e, "relay port unavailable"),
                }
            }
            if relays.is_empty() {
                anyhow::bail!(
                    "no relay port in {}-{} could be bound on {}",
                    t.ports.start(),
                    t.ports.end(),
                    t.relay_ip
                );
            }
            let addrs: Vec<SocketAddr> = relays.keys().copied().collect();
            let bound: Vec<SocketAddr> = listen.iter().map(|(a, _)| *a).collect();
            server = Some(Arc::new(Mutex::new(turn::Server::new(
                t.config.clone(),
                &own_addresses(&bound),
                &addrs,
                rand::random(),
            ))));
        }
        Ok(Self {
            shared: Arc::new(Shared {
                listen,
                relays,
                server,
                stats: Arc::new(ShellStats {
                    started: Instant::now(),
                    stun_answered: AtomicU64::new(0),
                }),
            }),
        })
    }

    /// The bound listen addresses.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.shared.listen.iter().map(|(a, _)| *a).collect()
    }

    pub fn handle(&self) -> Handle {
        Handle {
            server: self.shared.server.clone(),
            shell: Arc::clone(&self.shared.stats),
        }
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = tokio::task::JoinSet::new();
        for (addr, _) in &self.shared.listen {
            tracing::info!(%addr, turn = self.shared.server.is_some(), "relay listening");
        }
        if let Some(t) = &self.shared.server {
            let (limits, allow) = {
                let s = lock(t);
                let allow: Vec<String> = s
                    .config()
                    .allow_peers
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                (s.limits(), allow)
            };
            tracing::info!(
                relay_ports = self.shared.relays.len(),
                max_allocations = limits.total,
                user_quota = limits.user,
                ip_quota = limits.ip,
                party_quota = limits.party,
                allow_peers = ?allow,
                "TURN enabled"
            );
            let server = Arc::clone(t);
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    lock(&server).handle_timeout(Instant::now());
                }
            });
        }
        for i in 0..self.shared.listen.len() {
            tasks.spawn(run_listen(Arc::clone(&self.shared), i));
        }
        let relay_addrs: Vec<SocketAddr> = self.shared.relays.keys().copied().collect();
        for addr in relay_addrs {
            tasks.spawn(run_relay(Arc::clone(&self.shared), addr));
        }
        shutdown.await;
        tasks.shutdown().await;
    }
}

/// The relay's own addresses for the peer filter: its listen addresses and every address
/// of the host's interfaces at start, so a multi-homed relay (or one listening on 0.0.0.0)
/// cannot be made to reach services on any address of its own host.
fn own_addresses(listen: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut own: Vec<SocketAddr> = listen.to_vec();
    match nix::ifaddrs::getifaddrs() {
        Ok(ifaces) => own.extend(ifaces.filter_map(|i| {
            let a = i.address?;
            let ip: IpAddr = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => v4.ip().into(),
                (_, Some(v6)) => v6.ip().into(),
                _ => return None,
            };
            Some(SocketAddr::new(ip, 0))
        })),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the host's addresses; only the listen and relay IPs are refused as peers")
        }
    }
    own
}

/// Serves STUN on every address in `listen` until `shutdown` completes (no TURN).
pub async fn serve(
    listen: &[SocketAddr],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let relay = Relay::bind(&Options {
        listen: listen.to_vec(),
        turn: None,
    })
    .await?;
    relay.run(shutdown).await;
    Ok(())
}

async fn send(shared: &Shared, out: turn::Transmit) {
    let Some(socket) = shared.socket(out.from) else {
        return;
    };
    if let Err(e) = socket.send_to(&out.payload, out.to).await {
        tracing::trace!(error = %e, "send error");
    }
}

/// The next datagram; receive errors (ICMP unreachable surfacing on Linux) are skipped.
async fn recv(socket: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
    loop {
        match socket.recv_from(buf).await {
            Ok(r) => return r,
            Err(e) => tracing::trace!(error = %e, "receive error"),
        }
    }
}

async fn run_listen(shared: Arc<Shared>, index: usize) {
    let addrs: Vec<SocketAddr> = shared.listen.iter().map(|(a, _)| *a).collect();
    let (local, socket) = &shared.listen[index];
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = recv(socket, &mut buf).await;
        let datagram = &buf[..n];
        if let Some(reply) = answer(from, *local, datagram, &addrs) {
            shared.stats.stun_answered.fetch_add(1, Ordering::Relaxed);
            send(&shared, reply).await;
            continue;
        }
        let Some(server) = &shared.server else {
            continue;
        };
        let out = lock(server).handle_client(*local, from, datagram, Instant::now(), unix_now());
        if let Some(out) = out {
            send(&shared, out).await;
        }
    }
}

async fn run_relay(shared: Arc<Shared>, relay: SocketAddr) {
    let Some(socket) = shared.relays.get(&relay).cloned() else {
        return;
    };
    let Some(server) = shared.server.clone() else {
        return;
    };
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = recv(&socket, &mut buf).await;
        let out = lock(&server).handle_peer(relay, from, &buf[..n], Instant::now(), rand::random());
        if let Some(out) = out {
            send(&shared, out).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use lanrage_core::stun::Stun;

    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn answers_binding_requests_with_the_source_address() {
        let from = a("198.51.100.2:40000");
        let local = a("203.0.113.10:3478");
        let t = answer(from, local, &stun::binding_request([4; 12]), &[local]).expect("an answer");
        assert_eq!((t.from, t.to), (local, from));
        let reply = t.payload;
        assert_eq!(
            stun::parse(&reply),
            Some(Stun::BindingSuccess {
                txid: [4; 12],
                mapped: from,
                other: None,
            })
        );
        // RESPONSE-PORT: the answer goes to that port of the sender's IP, never elsewhere.
        let t = answer(
            from,
            local,
            &stun::binding_request_response_port([8; 12], 41000),
            &[local],
        )
        .expect("an answer");
        assert_eq!(t.to, a("198.51.100.2:41000"));
        assert!(matches!(
            stun::parse(&t.payload),
            Some(Stun::BindingSuccess { mapped, .. }) if mapped == from
        ));
        // Responses, garbage and empty datagrams get nothing back.
        assert_eq!(answer(from, local, &reply, &[local]), None);
        assert_eq!(answer(from, local, b"hello", &[local]), None);
        assert_eq!(answer(from, local, &[], &[local]), None);
        // A change a single-address relay cannot make is not answered.
        let change = stun::Change {
            ip: true,
            port: false,
        };
        assert_eq!(
            answer(
                from,
                local,
                &stun::binding_request_change([5; 12], change),
                &[local]
            ),
            None
        );
    }

    /// Two IPs × two ports, the RFC 5780 setup.
    fn rfc5780_sockets() -> [SocketAddr; 4] {
        [
            a("203.0.113.10:3478"),
            a("203.0.113.11:3478"),
            a("203.0.113.10:3479"),
            a("203.0.113.11:3479"),
        ]
    }

    #[test]
    fn rfc5780_changes_are_answered_from_the_other_addresses() {
        let from = a("198.51.100.2:40000");
        let socks = rfc5780_sockets();
        let local = socks[0];
        for (ip, port, expect) in [
            (false, false, socks[0]),
            (true, false, socks[1]),
            (false, true, socks[2]),
            (true, true, socks[3]),
        ] {
            let req = stun::binding_request_change([6; 12], stun::Change { ip, port });
            let t = answer(from, local, &req, &socks).expect("an answer");
            assert_eq!(t.from, expect, "change ip={ip} port={port}");
            assert_eq!(
                stun::parse(&t.payload),
                Some(Stun::BindingSuccess {
                    txid: [6; 12],
                    mapped: from,
                    other: Some(socks[3]),
                })
            );
        }
    }

    #[test]
    fn rfc8489_server_rules_unknown_attributes_fingerprints_and_classic_requests() {
        let from = a("198.51.100.2:40000");
        let socks = rfc5780_sockets();
        let local = socks[0];
        // An unknown comprehension-required attribute: 420 from where it was asked, to
        // the sender, no larger than a Binding answer.
        let mut req = stun::binding_request([7; 12]);
        req.extend_from_slice(&[0x7f, 0x01, 0x00, 0x04, 1, 2, 3, 4]);
        req[3] += 8;
        let t = answer(from, local, &req, &socks).expect("a 420");
        assert_eq!((t.from, t.to), (local, from));
        assert!(t.payload.len() <= 36);
        let msg = lanrage_core::turn::decode(&t.payload).expect("STUN");
        let code = msg
            .get_attribute::<stun_codec::rfc5389::attributes::ErrorCode>()
            .map(|c| c.code());
        assert_eq!(code, Some(420));
        // A FINGERPRINT that does not match: no answer at all.
        let mut fp = stun::binding_request([8; 12]);
        fp.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]);
        fp[3] += 8;
        assert_eq!(answer(from, local, &fp, &socks), None);
        // A classic RFC 3489 request: MAPPED-ADDRESS and CHANGED-ADDRESS, its own 16-byte
        // transaction id, and CHANGE-REQUEST honoured like RFC 5780's.
        let txid = [9; 16];
        for (ip, port, expect) in [(false, false, socks[0]), (true, true, socks[3])] {
            let req = stun::classic_binding_request(txid, stun::Change { ip, port });
            let t = answer(from, local, &req, &socks).expect("a classic answer");
            assert_eq!((t.from, t.to), (expect, from));
            assert_eq!(
                t.payload,
                stun::classic_binding_success(txid, from, Some(socks[3]))
            );
        }
        // On a single address, the classic answer has no CHANGED-ADDRESS.
        let req = stun::classic_binding_request(txid, stun::Change::default());
        let t = answer(from, local, &req, &[local]).expect("a classic answer");
        assert_eq!(t.payload, stun::classic_binding_success(txid, from, None));
    }

    #[tokio::test]
    async fn serves_on_loopback() {
        let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        drop(server);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(&[addr], async {
                let _ = stopped.await;
            })
            .await
        });
        let mut buf = [0u8; 512];
        let mut got = None;
        for _ in 0..50 {
            probe
                .send_to(&stun::binding_request([9; 12]), addr)
                .await
                .expect("send");
            if let Ok(Ok((n, _))) = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                probe.recv_from(&mut buf),
            )
            .await
            {
                got = stun::parse(&buf[..n]);
                break;
            }
        }
        let me = probe.local_addr().expect("addr");
        assert_eq!(
            got,
            Some(Stun::BindingSuccess {
                txid: [9; 12],
                mapped: me,
                other: None
            })
        );
        let _ = stop.send(());
        task.await.expect("no panic").expect("clean stop");
    }
}
