//! The control plane's HTTP+JSON API under `/v1` and its WebSocket messages.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{DeviceKey, PartyId, PartySecret};

/// `POST /v1/auth/challenge`: a device asks to prove it holds the private key of `public_key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeRequest {
    pub public_key: DeviceKey,
}

/// The server's ephemeral X25519 key and a nonce; the device answers with a MAC keyed by
/// the Diffie-Hellman secret of its private key and `server_public`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub challenge_id: String,
    pub server_public: DeviceKey,
    /// 32 bytes, standard base64.
    pub nonce: String,
    pub expires_in_s: u64,
}

/// `POST /v1/auth/token`: the proof for a challenge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    pub challenge_id: String,
    pub public_key: DeviceKey,
    /// 32 bytes, standard base64.
    pub proof: String,
}

/// A bearer token for the other routes; renew it before `expires_in_s` passes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_in_s: u64,
}

/// `POST /v1/parties`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatePartyRequest {
    pub name: String,
    #[serde(default)]
    pub max_members: Option<u32>,
    pub player_name: String,
}

/// `POST /v1/parties/{id}/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinPartyRequest {
    #[serde(default)]
    pub secret: Option<PartySecret>,
    pub player_name: String,
}

/// `POST /v1/parties/{id}/kick`: `member` is a player name or a public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KickRequest {
    pub member: String,
}

/// `POST /v1/parties/{id}/lock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockRequest {
    pub locked: bool,
}

/// `PUT /v1/parties/{id}/candidates`: the addresses where this device's UDP socket may be
/// reached: host, server-reflexive and relayed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidatesRequest {
    pub candidates: Vec<SocketAddr>,
    /// The subset of `candidates` that are TURN relayed addresses.
    #[serde(default)]
    pub relayed: Vec<SocketAddr>,
    /// How this device's NAT maps its socket, once probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatHint>,
    /// Ids of the games running on this device (game profiles), for the party to see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub games: Vec<String>,
}

/// Most games one member may report.
pub const MAX_GAMES: usize = 8;

/// Whether `id` is a well-formed game id: 1 to 64 of `a-z`, `0-9`, `_`.
pub fn valid_game_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// How a member's NAT maps its UDP socket, as the member's own STUN probe measured it: what
/// a peer needs to punch through when one of the two NATs is hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatHint {
    /// The NAT gives the socket a new public port for each destination (RFC 4787
    /// endpoint-dependent mapping, "symmetric"); false when the mapping is endpoint
    /// independent.
    pub hard: bool,
    /// The server-reflexive address (its IP is all that counts when `hard`).
    pub public_addr: SocketAddr,
}

/// A party as its members see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartyView {
    pub id: PartyId,
    pub name: String,
    /// Grows by one on every membership change; a client keeps the highest it has seen.
    pub version: u64,
    pub host: DeviceKey,
    pub locked: bool,
    pub max_members: Option<u32>,
    /// The party network in CIDR notation, e.g. `10.66.0.0/16`.
    pub network: String,
    pub members: Vec<MemberView>,
}

/// One member of a party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub public_key: DeviceKey,
    pub name: String,
    pub virtual_ip: Ipv4Addr,
    /// Unix milliseconds.
    pub joined_at: i64,
    /// False once the member has been silent for 90 s.
    pub online: bool,
    pub candidates: Vec<SocketAddr>,
    /// The subset of `candidates` that are TURN relayed addresses.
    #[serde(default)]
    pub relayed: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatHint>,
    /// The games the member is playing (profile ids).
    #[serde(default)]
    pub games: Vec<String>,
}

/// `GET /v1/ice`: the STUN and TURN servers this device should use, with TURN REST
/// credentials issued for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IceServers {
    pub stun: Vec<SocketAddr>,
    pub turn: Vec<TurnServer>,
    /// Seconds the credentials stay valid.
    pub ttl_secs: u64,
}

/// One TURN server and the credentials for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnServer {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
    /// Where the relay said it is, e.g. `eu-west`; empty for configured servers.
    #[serde(default)]
    pub region: String,
}

/// `POST /v1/relays`: a relay announces itself (and heartbeats with the same call). Signed
/// with the relay's own Ed25519 key, which the control plane must list as trusted: header
/// `Authorization: LanrageRelay <key>:<unix>:<nonce>:<signature>` over the method, path,
/// body digest, time and nonce (`lanrage_core::turn::RelaySigner`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayRegistration {
    /// Stable id of the relay process (a relay restarting under the same id replaces
    /// its entry).
    pub id: String,
    #[serde(default)]
    pub region: String,
    /// Addresses that answer STUN and TURN.
    pub addrs: Vec<SocketAddr>,
    /// Whether TURN is served (else STUN only).
    pub turn: bool,
    pub allocations: u64,
    /// Allocations this relay can hold in all (in use + still possible).
    pub capacity: u64,
    /// Shutting down or refusing new allocations: handed to nobody.
    #[serde(default)]
    pub draining: bool,
}

/// Answer to `POST /v1/relays`: the TURN user ids whose credentials the relay must refuse
/// (members who left or were removed), each until the last credential issued for it expired.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayHeartbeatReply {
    #[serde(default)]
    pub revoked: Vec<Revocation>,
}

/// One revoked TURN REST user id (`<device key prefix>.<party id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub user: String,
    /// Unix seconds; credentials of `user` expiring at or before this are refused.
    pub until: u64,
}

/// Reply to create and join: the party and its invite code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartyResponse {
    pub party: PartyView,
    pub invite: String,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable, e.g. `wrong_secret`, `party_full`.
    pub code: String,
    /// One human sentence.
    pub error: String,
}

/// Messages the control plane pushes over `GET /v1/ws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The party changed (or the socket just connected): the full current view.
    Party { party: PartyView },
    /// This device is no longer a member (kicked, expired, or the party is gone).
    Removed { party: PartyId, reason: String },
    /// A signalling message from another member.
    Signal {
        from: DeviceKey,
        payload: serde_json::Value,
    },
    /// A message from this client could not be handled.
    Error { error: String },
}

/// Messages a client sends over `GET /v1/ws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Forward `payload` to member `to` of a party both are in.
    Signal {
        to: DeviceKey,
        payload: serde_json::Value,
    },
}
