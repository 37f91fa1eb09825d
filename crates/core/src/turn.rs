//! TURN (RFC 8656, the UDP subset LANrage uses): the message layer shared by the relay
//! server and the daemon's client, the TURN REST shared-secret credentials, ChannelData
//! framing, and the client state machine [`TurnClient`].
//!
//! Credentials follow the TURN REST convention that coturn calls `use-auth-secret`:
//! `username = "<unix expiry>:<id>"`, `password = base64(HMAC-SHA1(secret, username))`. The
//! control plane hands them out; any relay holding the same secret checks them without
//! asking anyone, and a standard TURN server configured the same way is interchangeable.

pub mod pick;
// Relay registrations are signed with the relay's own key, not the TURN secret.
mod relay_auth;

pub use relay_auth::{
    RelayAuth, RelayAuthError, RelayKey, RelaySigner, signed_message as relay_signed_message,
    verify_authorization as verify_relay_authorization,
};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytecodec::{DecodeExt as _, EncodeExt as _};
use hmac::{Hmac, Mac as _};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha1::Sha1;
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MessageIntegrity, Nonce, Realm, Software, UnknownAttributes, Username,
    XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    ChannelNumber, Data, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayAddress,
};
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId};

stun_codec::define_attribute_enums!(
    Attr,
    AttrDecoder,
    AttrEncoder,
    [
        XorMappedAddress,
        Username,
        Realm,
        Nonce,
        MessageIntegrity,
        ErrorCode,
        Software,
        Fingerprint,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        RequestedTransport,
        ChannelNumber,
        UnknownAttributes,
        ReservationToken
    ]
);

// The same set without CHANNEL-NUMBER, for decoding requests on the relay: stun_codec
// accepts only RFC 8656's channel range (0x4000–0x4FFF) and fails the whole message
// otherwise, while RFC 5766 clients (coturn's among them) use up to 0x7FFF. The relay reads
// CHANNEL-NUMBER with [`channel_number`] instead.
stun_codec::define_attribute_enums!(
    RequestAttr,
    RequestAttrDecoder,
    RequestAttrEncoder,
    [
        XorMappedAddress,
        Username,
        Realm,
        Nonce,
        MessageIntegrity,
        ErrorCode,
        Software,
        Fingerprint,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        RequestedTransport
    ]
);

/// A decoded STUN/TURN message.
pub type TurnMessage = Message<Attr>;
/// A message as the relay decodes it (see [`RequestAttr`]).
pub type TurnRequest = Message<RequestAttr>;

/// IANA protocol number for UDP, the only REQUESTED-TRANSPORT served (RFC 8656 §7.2).
pub const UDP_TRANSPORT: u8 = 17;
/// RFC 8656 §12: channel numbers are 0x4000–0x4FFF (this client's range); RFC 5766
/// allowed up to 0x7FFF, which the relay accepts from older clients.
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x4FFF;
pub const CHANNEL_MAX_RFC5766: u16 = 0x7FFF;
/// RFC 8656 §9: permissions last five minutes.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §12: channel bindings last ten minutes.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 §3.2: the default allocation lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// Comprehension-required attributes (type < 0x8000) a TURN request may carry to this
/// relay: RFC 8489's (§18.3) and the RFC 8656 ones it implements (§18). Others, such as
/// DONT-FRAGMENT, get 420 (RFC 8489 §6.3.1.1; RFC 8656 §7.2 tells clients to retry
/// without it).
pub const KNOWN_REQUIRED: [u16; 19] = [
    0x0001, // MAPPED-ADDRESS
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    0x000C, // CHANNEL-NUMBER
    0x000D, // LIFETIME
    0x0012, // XOR-PEER-ADDRESS
    0x0013, // DATA
    0x0014, // REALM
    0x0015, // NONCE
    0x0016, // XOR-RELAYED-ADDRESS
    REQUESTED_ADDRESS_FAMILY,
    EVEN_PORT,
    0x0019, // REQUESTED-TRANSPORT
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001E, // USERHASH
    0x0020, // XOR-MAPPED-ADDRESS
    RESERVATION_TOKEN,
];

/// RFC 8656 §18.10 REQUESTED-ADDRESS-FAMILY (stun_codec has no decoder for it).
pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
/// RFC 8656 §18.8 EVEN-PORT (stun_codec has no decoder for it).
pub const EVEN_PORT: u16 = 0x0018;

