//! The TURN server (RFC 8656, UDP subset) as a sans-IO state machine: Allocate, Refresh,
//! CreatePermission, ChannelBind, Send and Data indications, ChannelData.
//!
//! Rules the server keeps, whatever arrives:
//! - Requests are authenticated with TURN REST long-term credentials (see
//!   `lanrage_core::turn`); an expired username is refused like a wrong password, and so
//!   is one the control plane revoked ([`Server::revoke`]).
//! - Peer data is forwarded only for a live allocation, only to and from peers whose IP holds
//!   a live permission, and ChannelData only on the channel bound on that allocation's own
//!   5-tuple, so a forged ChannelData from another source goes nowhere.
//! - Peers in special-use ranges and the relay's own addresses are refused (403 on
//!   CreatePermission and ChannelBind, nothing delivered by Send or ChannelData) unless the
//!   operator opened the range; see [`filter`] (RFC 8656 §17.4).
//! - No amplification: an answer to a request that is not authenticated is sent only if it
//!   is no larger than the request; otherwise it is dropped.
//! - Allocations are limited per user id, per source IP, per party and relay-wide (486, or
//!   508 for the relay-wide cap and while draining); bytes per second per allocation, per
//!   user id and relay-wide (token buckets). See [`quota`].
//! - A request with an unknown comprehension-required attribute gets 420 (RFC 8489
//!   §6.3.1.1), after authentication as RFC 8489 orders it.
//!
//! Drive it with [`Server::handle_client`] for each datagram on a listen socket,
//! [`Server::handle_peer`] for each datagram on a relayed port, and
//! [`Server::handle_timeout`] about once a second; each returns the datagram to send.

mod auth;
pub mod filter;
pub mod quota;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::digest::Mac as _;
use lanrage_core::stun;
use lanrage_core::turn::{
    self, CHANNEL_LIFETIME, DEFAULT_LIFETIME, PERMISSION_LIFETIME, TurnRequest, UDP_TRANSPORT,
};
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    Data, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use stun_codec::{AttributeType, Message, MessageClass, Method};

use auth::{Authed, Refusal};
pub use filter::{Cidr, CidrError, PeerFilter};
use quota::{Bucket, Limits, Usage};

/// The longest allocation lifetime granted (RFC 8656 §3.2 suggests one hour).
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Nonces are issued per ten-minute bucket and accepted for the current and previous one.
const NONCE_BUCKET_SECS: u64 = 600;
/// How long a port reserved by EVEN-PORT's R bit waits for its RESERVATION-TOKEN
/// (RFC 8656 §7.2 suggests about 30 seconds).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Most revoked user ids remembered at once; past it the one whose revocation ends first
/// is forgotten (its credentials expire soonest anyway).
const MAX_REVOKED: usize = 65_536;

/// What the operator sets.
#[derive(Debug, Clone)]
pub struct Config {
    /// The shared secret credentials are signed with.
    pub secret: Vec<u8>,
    /// Allocations one user id may hold at once.
    pub user_quota: usize,
    /// Allocations one source IP may hold at once (friends behind one NAT share it).
    pub ip_quota: usize,
    /// Allocations one party may hold at once; never more than half the relay.
    pub party_quota: usize,
    /// Allocations the whole relay holds at most; `None`: its ports less a reserve of one
    /// in sixteen (see [`Server::limits`]).
    pub max_allocations: Option<usize>,
    /// Bytes per second one allocation may relay (both directions together).
    pub rate_bytes_per_sec: u64,
    /// Bytes per second one user id may relay over all its allocations.
    pub user_rate_bytes_per_sec: u64,
    /// Bytes per second the whole relay relays at most.
    pub total_rate_bytes_per_sec: u64,
    /// Special-use ranges opened to peers (LAN-only deployments, tests on loopback).
    pub allow_peers: Vec<Cidr>,
    /// Transport addresses on the relay's own IPs that are peers all the same: in host
    /// mode, the host daemon's WireGuard socket.
    pub self_peers: Vec<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            secret: Vec::new(),
            // A daemon holds one allocation per relay; a few spare for restarts.
            user_quota: 4,
            // A household or a LAN-party venue behind one NAT.
            ip_quota: 8,
            // A 64-member party each holding one, with room for reconnects.
            party_quota: 80,
            max_allocations: None,
            rate_bytes_per_sec: 6_250_000,         // 50 Mbit/s
            user_rate_bytes_per_sec: 12_500_000,   // 100 Mbit/s
            total_rate_bytes_per_sec: 125_000_000, // 1 Gbit/s
            allow_peers: Vec::new(),
            self_peers: Vec::new(),
        }
    }
}

