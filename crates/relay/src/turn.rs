//! The TURN server (RFC 8656, UDP subset) as a sans-IO state machine: Allocate, Refresh,
//! CreatePermission, ChannelBind, Send and Data indications, ChannelData.
//!
//! Rules the server keeps, whatever arrives:
//! - Requests are authenticated with TURN REST long-term credentials (see
//!   `lanrage_core::turn`); an expired username is refused like a wrong password.
//! - Peer data is forwarded only for a live allocation, only to and from peers whose IP holds
//!   a live permission, and ChannelData only on the channel bound on that allocation's own
//!   5-tuple, so a forged ChannelData from another source goes nowhere.
//! - No amplification: an answer to a request that is not authenticated is sent only if it
//!   is no larger than the request; otherwise it is dropped.
//! - Each allocation has a byte-rate limit (token bucket), and each user id a quota of
//!   allocations.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use blake2::digest::Mac as _;
use lanrage_core::turn::{
    self, CHANNEL_LIFETIME, DEFAULT_LIFETIME, PERMISSION_LIFETIME, TurnRequest, UDP_TRANSPORT,
};
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use stun_codec::{Message, MessageClass, Method};

/// The longest allocation lifetime granted (RFC 8656 §3.2 suggests one hour).
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Nonces are issued per ten-minute bucket and accepted for the current and previous one.
const NONCE_BUCKET_SECS: u64 = 600;

/// What the operator sets.
#[derive(Debug, Clone)]
pub struct Config {
    /// The shared secret credentials are signed with.
    pub secret: Vec<u8>,
    /// Allocations one user id may hold at once.
    pub user_quota: usize,
    /// Bytes per second one allocation may relay (both directions together).
    pub rate_bytes_per_sec: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            secret: Vec::new(),
            user_quota: 10,
            rate_bytes_per_sec: 6_250_000, // 50 Mbit/s
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
    /// Datagrams for a relayed address or 5-tuple without an allocation.
    pub no_allocation: u64,
    /// Datagrams to or from a peer without a permission (or on an unbound channel).
    pub no_permission: u64,
    /// Datagrams over their allocation's byte rate.
    pub rate_limited: u64,
    /// Data relayed from clients out to peers.
    pub to_peer: Traffic,
    /// Data relayed from peers back to clients.
    pub to_client: Traffic,
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

/// Why a request's credentials were refused; all three answers carry a fresh nonce.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// No credentials yet, or not all of them (401).
    Challenge,
    /// A nonce no longer accepted (438).
    StaleNonce,
    /// A wrong or expired credential, or another realm (401).
    BadCredentials,
}

impl Refusal {
    fn code(self) -> u16 {
        match self {
            Refusal::StaleNonce => 438,
            Refusal::Challenge | Refusal::BadCredentials => 401,
        }
    }
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
    tokens: f64,
    refilled: Instant,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|t| *t > now)
    }

    /// Whether `bytes` to or from `ip` may pass: a live permission and room in the rate
    /// limit. Counts the outcome.
    fn admit(
        &mut self,
        ip: IpAddr,
        bytes: usize,
        rate: u64,
        now: Instant,
        direction: Direction,
        counters: &mut Counters,
    ) -> bool {
        if !self.permitted(ip, now) {
            counters.no_permission += 1;
            return false;
        }
        if !self.spend(bytes, rate, now) {
            counters.rate_limited += 1;
            return false;
        }
        let traffic = match direction {
            Direction::ToPeer => &mut counters.to_peer,
            Direction::ToClient => &mut counters.to_client,
        };
        traffic.packets += 1;
        traffic.bytes += bytes as u64;
        true
    }

    /// Takes `bytes` from the bucket; false when the allocation is over its rate.
    fn spend(&mut self, bytes: usize, rate: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        // One second of burst.
        self.tokens = (self.tokens + elapsed * rate as f64).min(rate as f64);
        if self.tokens < bytes as f64 {
            return false;
        }
        self.tokens -= bytes as f64;
        true
    }
}