/// The address family an Allocate asks for with REQUESTED-ADDRESS-FAMILY: `Some(true)`
/// for IPv4 (0x01), `Some(false)` for IPv6 (0x02), `None` without the attribute; another
/// value is the error (answered 440).
pub fn requested_family(datagram: &[u8]) -> Result<Option<bool>, u8> {
    match crate::stun::raw_attribute(datagram, REQUESTED_ADDRESS_FAMILY) {
        None => Ok(None),
        Some([0x01, ..]) => Ok(Some(true)),
        Some([0x02, ..]) => Ok(Some(false)),
        Some(other) => Err(other.first().copied().unwrap_or(0)),
    }
}

/// RFC 8656 §18.9 RESERVATION-TOKEN.
pub const RESERVATION_TOKEN: u16 = 0x0022;

/// EVEN-PORT of an Allocate (RFC 8656 §7.2: the relayed port must be even): `Some(true)`
/// when its R bit also asks to reserve the next port, `None` without the attribute.
pub fn even_port(datagram: &[u8]) -> Option<bool> {
    let value = crate::stun::raw_attribute(datagram, EVEN_PORT)?;
    Some(value.first().is_some_and(|b| b & 0x80 != 0))
}

/// The RESERVATION-TOKEN of an Allocate: `Some(None)` when it is not eight bytes long (no
/// reservation has such a token, so it is refused like an unknown one).
pub fn reservation_token(datagram: &[u8]) -> Option<Option<u64>> {
    let value = crate::stun::raw_attribute(datagram, RESERVATION_TOKEN)?;
    Some(<[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes))
}

/// The realm LANrage relays use.
pub const REALM: &str = "lanrage";

/// TURN REST credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Credentials for `id` valid until `expiry` (Unix seconds), signed with `secret`.
pub fn rest_credentials(secret: &[u8], id: &str, expiry: u64) -> Credentials {
    let username = format!("{expiry}:{id}");
    let password = rest_password(secret, &username);
    Credentials { username, password }
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry and user id of a REST username, if it has that form. coturn also accepts a
/// username that is only the expiry; so does this.
pub fn parse_rest_username(username: &str) -> Option<(u64, &str)> {
    match username.split_once(':') {
        Some((expiry, id)) => Some((expiry.parse().ok()?, id)),
        None => Some((username.parse().ok()?, "")),
    }
}

/// Decodes a STUN/TURN message; `None` for anything malformed.
pub fn decode(datagram: &[u8]) -> Option<TurnMessage> {
    MessageDecoder::<Attr>::new()
        .decode_from_bytes(datagram)
        .ok()?
        .ok()
}

/// Decodes a request on the relay; `None` for anything malformed.
pub fn decode_request(datagram: &[u8]) -> Option<TurnRequest> {
    MessageDecoder::<RequestAttr>::new()
        .decode_from_bytes(datagram)
        .ok()?
        .ok()
}

/// CHANNEL-NUMBER of a request, read from its bytes (RFC 5766 range).
pub fn channel_number(datagram: &[u8]) -> Option<u16> {
    let value = crate::stun::raw_attribute(datagram, ChannelNumber::CODEPOINT)?;
    let value = <[u8; 4]>::try_from(value).ok()?;
    let n = u16::from_be_bytes([value[0], value[1]]);
    (CHANNEL_MIN..=CHANNEL_MAX_RFC5766)
        .contains(&n)
        .then_some(n)
}

/// Encodes a message; `None` only if an attribute cannot be encoded (never for the
/// messages built in this crate and the relay).
pub fn encode(msg: TurnMessage) -> Option<Vec<u8>> {
    MessageEncoder::new().encode_into_bytes(msg).ok()
}

/// Adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (long-term credentials, RFC 8489
/// §9.2) to a request.
pub fn sign(
    msg: &mut TurnMessage,
    username: &str,
    realm: &str,
    nonce: &str,
    password: &str,
) -> Option<()> {
    let username = Username::new(username.to_owned()).ok()?;
    let realm = Realm::new(realm.to_owned()).ok()?;
    msg.add_attribute(username.clone());
    msg.add_attribute(realm.clone());
    msg.add_attribute(Nonce::new(nonce.to_owned()).ok()?);
    let mi = MessageIntegrity::new_long_term_credential(msg, &username, &realm, password).ok()?;
    msg.add_attribute(mi);
    Some(())
}

/// Frames `payload` as ChannelData (RFC 8656 §12.4), padded to a multiple of four.
pub fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(4 + payload.len().next_multiple_of(4));
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..usize::from(len)]);
    out.resize(4 + usize::from(len).next_multiple_of(4), 0);
    out
}