/// A datagram to send: from which of the server's sockets, to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// What the server did and dropped since it started, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub allocations_made: u64,
    /// Requests without (complete) credentials, answered 401 with a nonce: every client's
    /// first round trip (RFC 8489 §9.2.4), not an attack by itself.
    pub challenged: u64,
    /// Requests with a nonce from before the last bucket, answered 438 (RFC 8489 §9.2.4).
    pub stale_nonce: u64,
    /// Requests with a wrong or expired credential or another realm, answered 401.
    pub bad_credentials: u64,
    /// Requests with valid credentials of a revoked user id, answered 401.
    pub revoked: u64,
    /// Authenticated requests with an unknown comprehension-required attribute (420).
    pub unknown_attributes: u64,
    /// Allocations refused by a quota or the relay-wide cap, or while draining.
    pub quota: QuotaRefusals,
    /// CreatePermission and ChannelBind requests refused for their peer (403).
    pub forbidden_peer_requests: u64,
    /// Datagrams for a relayed address or 5-tuple without an allocation.
    pub no_allocation: u64,
    /// Datagrams to or from a peer without a permission (or on an unbound channel).
    pub no_permission: u64,
    /// Datagrams to or from a peer the filter refuses (Send indications mostly).
    pub forbidden_peer: u64,
    /// Datagrams over their allocation's, user's or the relay's byte rate.
    pub rate_limited: u64,
    /// Data relayed from clients out to peers.
    pub to_peer: Traffic,
    /// Data relayed from peers back to clients.
    pub to_client: Traffic,
}

/// Allocate requests refused, by the limit that refused them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaRefusals {
    /// The user id's quota (486).
    pub user: u64,
    /// The source IP's quota (486).
    pub ip: u64,
    /// The party's quota (486).
    pub party: u64,
    /// The relay-wide cap or no free port (508).
    pub total: u64,
    /// The relay is draining (508).
    pub draining: u64,
}

/// Datagrams relayed in one direction and their payload bytes (application data, without
/// the TURN framing around it on the client side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Which way relayed data goes, for [`Counters`].
#[derive(Debug, Clone, Copy)]
enum Direction {
    ToPeer,
    ToClient,
}

/// Where client data goes: a bound channel's peer, or a Send indication's.
enum Target {
    Channel(u16),
    Peer(SocketAddr),
}

/// The 5-tuple that owns an allocation (UDP implied): client address and listen address.
type Owner = (SocketAddr, SocketAddr);

struct Allocation {
    relay: SocketAddr,
    username: String,
    user: String,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    by_peer: HashMap<SocketAddr, u16>,
    bucket: Bucket,
    /// The port this allocation's EVEN-PORT R bit holds for a later Allocate: it lives with
    /// the allocation, so releasing allocations cannot pile up reserved ports outside
    /// every quota.
    reserved: Option<u64>,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|t| *t > now)
    }
}

/// The TURN server's state.
pub struct Server {
    config: Config,
    limits: Limits,
    filter: PeerFilter,
    nonce_key: [u8; 32],
    free: BTreeSet<SocketAddr>,
    /// Whether any relay port is IPv4, IPv6 (for 440, RFC 8656 §7.2).
    families: (bool, bool),
    /// RESERVATION-TOKEN → the port it holds out of `free`, and until when.
    reservations: HashMap<u64, (SocketAddr, Instant)>,
    reservations_made: u64,
    allocations: HashMap<Owner, Allocation>,
    by_relay: HashMap<SocketAddr, Owner>,
    usage: Usage,
    user_buckets: HashMap<String, Bucket>,
    total_bucket: Bucket,
    /// User id → credentials with an expiry up to this Unix time are refused.
    revoked: BTreeMap<String, u64>,
    /// The latest Unix time seen, for pruning `revoked`.
    unix: u64,
    draining: bool,
    counters: Counters,
}