/// The TURN server's state.
pub struct Server {
    config: Config,
    nonce_key: [u8; 32],
    free: BTreeSet<SocketAddr>,
    relay_addrs: BTreeSet<IpAddr>,
    allocations: HashMap<Owner, Allocation>,
    by_relay: HashMap<SocketAddr, Owner>,
    per_user: HashMap<String, usize>,
    counters: Counters,
}

struct Authed {
    username: String,
    user: String,
    password: String,
}

impl Server {
    /// A server relaying through `relay_sockets` (bound by the shell); `nonce_key` is
    /// random per start, so nonces of a previous run are stale.
    pub fn new(config: Config, relay_sockets: &[SocketAddr], nonce_key: [u8; 32]) -> Self {
        Self {
            config,
            nonce_key,
            free: relay_sockets.iter().copied().collect(),
            relay_addrs: relay_sockets.iter().map(SocketAddr::ip).collect(),
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// Live allocations.
    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// Relay ports still free.
    pub fn capacity(&self) -> usize {
        self.free.len()
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
        let rate = self.config.rate_bytes_per_sec;
        let a = self.allocations.get_mut(&owner)?;
        let (ip, len) = (from.ip(), datagram.len());
        if !a.admit(ip, len, rate, now, Direction::ToClient, &mut self.counters) {
            return None;
        }
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
        let rate = self.config.rate_bytes_per_sec;
        let Some(a) = self.allocations.get_mut(&owner) else {
            self.counters.no_allocation += 1;
            return None;
        };
        let peer = match target {
            Target::Peer(peer) => peer,
            Target::Channel(channel) => match a.channels.get(&channel) {
                Some(&(peer, _)) => peer,
                None => {
                    self.counters.no_permission += 1;
                    return None;
                }
            },
        };
        let (ip, len) = (peer.ip(), payload.len());
        if !a.admit(ip, len, rate, now, Direction::ToPeer, &mut self.counters) {
            return None;
        }
        Some(Transmit {
            from: a.relay,
            to: peer,
            payload: payload.to_vec(),
        })
    }

    fn release(&mut self, owner: Owner) {
        if let Some(a) = self.allocations.remove(&owner) {
            self.by_relay.remove(&a.relay);
            self.free.insert(a.relay);
            if let Some(n) = self.per_user.get_mut(&a.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_user.remove(&a.user);
                }
            }
        }
    }

    /// A nonce for `from`: eight characters (so a 401 fits inside the smallest Allocate
    /// a standard client sends), a 16-bit ten-minute time bucket and a 32-bit MAC.
    fn nonce(&self, unix: u64, from: SocketAddr) -> String {
        let bucket = (unix / NONCE_BUCKET_SECS) as u16;
        let mut raw = [0u8; 6];
        raw[..2].copy_from_slice(&bucket.to_be_bytes());
        raw[2..].copy_from_slice(&self.nonce_mac(bucket, from));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn nonce_mac(&self, bucket: u16, from: SocketAddr) -> [u8; 4] {
        let mut mac =
            <blake2::Blake2sMac256 as blake2::digest::KeyInit>::new_from_slice(&self.nonce_key)
                .expect("a 32-byte key is valid");
        mac.update(&bucket.to_be_bytes());
        mac.update(from.to_string().as_bytes());
        let tag = mac.finalize().into_bytes();
        [tag[0], tag[1], tag[2], tag[3]]
    }

    /// Whether `nonce` was issued to `from` in this time bucket or the previous one (10 to
    /// 20 minutes of validity).
    fn nonce_fresh(&self, nonce: &str, from: SocketAddr, unix: u64) -> bool {
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let Ok(raw) = <[u8; 6]>::try_from(raw.as_slice()) else {
            return false;
        };
        let bucket = u16::from_be_bytes([raw[0], raw[1]]);
        let now = (unix / NONCE_BUCKET_SECS) as u16;
        (bucket == now || bucket == now.wrapping_sub(1)) && raw[2..] == self.nonce_mac(bucket, from)
    }

    /// Checks the long-term credential of a request: `Ok` with the user, or why not.
    fn authenticate(
        &mut self,
        msg: &TurnRequest,
        from: SocketAddr,
        unix: u64,
    ) -> Result<Authed, Refusal> {
        let (Some(user), Some(realm), Some(nonce), Some(mi)) = (
            msg.get_attribute::<Username>(),
            msg.get_attribute::<Realm>(),
            msg.get_attribute::<Nonce>(),
            msg.get_attribute::<MessageIntegrity>(),
        ) else {
            return Err(Refusal::Challenge);
        };
        if realm.text() != turn::REALM {
            return Err(Refusal::BadCredentials);
        }
        if !self.nonce_fresh(nonce.value(), from, unix) {
            return Err(Refusal::StaleNonce);
        }
        let Some((expiry, id)) = turn::parse_rest_username(user.name()) else {
            return Err(Refusal::BadCredentials);
        };
        let password = turn::rest_password(&self.config.secret, user.name());
        if mi
            .check_long_term_credential(user, realm, &password)
            .is_err()
            || expiry < unix
        {
            return Err(Refusal::BadCredentials);
        }
        Ok(Authed {
            username: user.name().to_owned(),
            user: id.to_owned(),
            password,
        })
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
                };
                *counter += 1;
                let reply = self.error(msg, refusal.code(), Some(owner.0), unix, None)?;
                // No amplification towards an address that has not proved anything.
                return (reply.len() <= request_len).then_some(reply);
            }
        };
        let result = match method {
            m if m == ALLOCATE => self.allocate(owner, msg, &auth, now),
            m if m == REFRESH => self.refresh(owner, msg, &auth, now),
            m if m == CREATE_PERMISSION => self.permit(owner, msg, &auth, now),
            _ => self.channel_bind(owner, msg, turn::channel_number(datagram), &auth, now),
        };
        match result {
            Ok(attrs) => self.success(msg, method, attrs, &auth),
            Err(code) => {
                tracing::debug!(client = %owner.0, code, method = ?method, "TURN request refused");
                self.error(msg, code, None, unix, Some(&auth))
            }
        }
    }

    fn allocate(
        &mut self,
        owner: Owner,
        msg: &TurnRequest,
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
        if self.per_user.get(&auth.user).copied().unwrap_or(0) >= self.config.user_quota {
            return Err(486);
        }
        let relay = self
            .free
            .iter()
            .copied()
            .find(|r| r.is_ipv4() == owner.0.is_ipv4())
            .ok_or(508u16)?;
        self.free.remove(&relay);
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
                tokens: self.config.rate_bytes_per_sec as f64,
                refilled: now,
            },
        );
        self.by_relay.insert(relay, owner);
        *self.per_user.entry(auth.user.clone()).or_default() += 1;
        self.counters.allocations_made += 1;
        tracing::debug!(client = %owner.0, %relay, user = %auth.user, "allocation");
        Ok(vec![
            XorRelayAddress::new(relay).into(),
            XorMappedAddress::new(owner.0).into(),
            Lifetime::from_u32(lifetime.as_secs() as u32).into(),
        ])
    }

    /// The caller's allocation, if the request carries the credentials that made it
    /// (RFC 8656 §5: 441 otherwise).
    fn owned(&mut self, owner: Owner, auth: &Authed) -> Result<&mut Allocation, u16> {
        let a = self.allocations.get_mut(&owner).ok_or(437u16)?;
        if a.username != auth.username {
            return Err(441);
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

    fn peer_allowed(&self, peer: IpAddr, owner: Owner) -> bool {
        !(peer.is_unspecified()
            || peer.is_multicast()
            || peer == IpAddr::from([255, 255, 255, 255])
            || (peer.is_loopback() && !owner.1.ip().is_loopback())
            || (self.relay_addrs.contains(&peer) && !peer.is_loopback()))
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
        if peers.iter().any(|p| !self.peer_allowed(*p, owner)) {
            return Err(403);
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
        if !self.peer_allowed(peer.ip(), owner) {
            return Err(403);
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
    ) -> Option<Vec<u8>> {
        let mut msg = Message::new(
            MessageClass::ErrorResponse,
            req.method(),
            req.transaction_id(),
        );
        msg.add_attribute(ErrorCode::new(code, String::new()).ok()?);
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