/// Splits ChannelData into its channel number and payload; `None` if the channel number
/// is out of range or the length field overruns the datagram.
pub fn parse_channel_data(datagram: &[u8]) -> Option<(u16, &[u8])> {
    let header = datagram.get(..4)?;
    let channel = u16::from_be_bytes([header[0], header[1]]);
    if !(CHANNEL_MIN..=CHANNEL_MAX_RFC5766).contains(&channel) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    Some((channel, datagram.get(4..4 + len)?))
}

/// A Send indication carrying `payload` to `peer`.
pub fn send_indication(txid: [u8; 12], peer: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let mut msg = Message::new(MessageClass::Indication, SEND, TransactionId::new(txid));
    msg.add_attribute(XorPeerAddress::new(peer));
    msg.add_attribute(Data::new(payload.to_vec()).ok()?);
    encode(msg)
}

/// A Data indication carrying `payload` from `peer`.
pub fn data_indication(txid: [u8; 12], peer: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let mut msg = Message::new(MessageClass::Indication, DATA, TransactionId::new(txid));
    msg.add_attribute(XorPeerAddress::new(peer));
    msg.add_attribute(Data::new(payload.to_vec()).ok()?);
    encode(msg)
}

/// RFC 8489 §6.2.1: initial retransmission timeout for requests.
const RTO: Duration = Duration::from_millis(500);
/// Sends of one request before it counts as lost.
const MAX_SENDS: u32 = 5;
/// How often an allocation is refreshed. Much shorter than its lifetime on purpose: the
/// refresh is also how a relay that restarted (and forgot the allocation) is noticed, and
/// the refresh keeps the NAT binding to the relay open.
const REFRESH_EVERY: Duration = Duration::from_secs(4);
/// After a failed allocation, the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// A refused permission is asked for again after this long.
const PERMISSION_RETRY: Duration = Duration::from_secs(30);
/// Permissions and channels are renewed this long before they lapse.
const RENEW_MARGIN: Duration = Duration::from_secs(60);
/// Padding for requests that carry no credentials yet: a relay answers an unauthenticated
/// request only with at most as many bytes as it received (no amplification), and its 401
/// with REALM and NONCE is about 70 bytes.
const SOFTWARE: &str = "LANrage TURN client; padding for an amplification-safe first request";

/// Where a client's allocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocationState {
    /// Asking for one.
    Allocating,
    /// Holding one at this relayed address.
    Allocated { relayed: SocketAddr },
    /// The last attempt failed; another follows.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Allocate,
    Refresh,
    Permission,
    ChannelBind { peer: SocketAddr, channel: u16 },
}

struct Request {
    purpose: Purpose,
    bytes: Vec<u8>,
    sends: u32,
    next_send: Instant,
    /// A request answered 401/438 is sent again once with fresh realm and nonce.
    reauthed: bool,
    /// The IPs a CreatePermission request covers.
    ips: Vec<IpAddr>,
}

struct ChannelState {
    number: u16,
    bound_until: Option<Instant>,
    pending: bool,
}

/// A TURN client for one relay, driven like every state machine in this crate: feed it
/// the relay's datagrams and timeouts, drain [`TurnClient::poll_transmit`] to the relay.
pub struct TurnClient {
    server: SocketAddr,
    creds: Credentials,
    realm: Option<String>,
    nonce: Option<String>,
    state: AllocationState,
    mapped: Option<SocketAddr>,
    next_refresh: Instant,
    retry_at: Option<Instant>,
    requests: HashMap<[u8; 12], Request>,
    /// Peer IPs that should hold a permission.
    wanted: BTreeSet<IpAddr>,
    permissions: HashMap<IpAddr, Instant>,
    /// IPs whose permission was refused or lost, and when to ask again.
    permission_retry: HashMap<IpAddr, Instant>,
    channels: HashMap<SocketAddr, ChannelState>,
    by_channel: HashMap<u16, SocketAddr>,
    next_channel: u16,
    transmits: VecDeque<Vec<u8>>,
    rng: StdRng,
    /// Allocations made so far (a relay restart shows as a second one).
    pub allocations: u64,
}