impl Server {
    /// A server answering on `listen` and relaying through `relay_sockets` (both bound by
    /// the shell, which also resolves unspecified listen IPs into the host's addresses);
    /// `nonce_key` is random per start, so nonces of a previous run are stale. Every IP in
    /// either list is one of the relay's own, never a peer.
    pub fn new(
        config: Config,
        listen: &[SocketAddr],
        relay_sockets: &[SocketAddr],
        nonce_key: [u8; 32],
    ) -> Self {
        let own = listen.iter().chain(relay_sockets).map(SocketAddr::ip);
        let filter = PeerFilter::new(&config.allow_peers, own, &config.self_peers);
        let limits = Self::limits_for(&config, relay_sockets.len());
        Self {
            total_bucket: Bucket::full(config.total_rate_bytes_per_sec),
            config,
            limits,
            filter,
            nonce_key,
            free: relay_sockets.iter().copied().collect(),
            families: (
                relay_sockets.iter().any(SocketAddr::is_ipv4),
                relay_sockets.iter().any(SocketAddr::is_ipv6),
            ),
            reservations: HashMap::new(),
            reservations_made: 0,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            usage: Usage::default(),
            user_buckets: HashMap::new(),
            revoked: BTreeMap::new(),
            unix: 0,
            draining: false,
            counters: Counters::default(),
        }
    }

    /// The limits in force on a relay with `ports` relay ports: the relay-wide cap is
    /// `max_allocations` or, by default, the ports less one in sixteen kept in reserve
    /// (ports that another program took since, headroom while old allocations drain); a
    /// party gets at most half of it.
    fn limits_for(config: &Config, ports: usize) -> Limits {
        let total = config
            .max_allocations
            .unwrap_or(ports - ports / 16)
            .min(ports);
        Limits {
            user: config.user_quota,
            ip: config.ip_quota,
            party: config.party_quota.min((total / 2).max(1)),
            total,
        }
    }

    /// Live allocations.
    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// How many more allocations the relay would grant: free ports within the relay-wide
    /// cap, none while draining.
    pub fn capacity(&self) -> usize {
        if self.draining {
            return 0;
        }
        self.free
            .len()
            .min(self.limits.total.saturating_sub(self.allocations.len()))
    }

    /// Relay ports not allocated.
    pub fn free_ports(&self) -> usize {
        self.free.len()
    }

    /// What the operator set.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The quotas in force (after the relay-wide cap was reconciled with the ports).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Permissions held over all allocations (expired ones count until the next
    /// [`Server::handle_timeout`]).
    pub fn permissions(&self) -> usize {
        self.allocations.values().map(|a| a.permissions.len()).sum()
    }

    /// Channels bound over all allocations (expired ones count until the next
    /// [`Server::handle_timeout`]).
    pub fn channels(&self) -> usize {
        self.allocations.values().map(|a| a.channels.len()).sum()
    }

    /// Drops every allocation of `user` at once and refuses its credentials whose expiry
    /// is at most `until_unix` (a member who left or was kicked: the control plane calls
    /// this). Credentials issued later, with a later expiry, work again. The memory is
    /// dropped once `until_unix` has passed: those credentials have expired by then.
    pub fn revoke(&mut self, user: &str, until_unix: u64) {
        let owners: Vec<Owner> = self
            .allocations
            .iter()
            // Only allocations made with the revoked credentials: a member who came back
            // holds newer ones (expiring after `until_unix`) and keeps its relay.
            .filter(|(_, a)| {
                a.user == user
                    && turn::parse_rest_username(&a.username)
                        .is_none_or(|(expiry, _)| expiry <= until_unix)
            })
            .map(|(o, _)| *o)
            .collect();
        for owner in &owners {
            self.release(*owner);
        }
        let now = self.unix;
        self.revoked.retain(|_, until| *until >= now);
        let until = self.revoked.entry(user.to_owned()).or_insert(until_unix);
        *until = (*until).max(until_unix);
        if self.revoked.len() > MAX_REVOKED
            && let Some(first) = self
                .revoked
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(u, _)| u.clone())
        {
            self.revoked.remove(&first);
        }
        tracing::info!(
            user,
            until_unix,
            dropped = owners.len(),
            "TURN user revoked"
        );
    }

    /// From now on Allocate gets 508 (Insufficient Capacity, RFC 8656 §7.2); existing
    /// allocations go on (refreshes, permissions, data) until their clients leave.
    pub fn drain(&mut self) {
        if !self.draining {
            tracing::info!(allocations = self.allocations.len(), "TURN draining");
        }
        self.draining = true;
    }

    /// Drops expired allocations, permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<Owner> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(o, _)| *o)
            .collect();
        for owner in expired {
            self.release(owner);
        }
        let free = &mut self.free;
        self.reservations.retain(|_, (port, until)| {
            let keep = *until > now;
            if !keep {
                free.insert(*port);
            }
            keep
        });
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, t| *t > now);
            let dead: Vec<u16> = a
                .channels
                .iter()
                .filter(|(_, (_, t))| *t <= now)
                .map(|(n, _)| *n)
                .collect();
            for n in dead {
                if let Some((peer, _)) = a.channels.remove(&n) {
                    a.by_peer.remove(&peer);
                }
            }
        }
    }

    /// A datagram from a client on listen address `listen` (not a Binding request: those
    /// are `crate::answer`'s). `unix` is the wall-clock time in Unix seconds, for
    /// credential and nonce expiry.
    pub fn handle_client(
        &mut self,
        listen: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        unix: u64,
    ) -> Option<Transmit> {
        self.unix = self.unix.max(unix);
        let owner = (from, listen);
        if let Some((channel, payload)) = turn::parse_channel_data(datagram) {
            return self.forward_to_peer(owner, Target::Channel(channel), payload, now);
        }
        let Some(msg) = turn::decode_request(datagram) else {
            tracing::trace!(client = %from, len = datagram.len(), head = ?datagram.get(..32), "undecodable datagram");
            return None;
        };
        match msg.class() {
            MessageClass::Indication if msg.method() == SEND => {
                let peer = msg.get_attribute::<XorPeerAddress>()?.address();
                let data = msg.get_attribute::<Data>()?.data();
                self.forward_to_peer(owner, Target::Peer(peer), data, now)
            }
            MessageClass::Request => {
                let payload = self.request(owner, &msg, datagram, now, unix)?;
                Some(Transmit {
                    from: listen,
                    to: from,
                    payload,
                })
            }
            _ => None,
        }
    }

    /// A datagram from a peer to relayed address `relay`.
    pub fn handle_peer(
        &mut self,
        relay: SocketAddr,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        txid: [u8; 12],
    ) -> Option<Transmit> {
        let Some(&owner) = self.by_relay.get(&relay) else {
            self.counters.no_allocation += 1;
            return None;
        };
        if !self.admit(owner, from, datagram.len(), now, Direction::ToClient) {
            return None;
        }
        let a = self.allocations.get(&owner)?;
        let payload = match a.by_peer.get(&from) {
            Some(&channel) => turn::channel_data(channel, datagram),
            None => turn::data_indication(txid, from, datagram)?,
        };
        Some(Transmit {
            from: owner.1,
            to: owner.0,
            payload,
        })
    }

    /// Client data for a peer (by channel or by address) out through the allocation.
    fn forward_to_peer(
        &mut self,
        owner: Owner,
        target: Target,
        payload: &[u8],
        now: Instant,
    ) -> Option<Transmit> {
        let Some(a) = self.allocations.get(&owner) else {
            self.counters.no_allocation += 1;
            return None;
        };
        let (relay, peer) = match target {
            Target::Peer(peer) => (a.relay, peer),
            Target::Channel(channel) => match a.channels.get(&channel) {
                Some(&(peer, _)) => (a.relay, peer),
                None => {
                    self.counters.no_permission += 1;
                    return None;
                }
            },
        };
        if !self.admit(owner, peer, payload.len(), now, Direction::ToPeer) {
            return None;
        }
        Some(Transmit {
            from: relay,
            to: peer,
            payload: payload.to_vec(),
        })
    }

    /// Whether `bytes` between `owner`'s allocation and `peer` may pass: a peer the filter
    /// allows, a live permission, and room in the allocation's, the user's and the relay's
    /// byte rates. Counts the outcome.
    fn admit(
        &mut self,
        owner: Owner,
        peer: SocketAddr,
        bytes: usize,
        now: Instant,
        direction: Direction,
    ) -> bool {
        if let Err(why) = self.filter.addr(peer) {
            tracing::trace!(%peer, ?why, "datagram for a refused peer");
            self.counters.forbidden_peer += 1;
            return false;
        }
        let Some(a) = self.allocations.get_mut(&owner) else {
            self.counters.no_allocation += 1;
            return false;
        };
        if !a.permitted(peer.ip(), now) {
            self.counters.no_permission += 1;
            return false;
        }
        let c = &self.config;
        if !self.user_buckets.contains_key(&a.user) {
            // Made on Allocate; only a bug would get here, and then the user starts full.
            let full = Bucket::full(c.user_rate_bytes_per_sec);
            self.user_buckets.insert(a.user.clone(), full);
        }
        let Some(user) = self.user_buckets.get_mut(&a.user) else {
            return false;
        };
        // Every bucket is refilled (no short-circuit), then all three are charged or none.
        let fits = [
            a.bucket.refill(c.rate_bytes_per_sec, now, bytes),
            user.refill(c.user_rate_bytes_per_sec, now, bytes),
            self.total_bucket
                .refill(c.total_rate_bytes_per_sec, now, bytes),
        ];
        if fits.contains(&false) {
            self.counters.rate_limited += 1;
            return false;
        }
        a.bucket.take(bytes);
        user.take(bytes);
        self.total_bucket.take(bytes);
        let traffic = match direction {
            Direction::ToPeer => &mut self.counters.to_peer,
            Direction::ToClient => &mut self.counters.to_client,
        };
        traffic.packets += 1;
        traffic.bytes += bytes as u64;
        true
    }

    fn release(&mut self, owner: Owner) {
        if let Some(a) = self.allocations.remove(&owner) {
            self.by_relay.remove(&a.relay);
            self.free.insert(a.relay);
            if let Some((held, _)) = a.reserved.and_then(|t| self.reservations.remove(&t)) {
                self.free.insert(held);
            }
            self.usage.remove(&a.user, owner.0.ip());
            if self.usage.of_user(&a.user) == 0 {
                self.user_buckets.remove(&a.user);
            }
        }
    }

    fn request(
        &mut self,
        owner: Owner,
        msg: &TurnRequest,
        datagram: &[u8],
        now: Instant,
        unix: u64,
    ) -> Option<Vec<u8>> {
        let request_len = datagram.len();
        let method = msg.method();
        if ![ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method) {
            return None;
        }
        let auth = match self.authenticate(msg, owner.0, unix) {
            Ok(a) => a,
            Err(refusal) => {
                let counter = match refusal {
                    Refusal::Challenge => &mut self.counters.challenged,
                    Refusal::StaleNonce => &mut self.counters.stale_nonce,
                    Refusal::BadCredentials => &mut self.counters.bad_credentials,
                    Refusal::Revoked => &mut self.counters.revoked,
                };
                *counter += 1;
                let reply = self.error(msg, refusal.code(), Some(owner.0), unix, None, &[])?;
                // No amplification towards an address that has not proved anything.
                return (reply.len() <= request_len).then_some(reply);
            }
        };
        // RFC 8489 §6.3.1.1: after authentication, unknown comprehension-required
        // attributes get 420 listing them.
        let unknown = stun::unknown_required(datagram, &turn::KNOWN_REQUIRED);
        if !unknown.is_empty() {
            self.counters.unknown_attributes += 1;
            tracing::debug!(client = %owner.0, ?unknown, "TURN request with unknown attributes");
            return self.error(msg, 420, None, unix, Some(&auth), &unknown);
        }
        let result = match method {
            m if m == ALLOCATE => self.allocate(owner, msg, datagram, &auth, now),
            m if m == REFRESH => self.refresh(owner, msg, &auth, now),
            m if m == CREATE_PERMISSION => self.permit(owner, msg, &auth, now),
            _ => self.channel_bind(owner, msg, turn::channel_number(datagram), &auth, now),
        };
        match result {
            Ok(attrs) => self.success(msg, method, attrs, &auth),
            Err(code) => {
                tracing::debug!(client = %owner.0, code, method = ?method, "TURN request refused");
                self.error(msg, code, None, unix, Some(&auth), &[])
            }
        }
    }

    fn allocate(
        &mut self,
        owner: Owner,
        msg: &TurnRequest,
        datagram: &[u8],
        auth: &Authed,
        now: Instant,
    ) -> Result<Vec<turn::Attr>, u16> {
        if self.allocations.contains_key(&owner) {
            // RFC 8656 §7.2: one allocation per 5-tuple.
            return Err(437);
        }
        match msg.get_attribute::<RequestedTransport>() {
            Some(t) if t.protocol() == UDP_TRANSPORT => {}
            Some(_) => return Err(442),
            None => return Err(400),
        }
        // RFC 8656 §7.2: the family asked for (440 if unknown or not served), else the
        // client's own; EVEN-PORT asks for an even port (and with its R bit, that the next
        // one be reserved for a later Allocate carrying the RESERVATION-TOKEN returned).
        let even = turn::even_port(datagram);
        let family = turn::requested_family(datagram);
        let token = turn::reservation_token(datagram);
        if token.is_some() && (even.is_some() || !matches!(family, Ok(None))) {
            return Err(400);
        }
        let v4 = family.map_err(|_| 440u16)?.unwrap_or(owner.0.is_ipv4());
        if !(if v4 { self.families.0 } else { self.families.1 }) {
            return Err(440);
        }
        if self.draining {
            self.counters.quota.draining += 1;
            return Err(508);
        }
        if let Err(kind) = self.usage.check(&self.limits, &auth.user, owner.0.ip()) {
            let q = &mut self.counters.quota;
            let (counter, code) = match kind {
                quota::Kind::User => (&mut q.user, 486),
                quota::Kind::Ip => (&mut q.ip, 486),
                quota::Kind::Party => (&mut q.party, 486),
                // RFC 8656 §7.2: a relay out of capacity answers 508, not the client's 486.
                quota::Kind::Total => (&mut q.total, 508),
            };
            *counter += 1;
            tracing::debug!(client = %owner.0, user = %auth.user, ?kind, "allocation quota reached");
            return Err(code);
        }
        let (relay, reserved) = match token {
            // An unknown or expired token: the reserved address is not available (508).
            Some(token) => {
                let (relay, _) = token
                    .and_then(|t| self.reservations.remove(&t))
                    .ok_or(508u16)?;
                (relay, None)
            }
            None => match self.take_port(v4, even, now) {
                Some(taken) => taken,
                None => {
                    self.counters.quota.total += 1;
                    return Err(508);
                }
            },
        };
        let lifetime = lifetime_of(msg).unwrap_or(DEFAULT_LIFETIME);
        self.allocations.insert(
            owner,
            Allocation {
                relay,
                username: auth.username.clone(),
                user: auth.user.clone(),
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                by_peer: HashMap::new(),
                bucket: Bucket::full(self.config.rate_bytes_per_sec),
                reserved,
            },
        );
        self.by_relay.insert(relay, owner);
        self.usage.add(&auth.user, owner.0.ip());
        let user_rate = self.config.user_rate_bytes_per_sec;
        self.user_buckets
            .entry(auth.user.clone())
            .or_insert_with(|| Bucket::full(user_rate));
        self.counters.allocations_made += 1;
        tracing::debug!(client = %owner.0, %relay, user = %auth.user, "allocation");
        let mut attrs = vec![
            XorRelayAddress::new(relay).into(),
            XorMappedAddress::new(owner.0).into(),
            Lifetime::from_u32(lifetime.as_secs() as u32).into(),
        ];
        if let Some(token) = reserved {
            attrs.push(ReservationToken::new(token).into());
        }
        Ok(attrs)
    }

    /// Takes a free relay port of the family asked for: even if `even` is given, and with
    /// `Some(true)` the next port too, reserved under a new token. Returns the port and the
    /// token, or `None` if no such port is free.
    fn take_port(
        &mut self,
        v4: bool,
        even: Option<bool>,
        now: Instant,
    ) -> Option<(SocketAddr, Option<u64>)> {
        let next = |r: &SocketAddr| r.port().checked_add(1).map(|p| SocketAddr::new(r.ip(), p));
        let relay = self.free.iter().copied().find(|r| {
            r.is_ipv4() == v4
                && match even {
                    None => true,
                    Some(false) => r.port() % 2 == 0,
                    Some(true) => {
                        r.port() % 2 == 0 && next(r).is_some_and(|n| self.free.contains(&n))
                    }
                }
        })?;
        self.free.remove(&relay);
        if even != Some(true) {
            return Some((relay, None));
        }
        let held = next(&relay)?;
        self.free.remove(&held);
        // Unguessable without the nonce key, unique per reservation.
        self.reservations_made += 1;
        let mut mac =
            <blake2::Blake2sMac256 as blake2::digest::KeyInit>::new_from_slice(&self.nonce_key)
                .expect("a 32-byte key is valid");
        mac.update(b"reservation");
        mac.update(&self.reservations_made.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        let mut token = [0u8; 8];
        token.copy_from_slice(&tag[..8]);
        let token = u64::from_be_bytes(token);
        self.reservations
            .insert(token, (held, now + RESERVATION_LIFETIME));
        Some((relay, Some(token)))
    }

    /// The caller's allocation, if the request carries credentials of the user that made
    /// it (RFC 8656 §5: 441 otherwise). TURN REST usernames carry their expiry, and clients
    /// renew credentials long before an allocation ends, so a renewed credential of the
    /// same user id is that user's: the allocation takes it on (a later revocation then
    /// judges the newest expiry).
    fn owned(&mut self, owner: Owner, auth: &Authed) -> Result<&mut Allocation, u16> {
        let a = self.allocations.get_mut(&owner).ok_or(437u16)?;
        if a.user != auth.user {
            return Err(441);
        }
        if a.username != auth.username {
            a.username.clone_from(&auth.username);
        }
        Ok(a)
    }

    fn refresh(
        &mut self,
        owner: Owner,
        msg: &TurnRequest,
        auth: &Authed,
        now: Instant,
    ) -> Result<Vec<turn::Attr>, u16> {
        let lifetime = msg
            .get_attribute::<Lifetime>()
            .map_or(DEFAULT_LIFETIME, |l| l.lifetime());
        let a = self.owned(owner, auth)?;
        if lifetime.is_zero() {
            self.release(owner);
            return Ok(vec![Lifetime::from_u32(0).into()]);
        }
        let lifetime = lifetime.min(MAX_LIFETIME);
        a.expires = now + lifetime;
        Ok(vec![Lifetime::from_u32(lifetime.as_secs() as u32).into()])
    }

    /// 403 (RFC 8656 §9.2, §11.2) for a peer the filter refuses.
    fn refuse_peer(&mut self, owner: Owner, peer: IpAddr, why: filter::Refused) -> u16 {
        self.counters.forbidden_peer_requests += 1;
        tracing::debug!(client = %owner.0, %peer, ?why, "peer refused");
        403
    }

    fn permit(
        &mut self,
        owner: Owner,
        msg: &TurnRequest,
        auth: &Authed,
        now: Instant,
    ) -> Result<Vec<turn::Attr>, u16> {
        let peers: Vec<IpAddr> = msg
            .attributes()
            .filter_map(|a| match a {
                turn::RequestAttr::XorPeerAddress(p) => Some(p.address().ip()),
                _ => None,
            })
            .collect();
        if peers.is_empty() {
            return Err(400);
        }
        for &peer in &peers {
            if let Err(why) = self.filter.ip(peer) {
                return Err(self.refuse_peer(owner, peer, why));
            }
        }
        let a = self.owned(owner, auth)?;
        for ip in peers {
            a.permissions.insert(ip, now + PERMISSION_LIFETIME);
        }
        Ok(Vec::new())
    }

    fn channel_bind(
        &mut self,
        owner: Owner,
        msg: &TurnRequest,
        number: Option<u16>,
        auth: &Authed,
        now: Instant,
    ) -> Result<Vec<turn::Attr>, u16> {
        let number = number.ok_or(400u16)?;
        let peer = msg
            .get_attribute::<XorPeerAddress>()
            .ok_or(400u16)?
            .address();
        if let Err(why) = self.filter.addr(peer) {
            return Err(self.refuse_peer(owner, peer.ip(), why));
        }
        let a = self.owned(owner, auth)?;
        // RFC 8656 §11.2: a channel is bound to one peer and a peer to one channel.
        if a.channels.get(&number).is_some_and(|(p, _)| *p != peer)
            || a.by_peer.get(&peer).is_some_and(|n| *n != number)
        {
            return Err(400);
        }
        a.channels.insert(number, (peer, now + CHANNEL_LIFETIME));
        a.by_peer.insert(peer, number);
        a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        Ok(Vec::new())
    }

    fn success(
        &self,
        req: &TurnRequest,
        method: Method,
        attrs: Vec<turn::Attr>,
        auth: &Authed,
    ) -> Option<Vec<u8>> {
        let mut msg = Message::new(MessageClass::SuccessResponse, method, req.transaction_id());
        for a in attrs {
            msg.add_attribute(a);
        }
        self.seal(&mut msg, auth)?;
        turn::encode(msg)
    }

    fn error(
        &self,
        req: &TurnRequest,
        code: u16,
        nonce_for: Option<SocketAddr>,
        unix: u64,
        auth: Option<&Authed>,
        unknown: &[u16],
    ) -> Option<Vec<u8>> {
        let mut msg = Message::new(
            MessageClass::ErrorResponse,
            req.method(),
            req.transaction_id(),
        );
        msg.add_attribute(ErrorCode::new(code, String::new()).ok()?);
        if !unknown.is_empty() {
            let types = unknown.iter().map(|t| AttributeType::new(*t)).collect();
            msg.add_attribute(UnknownAttributes::new(types));
        }
        if let Some(from) = nonce_for {
            msg.add_attribute(Realm::new(turn::REALM.to_owned()).ok()?);
            msg.add_attribute(Nonce::new(self.nonce(unix, from)).ok()?);
        }
        if let Some(auth) = auth {
            self.seal(&mut msg, auth)?;
        }
        turn::encode(msg)
    }

    fn seal(&self, msg: &mut lanrage_core::turn::TurnMessage, auth: &Authed) -> Option<()> {
        let user = Username::new(auth.username.clone()).ok()?;
        let realm = Realm::new(turn::REALM.to_owned()).ok()?;
        let mi =
            MessageIntegrity::new_long_term_credential(msg, &user, &realm, &auth.password).ok()?;
        msg.add_attribute(mi);
        Some(())
    }
}

fn lifetime_of(msg: &TurnRequest) -> Option<Duration> {
    let l = msg.get_attribute::<Lifetime>()?.lifetime();
    // RFC 8656 §7.2: shorter than the default gets the default; longer than the maximum
    // gets the maximum.
    Some(l.clamp(DEFAULT_LIFETIME, MAX_LIFETIME))
}

#[cfg(test)]
mod tests;