impl TurnClient {
    /// A client that starts allocating at once.
    pub fn new(server: SocketAddr, creds: Credentials, seed: u64, now: Instant) -> Self {
        let mut client = Self {
            server,
            creds,
            realm: None,
            nonce: None,
            state: AllocationState::Allocating,
            mapped: None,
            next_refresh: now + REFRESH_EVERY,
            retry_at: None,
            requests: HashMap::new(),
            wanted: BTreeSet::new(),
            permissions: HashMap::new(),
            permission_retry: HashMap::new(),
            channels: HashMap::new(),
            by_channel: HashMap::new(),
            next_channel: CHANNEL_MIN,
            transmits: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
            allocations: 0,
        };
        client.allocate(now);
        client
    }

    /// The relay's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn state(&self) -> AllocationState {
        self.state
    }

    /// The relayed transport address peers send to.
    pub fn relayed(&self) -> Option<SocketAddr> {
        match self.state {
            AllocationState::Allocated { relayed } => Some(relayed),
            _ => None,
        }
    }

    /// This client's address as the relay sees it (XOR-MAPPED-ADDRESS of the allocation).
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// The credentials requests are signed with.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// New credentials, used from the next request on.
    pub fn set_credentials(&mut self, creds: Credentials) {
        self.creds = creds;
    }

    /// The peer IPs that may send to the relayed address. Permissions for them are created
    /// (and kept fresh); others lapse.
    pub fn set_peers(&mut self, ips: impl IntoIterator<Item = IpAddr>, now: Instant) {
        // The relay's own address is never a peer (relays refuse it: no loops).
        let server = self.server.ip();
        self.wanted = ips.into_iter().filter(|ip| *ip != server).collect();
        self.permissions.retain(|ip, _| self.wanted.contains(ip));
        self.create_permissions(now);
    }

    /// Handles a datagram that came from the relay. Returns the payload and the peer it
    /// came from when the datagram carried peer data.
    pub fn handle_datagram(
        &mut self,
        datagram: &[u8],
        now: Instant,
    ) -> Option<(SocketAddr, Vec<u8>)> {
        if let Some((channel, payload)) = parse_channel_data(datagram) {
            let peer = *self.by_channel.get(&channel)?;
            return Some((peer, payload.to_vec()));
        }
        let msg = decode(datagram)?;
        if msg.class() == MessageClass::Indication {
            if msg.method() != DATA {
                return None;
            }
            let peer = msg.get_attribute::<XorPeerAddress>()?.address();
            let data = msg.get_attribute::<Data>()?.data().to_vec();
            return Some((peer, data));
        }
        self.handle_response(&msg, now);
        None
    }

    /// Frames `payload` for `peer`: ChannelData once a channel is bound, a Send indication
    /// until then (and the binding is requested). Permission is requested if missing.
    pub fn send(&mut self, peer: SocketAddr, payload: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.relayed()?;
        if !self.wanted.contains(&peer.ip()) && peer.ip() != self.server.ip() {
            self.wanted.insert(peer.ip());
            self.create_permissions(now);
        }
        if let Some(ch) = self.channels.get(&peer)
            && ch.bound_until.is_some_and(|t| t > now)
        {
            return Some(channel_data(ch.number, payload));
        }
        self.bind_channel(peer, now);
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        send_indication(txid, peer, payload)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.retry_at
            && now >= t
        {
            self.retry_at = None;
            self.allocate(now);
        }
        if self.relayed().is_some() && now >= self.next_refresh {
            self.next_refresh = now + REFRESH_EVERY;
            self.request(Purpose::Refresh, now, Vec::new(), |msg| {
                msg.add_attribute(Lifetime::from_u32(DEFAULT_LIFETIME.as_secs() as u32));
            });
        }
        if self.relayed().is_some() {
            let renew: Vec<IpAddr> = self
                .permissions
                .iter()
                .filter(|(_, t)| **t <= now + RENEW_MARGIN)
                .map(|(ip, _)| *ip)
                .collect();
            for ip in renew {
                self.permissions.remove(&ip);
            }
            self.create_permissions(now);
            let rebind: Vec<SocketAddr> = self
                .channels
                .iter()
                .filter(|(_, c)| {
                    !c.pending && c.bound_until.is_some_and(|t| t <= now + RENEW_MARGIN)
                })
                .map(|(p, _)| *p)
                .collect();
            for peer in rebind {
                self.bind_channel(peer, now);
            }
        }
        let mut lost = Vec::new();
        for (txid, r) in &mut self.requests {
            if now < r.next_send {
                continue;
            }
            if r.sends >= MAX_SENDS {
                lost.push(*txid);
                continue;
            }
            r.sends += 1;
            r.next_send = now + RTO * 2u32.pow(r.sends - 1).min(4);
            self.transmits.push_back(r.bytes.clone());
        }
        for txid in lost {
            if let Some(r) = self.requests.remove(&txid) {
                self.failed(r, now);
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = self.requests.values().map(|r| r.next_send).min();
        let refresh = self.relayed().map(|_| self.next_refresh);
        [requests, refresh, self.retry_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next datagram for the relay.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    fn allocate(&mut self, now: Instant) {
        self.state = AllocationState::Allocating;
        self.permissions.clear();
        self.channels.clear();
        self.by_channel.clear();
        self.requests.clear();
        self.request(Purpose::Allocate, now, Vec::new(), |msg| {
            msg.add_attribute(RequestedTransport::new(UDP_TRANSPORT));
            msg.add_attribute(Lifetime::from_u32(DEFAULT_LIFETIME.as_secs() as u32));
        });
    }

    fn create_permissions(&mut self, now: Instant) {
        if self.relayed().is_none() {
            return;
        }
        let pending: BTreeSet<IpAddr> = self
            .requests
            .values()
            .filter(|r| r.purpose == Purpose::Permission)
            .flat_map(|r| r.ips.iter().copied())
            .collect();
        let missing: Vec<IpAddr> = self
            .wanted
            .iter()
            .filter(|ip| !self.permissions.contains_key(ip) && !pending.contains(ip))
            .filter(|ip| self.permission_retry.get(ip).is_none_or(|t| now >= *t))
            .filter(|ip| ip.is_ipv4() == self.server.is_ipv4())
            .copied()
            .collect();
        // Several XOR-PEER-ADDRESS attributes per request (RFC 8656 §10.1); a handful per
        // request keeps it well under the MTU.
        for chunk in missing.chunks(8) {
            let ips = chunk.to_vec();
            self.request(Purpose::Permission, now, ips.clone(), |msg| {
                for ip in &ips {
                    msg.add_attribute(XorPeerAddress::new(SocketAddr::new(*ip, 0)));
                }
            });
        }
    }

    fn bind_channel(&mut self, peer: SocketAddr, now: Instant) {
        if peer.is_ipv4() != self.server.is_ipv4() {
            return;
        }
        let number = match self.channels.get_mut(&peer) {
            Some(c) if c.pending => return,
            Some(c) => {
                c.pending = true;
                c.number
            }
            None => {
                if self.by_channel.len() > usize::from(CHANNEL_MAX - CHANNEL_MIN) {
                    return;
                }
                while self.by_channel.contains_key(&self.next_channel) {
                    self.next_channel = if self.next_channel >= CHANNEL_MAX {
                        CHANNEL_MIN
                    } else {
                        self.next_channel + 1
                    };
                }
                let number = self.next_channel;
                self.by_channel.insert(number, peer);
                self.channels.insert(
                    peer,
                    ChannelState {
                        number,
                        bound_until: None,
                        pending: true,
                    },
                );
                number
            }
        };
        self.request(
            Purpose::ChannelBind {
                peer,
                channel: number,
            },
            now,
            Vec::new(),
            |msg| {
                if let Ok(n) = ChannelNumber::new(number) {
                    msg.add_attribute(n);
                }
                msg.add_attribute(XorPeerAddress::new(peer));
            },
        );
    }

    fn method(purpose: Purpose) -> Method {
        match purpose {
            Purpose::Allocate => ALLOCATE,
            Purpose::Refresh => REFRESH,
            Purpose::Permission => CREATE_PERMISSION,
            Purpose::ChannelBind { .. } => CHANNEL_BIND,
        }
    }

    fn build(
        &mut self,
        purpose: Purpose,
        add: &dyn Fn(&mut TurnMessage),
    ) -> Option<([u8; 12], Vec<u8>)> {
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        let mut msg = Message::new(
            MessageClass::Request,
            Self::method(purpose),
            TransactionId::new(txid),
        );
        add(&mut msg);
        match (&self.realm, &self.nonce) {
            (Some(realm), Some(nonce)) => {
                let (realm, nonce) = (realm.clone(), nonce.clone());
                sign(
                    &mut msg,
                    &self.creds.username,
                    &realm,
                    &nonce,
                    &self.creds.password,
                )?;
            }
            _ => msg.add_attribute(Software::new(SOFTWARE.to_owned()).ok()?),
        }
        Some((txid, encode(msg)?))
    }

    fn request(
        &mut self,
        purpose: Purpose,
        now: Instant,
        ips: Vec<IpAddr>,
        add: impl Fn(&mut TurnMessage),
    ) {
        let Some((txid, bytes)) = self.build(purpose, &add) else {
            tracing::debug!(?purpose, "TURN request could not be encoded");
            return;
        };
        self.transmits.push_back(bytes.clone());
        self.requests.insert(
            txid,
            Request {
                purpose,
                bytes,
                sends: 1,
                next_send: now + RTO,
                reauthed: false,
                ips,
            },
        );
        // Kept for a re-sign after a 401/438: the closure is not stored, so the request is
        // rebuilt from its purpose (see `resend_signed`).
    }

    /// Rebuilds a request with the current realm and nonce (after 401 or 438).
    fn resend_signed(&mut self, r: Request, now: Instant) {
        let purpose = r.purpose;
        let ips = r.ips.clone();
        match purpose {
            Purpose::Allocate => {
                let Some((txid, bytes)) = self.build(purpose, &|msg| {
                    msg.add_attribute(RequestedTransport::new(UDP_TRANSPORT));
                    msg.add_attribute(Lifetime::from_u32(DEFAULT_LIFETIME.as_secs() as u32));
                }) else {
                    return;
                };
                self.push_signed(txid, bytes, r, now);
            }
            Purpose::Refresh => {
                let Some((txid, bytes)) = self.build(purpose, &|msg| {
                    msg.add_attribute(Lifetime::from_u32(DEFAULT_LIFETIME.as_secs() as u32));
                }) else {
                    return;
                };
                self.push_signed(txid, bytes, r, now);
            }
            Purpose::Permission => {
                let Some((txid, bytes)) = self.build(purpose, &|msg| {
                    for ip in &ips {
                        msg.add_attribute(XorPeerAddress::new(SocketAddr::new(*ip, 0)));
                    }
                }) else {
                    return;
                };
                self.push_signed(txid, bytes, r, now);
            }
            Purpose::ChannelBind { peer, channel } => {
                let Some((txid, bytes)) = self.build(purpose, &|msg| {
                    if let Ok(n) = ChannelNumber::new(channel) {
                        msg.add_attribute(n);
                    }
                    msg.add_attribute(XorPeerAddress::new(peer));
                }) else {
                    return;
                };
                self.push_signed(txid, bytes, r, now);
            }
        }
    }

    fn push_signed(&mut self, txid: [u8; 12], bytes: Vec<u8>, r: Request, now: Instant) {
        self.transmits.push_back(bytes.clone());
        self.requests.insert(
            txid,
            Request {
                bytes,
                sends: 1,
                next_send: now + RTO,
                reauthed: true,
                ..r
            },
        );
    }

    fn handle_response(&mut self, msg: &TurnMessage, now: Instant) {
        let txid = *msg.transaction_id().as_bytes();
        let Some(r) = self.requests.remove(&txid) else {
            return;
        };
        if msg.method() != Self::method(r.purpose) || msg.method() == BINDING {
            self.requests.insert(txid, r);
            return;
        }
        // Responses to signed requests must carry a valid MESSAGE-INTEGRITY; errors before
        // authentication (401) cannot.
        if msg.class() == MessageClass::SuccessResponse && !self.integrity_ok(msg) {
            self.requests.insert(txid, r);
            return;
        }
        match msg.class() {
            MessageClass::SuccessResponse => self.succeeded(r, msg, now),
            MessageClass::ErrorResponse => {
                let code = msg.get_attribute::<ErrorCode>().map_or(0, ErrorCode::code);
                if matches!(code, 401 | 438) && !r.reauthed {
                    if let Some(realm) = msg.get_attribute::<Realm>() {
                        self.realm = Some(realm.text().to_owned());
                    }
                    if let Some(nonce) = msg.get_attribute::<Nonce>() {
                        self.nonce = Some(nonce.value().to_owned());
                    }
                    if self.realm.is_some() && self.nonce.is_some() {
                        self.resend_signed(r, now);
                        return;
                    }
                }
                tracing::debug!(server = %self.server, code, purpose = ?r.purpose, "TURN request refused");
                if code == 437 && r.purpose == Purpose::Allocate && self.relayed().is_some() {
                    // A retransmitted Allocate answered after our success; nothing to do.
                    return;
                }
                self.failed(r, now);
            }
            _ => self.requests.insert(txid, r).map_or((), |_| ()),
        }
    }

    fn integrity_ok(&self, msg: &TurnMessage) -> bool {
        let (Some(realm), Some(mi)) = (&self.realm, msg.get_attribute::<MessageIntegrity>()) else {
            return false;
        };
        let (Ok(user), Ok(realm)) = (
            Username::new(self.creds.username.clone()),
            Realm::new(realm.clone()),
        ) else {
            return false;
        };
        mi.check_long_term_credential(&user, &realm, &self.creds.password)
            .is_ok()
    }

    fn succeeded(&mut self, r: Request, msg: &TurnMessage, now: Instant) {
        match r.purpose {
            Purpose::Allocate => {
                let Some(relayed) = msg.get_attribute::<XorRelayAddress>().map(|a| a.address())
                else {
                    self.failed(r, now);
                    return;
                };
                self.mapped = msg.get_attribute::<XorMappedAddress>().map(|a| a.address());
                self.state = AllocationState::Allocated { relayed };
                self.allocations += 1;
                self.next_refresh = now + REFRESH_EVERY;
                tracing::debug!(server = %self.server, %relayed, "TURN allocation");
                self.create_permissions(now);
            }
            Purpose::Refresh => {}
            Purpose::Permission => {
                for ip in r.ips {
                    self.permissions.insert(ip, now + PERMISSION_LIFETIME);
                }
            }
            Purpose::ChannelBind { peer, channel } => {
                if let Some(c) = self.channels.get_mut(&peer)
                    && c.number == channel
                {
                    c.pending = false;
                    c.bound_until = Some(now + CHANNEL_LIFETIME);
                }
            }
        }
    }

    fn failed(&mut self, r: Request, now: Instant) {
        match r.purpose {
            Purpose::Allocate | Purpose::Refresh => {
                // No allocation (or the relay forgot it, e.g. after a restart): start over.
                self.state = AllocationState::Failed;
                self.permissions.clear();
                self.channels.clear();
                self.by_channel.clear();
                self.requests.clear();
                self.realm = None;
                self.nonce = None;
                self.retry_at = Some(
                    now + if r.purpose == Purpose::Refresh {
                        Duration::ZERO
                    } else {
                        RETRY_AFTER
                    },
                );
            }
            Purpose::Permission => {
                // Refused (403) or lost: ask again later, one IP at a time, so one bad
                // address does not hold up the others.
                if r.ips.len() > 1 {
                    for ip in r.ips {
                        self.request(Purpose::Permission, now, vec![ip], |msg| {
                            msg.add_attribute(XorPeerAddress::new(SocketAddr::new(ip, 0)));
                        });
                    }
                } else {
                    for ip in r.ips {
                        self.permission_retry.insert(ip, now + PERMISSION_RETRY);
                    }
                }
            }
            Purpose::ChannelBind { peer, channel } => {
                if self
                    .channels
                    .get(&peer)
                    .is_some_and(|c| c.number == channel)
                {
                    self.channels.remove(&peer);
                    self.by_channel.remove(&channel);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_the_turn_rest_form() {
        // A fixed secret and user.
        let c = rest_credentials(b"north", "alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        // Computed independently with: printf '1700000000:alice' | openssl dgst -sha1
        //   -hmac north -binary | base64
        assert_eq!(c.password, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
        assert_eq!(
            parse_rest_username("1700000000:alice"),
            Some((1_700_000_000, "alice"))
        );
        assert_eq!(parse_rest_username("1700000000"), Some((1_700_000_000, "")));
        assert_eq!(parse_rest_username("alice"), None);
    }

    #[test]
    fn channel_data_round_trips_and_rejects_overruns() {
        let framed = channel_data(0x4001, b"hello");
        assert_eq!(framed.len(), 4 + 8);
        assert_eq!(parse_channel_data(&framed), Some((0x4001, &b"hello"[..])));
        assert_eq!(parse_channel_data(&[0x40, 0x01, 0x00, 0x09, 1, 2]), None);
        assert_eq!(parse_channel_data(&[0x80, 0x00, 0x00, 0x00]), None);
        assert_eq!(parse_channel_data(&[0x40]), None);
    }
}
