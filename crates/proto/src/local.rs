//! The daemon's local API (loopback only), shared by the daemon and the CLI.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::{DeviceKey, PartyId};

/// Name of the file in the state directory that holds the local API token.
pub const API_TOKEN_FILE: &str = "api.token";
/// Header carrying the local API token on mutating calls.
pub const API_TOKEN_HEADER: &str = "x-lanrage-token";

/// How packets reach a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    Direct,
    Relay,
    Connecting,
    Unreachable,
}

impl PathKind {
    /// The name scripts see.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
            PathKind::Connecting => "connecting",
            PathKind::Unreachable => "unreachable",
        }
    }
}

/// Which way a member's latency is going over the last ten seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    Improving,
    #[default]
    Stable,
    Degrading,
}

/// `GET /api/v1/status`. Field names are a contract: scripts depend on them.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub virtual_ip: Option<Ipv4Addr>,
    pub public_key: DeviceKey,
    pub name: String,
    /// True when this daemon runs its own control plane.
    pub host_mode: bool,
    pub control_url: String,
    /// `connected`, `connecting` or the last error talking to the control plane.
    pub control: String,
    pub party: Option<PartyStatus>,
    pub wireguard: WireguardStatus,
    /// What the STUN servers saw (`None` without `--stun` or before the first answer).
    pub nat: Option<NatStatus>,
    /// Relayed addresses this daemon holds on TURN relays (its fallback candidates).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub relayed: Vec<SocketAddr>,
    /// The port the home router forwards to this daemon, when it grants one.
    #[serde(default)]
    pub port_mapping: Option<PortMappingStatus>,
    /// Games running on this device.
    #[serde(default)]
    pub games: Vec<crate::games::Detection>,
}

/// A port mapping granted by the default gateway.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortMappingStatus {
    /// `pcp` or `nat-pmp`.
    pub protocol: String,
    /// The router's public address and port that forward here (a candidate for peers).
    #[schema(value_type = String)]
    pub external: SocketAddr,
    #[schema(value_type = String, format = Ipv4)]
    pub gateway: std::net::Ipv4Addr,
    /// Seconds until the lease ends unless renewed (it is renewed at half).
    pub expires_in_s: u64,
}

/// This device's NAT as classified through STUN (RFC 4787 terms).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NatStatus {
    /// `endpoint_independent`, `address_dependent`, `address_and_port_dependent`,
    /// `endpoint_dependent` (dependent, granularity unknown) or `unknown`.
    pub mapping: String,
    /// `unknown` until a server can test it.
    pub filtering: String,
    #[schema(value_type = Option<String>)]
    pub public_addr: Option<SocketAddr>,
    pub port_preserved: Option<bool>,
    /// How long the NAT keeps an idle UDP binding (RFC 5780 §4.6), once measured.
    #[serde(default)]
    pub binding_lifetime: Option<BindingLifetime>,
    /// How often paths that only need their NAT binding held open are probed, in seconds:
    /// half the measured lifetime, 1–25 s (5 s until measured).
    #[serde(default)]
    pub keepalive_s: f64,
}

/// The NAT's idle binding lifetime, as a bracket.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BindingLifetime {
    /// The longest idle time a binding survived.
    pub at_least_s: f64,
    /// The idle time it did not survive; `None` while measuring or above 180 s.
    pub below_s: Option<f64>,
    /// Still measuring (waits grow by half from 2 s up to 3 minutes).
    pub measuring: bool,
}

/// The party this daemon is in.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartyStatus {
    pub id: PartyId,
    pub name: String,
    /// The host's player name.
    pub host: String,
    pub host_public_key: DeviceKey,
    pub is_host: bool,
    /// This device's name in this party (the settings' name applies to the next party).
    #[serde(default)]
    pub player_name: String,
    pub locked: bool,
    pub version: u64,
    /// Every member but this daemon.
    pub members: Vec<MemberStatus>,
}

/// Another member as this daemon sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberStatus {
    pub name: String,
    #[schema(value_type = String, format = Ipv4)]
    pub virtual_ip: Ipv4Addr,
    pub public_key: DeviceKey,
    pub path: PathKind,
    /// Round-trip time through the tunnel: a moving average (α = 0.3) of each second's
    /// median; `None` until measured.
    pub latency_ms: Option<f64>,
    /// Mean variation between consecutive round trips (RFC 3550 §6.4.1).
    #[serde(default)]
    pub jitter_ms: Option<f64>,
    /// Probes lost over the last 30 seconds, in percent.
    #[serde(default)]
    pub loss_pct: Option<f64>,
    /// Connection quality 0–100 (docs/observability.md gives the formula).
    #[serde(default)]
    pub quality: Option<u8>,
    #[serde(default)]
    pub trend: Trend,
    /// Traffic through the tunnel each way: bytes and packets.
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
    #[serde(default)]
    pub rx_packets: u64,
    #[serde(default)]
    pub tx_packets: u64,
    pub online: bool,
    /// Where packets to the member go: its address, or the address a relay sees it at.
    #[schema(value_type = Option<String>)]
    pub endpoint: Option<SocketAddr>,
    /// The relay address traffic passes through, when the path is relayed.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub relay: Option<SocketAddr>,
    /// How often the path to this member changed (start, upgrades, failovers).
    #[serde(default)]
    pub path_changes: u64,
    /// What the member is playing.
    #[serde(default)]
    pub games: Vec<PlayingGame>,
}

/// A game a member plays: its profile id and name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlayingGame {
    pub id: String,
    pub name: String,
}

/// `GET /api/v1/games`: what runs here, what the party plays, and what is applied.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GamesStatus {
    /// Games running on this device, most confident first.
    pub detected: Vec<crate::games::Detection>,
    /// Games other members play (profile ids).
    pub party: Vec<String>,
    /// The tuning in force (`None` while nobody in the party plays a known game).
    pub tuning: Option<GameTuning>,
    /// When the machine was last scanned (Unix ms), and the CPU the scan took.
    pub last_scan_ms: u64,
    pub scan_cpu_us: u64,
    pub scan_interval_s: f64,
}

/// What the running games changed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GameTuning {
    /// Ports whose packets go first and carry DSCP EF (46).
    pub priority_ports: Vec<crate::games::PortRange>,
    pub dscp: u8,
    /// Discovery ports and groups LAN emulation carries for the games.
    pub lan_ports: Vec<u16>,
    #[schema(value_type = Vec<String>, format = Ipv4)]
    pub lan_groups: Vec<Ipv4Addr>,
    pub mtu: u16,
    pub keepalive_s: f64,
}

/// `GET /api/v1/games/profiles`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProfilesResponse {
    pub profiles: Vec<crate::games::Profile>,
    /// Problems in profile files (each skipped game or file).
    pub errors: Vec<crate::games::ProfileError>,
}

/// The data plane's own view: what WireGuard actually has configured.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WireguardStatus {
    pub listen_port: u16,
    pub interface: Option<String>,
    pub peers: Vec<WireguardPeer>,
    /// Decrypted packets dropped because their inner source was not the sender's virtual IP.
    pub dropped_spoofed: u64,
}

/// One configured WireGuard peer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WireguardPeer {
    pub public_key: DeviceKey,
    #[schema(value_type = String, format = Ipv4)]
    pub virtual_ip: Ipv4Addr,
    #[schema(value_type = Option<String>)]
    pub endpoint: Option<SocketAddr>,
    pub last_handshake_s: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// `POST /api/v1/party/create`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[schema(schema_with = schema::party_name)]
    pub name: String,
    /// 2 to 250 (the control plane's largest party).
    #[serde(default)]
    #[schema(minimum = 2, maximum = 250)]
    pub max_members: Option<u32>,
    #[serde(default)]
    #[schema(schema_with = schema::player_name)]
    pub player_name: Option<String>,
}

/// `POST /api/v1/party/join`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// `lr1-` and base64url: 24 bytes of party id and secret and the control plane's URL
    /// (8 to 256 bytes). A code of this shape that names no party is a 404.
    #[schema(min_length = 47, max_length = 378, pattern = "^lr1-[A-Za-z0-9_-]+$")]
    pub invite: String,
    #[serde(default)]
    #[schema(schema_with = schema::player_name)]
    pub player_name: Option<String>,
}

/// `POST /api/v1/party/kick`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KickRequest {
    pub member: String,
}

/// `POST /api/v1/party/lock`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockRequest {
    pub locked: bool,
}

/// Reply of create, join and invite.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InviteResponse {
    pub invite: String,
    pub party_id: PartyId,
    pub party_name: String,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub virtual_ip: Option<Ipv4Addr>,
}

/// Body of every local API error: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LocalError {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code for programs and one sentence, with what to do, for
/// people.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `method_not_allowed`,
    /// `payload_too_large`, `not_in_party`, `already_in_party`, `invite_invalid`,
    /// `invite_expired`, `party_full`, `party_locked`, `not_host`, `member_not_found`,
    /// `control_unreachable`, `unavailable`, `storage`, …
    pub code: String,
    pub message: String,
}

impl LocalError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// The answer of calls that only succeed or fail (leave, kick, lock).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Done {
    pub ok: bool,
}

/// `GET /api/v1/settings`: what the player can change, kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Settings {
    /// The name other members see, used for the next party created or joined.
    pub player_name: String,
    pub lan: LanSettings,
}

/// `PATCH /api/v1/settings`: absent fields stay as they are; lists replace the whole list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::player_name)]
    pub player_name: Option<String>,
    // serde would build the struct from an array too; the document says object.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object_or_null"
    )]
    pub lan: Option<LanSettingsUpdate>,
}

/// Part of `SettingsUpdate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LanSettingsUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::ports_or_null)]
    pub ports: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::groups_or_null)]
    pub groups: Option<Vec<Ipv4Addr>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4294967295_u64, format = Int64)]
    pub rate_packets_per_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1500, maximum = 4294967295_u64, format = Int64)]
    pub rate_bytes_per_s: Option<u32>,
}

/// `GET /api/v1/quality`: each member's latency and path, one sample a second for the
/// last five minutes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Quality {
    pub peers: Vec<PeerSeries>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerSeries {
    pub public_key: DeviceKey,
    pub name: String,
    pub samples: Vec<QualitySample>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QualitySample {
    pub at_unix_ms: u64,
    pub latency_ms: Option<f64>,
    pub path: PathKind,
}

/// `GET /api/v1/quality/history?window=5m|1h|24h`: each member's latency, jitter, loss
/// and score over the window, from the daemon's bounded series (kept across restarts at
/// one-minute and one-hour resolution).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QualityHistory {
    pub window_secs: u64,
    /// Width of each point.
    pub step_secs: u64,
    pub peers: Vec<PeerHistory>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerHistory {
    pub public_key: DeviceKey,
    /// The member's name (the last one seen, for members who left).
    pub name: String,
    /// Whether the member is in the party now.
    pub present: bool,
    /// `latency_ms`, `jitter_ms`, `loss_pct`, `quality`.
    pub metrics: Vec<MetricHistory>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricHistory {
    pub metric: String,
    /// Over the whole window; `None` without samples.
    pub summary: Option<HistoryPoint>,
    /// Oldest first; a period without samples has no point.
    pub points: Vec<HistoryPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryPoint {
    /// Start of the period.
    pub at_unix_s: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Samples (one a second) in the period.
    pub count: u32,
}

/// The `alert` event: a member's latency or loss crossed its threshold (`raised`), or came
/// back under it (`raised: false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    pub public_key: DeviceKey,
    pub name: String,
    /// `latency` or `loss`.
    pub metric: String,
    pub value: f64,
    pub threshold: f64,
    pub raised: bool,
    pub at_unix_ms: u64,
}

/// The `sample` event: every member's latency and path at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sample {
    pub at_unix_ms: u64,
    pub peers: Vec<PeerSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PeerSample {
    pub public_key: DeviceKey,
    pub latency_ms: Option<f64>,
    pub path: PathKind,
}

/// A message on the `/api/v1/events` WebSocket: `{"type": …, "data": …}`. On connect the
/// daemon sends `status`, `games`, `lan`, `settings` and `quality`; then each again when it
/// changes, a `sample` every second, and `lan_events` as broadcasts pass.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum Event {
    Status(Status),
    Games(GamesStatus),
    Lan(LanStatus),
    Settings(Settings),
    Quality(Quality),
    Sample(Sample),
    LanEvents(Vec<LanEvent>),
    Alert(Alert),
}

/// LAN emulation settings the player controls (`lanrage lan …`), kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LanSettings {
    /// Forward every UDP port and every multicast group.
    #[serde(default)]
    pub all: bool,
    /// Also catch discovery sent out of the physical interface.
    #[serde(default)]
    pub physical: bool,
    /// The allow-list of UDP ports, besides the defaults and the running games' profiles.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// The allow-list of multicast groups.
    #[serde(default)]
    #[schema(value_type = Vec<String>, format = Ipv4)]
    pub groups: Vec<Ipv4Addr>,
    /// Per-source limits against broadcast storms.
    pub rate_packets_per_s: u32,
    pub rate_bytes_per_s: u32,
}

/// `POST /api/v1/lan/settings`: a change; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LanUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = schema::ports)]
    pub allow_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = schema::ports)]
    pub remove_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = schema::groups)]
    pub allow_groups: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(schema_with = schema::groups)]
    pub remove_groups: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 4294967295_u64, format = Int64)]
    pub rate_packets_per_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1500, maximum = 4294967295_u64, format = Int64)]
    pub rate_bytes_per_s: Option<u32>,
}

/// `GET /api/v1/lan`: what is forwarded and the counters.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanStatus {
    pub settings: LanSettings,
    /// Every forwarded port: defaults, allow-list and running games' profiles (unless
    /// `settings.all`).
    pub forwarded_ports: Vec<u16>,
    /// Every multicast group routed into the party.
    #[schema(value_type = Vec<String>, format = Ipv4)]
    pub forwarded_groups: Vec<Ipv4Addr>,
    pub default_ports: Vec<u16>,
    pub profile_ports: Vec<u16>,
    /// Groups local programs joined on the party interface.
    #[schema(value_type = Vec<String>, format = Ipv4)]
    pub joined_groups: Vec<Ipv4Addr>,
    /// Whether the physical interface is watched, and why not if it should be.
    pub physical_capture: bool,
    pub physical_error: Option<String>,
    pub counters: LanCounters,
}

/// LAN emulation counters since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanCounters {
    /// Broadcast/multicast UDP packets this device sent (TUN or physical).
    pub captured: u64,
    /// Of those, caught on the physical interface.
    pub captured_physical: u64,
    /// Captured packets sent to at least one member.
    pub forwarded: u64,
    /// Copies sent, one per recipient.
    pub copies: u64,
    /// Packets that arrived from members.
    pub received: u64,
    /// Of those, written to the party interface.
    pub injected: u64,
    /// Captured packets to a port (or group) not forwarded.
    pub not_forwarded: u64,
    pub deduplicated: u64,
    pub rate_limited: u64,
    /// Not UDP, fragmented or malformed.
    pub unsupported: u64,
}

/// `GET /api/v1/lan/trace`: the last broadcast and multicast events, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanTrace {
    pub events: Vec<LanEvent>,
}

/// One broadcast or multicast packet and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanEvent {
    pub at_unix_ms: u64,
    /// `out` (this device sent it) or `in` (a member sent it).
    pub direction: String,
    /// `tun`, `physical` or `peer`.
    pub via: String,
    /// `broadcast`, `limited-broadcast` or `multicast`.
    pub kind: String,
    #[schema(value_type = String)]
    pub src: SocketAddrV4,
    #[schema(value_type = String)]
    pub dst: SocketAddrV4,
    pub size: usize,
    /// Who sent it, for `in` events.
    pub from: Option<LanMember>,
    /// Members it was sent to, for `out` events.
    pub sent_to: Vec<LanMember>,
    /// Members it was not sent to, and why.
    pub skipped: Vec<LanSkipped>,
    /// Why the packet was dropped as a whole: `port not forwarded`, `duplicate`,
    /// `rate limited`, …; for `in` events, absent means written to the party interface.
    pub dropped: Option<String>,
}

/// A party member named in a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanMember {
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanSkipped {
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    pub name: Option<String>,
    pub reason: String,
}

/// Checks a name the local API takes (the document's `NAME_PATTERN`): 1 to `max`
/// characters, no control characters, no space at either end. `what` names the field.
pub fn check_name(name: &str, max: usize, what: &str) -> Result<(), String> {
    let len = name.chars().count();
    if len == 0 || len > max {
        return Err(format!("{what}: must be 1 to {max} characters, not {len}"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what}: must not contain control characters"));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err(format!("{what}: must not start or end with a space"));
    }
    Ok(())
}

/// A nested object field that refuses what serde would otherwise also accept for a struct
/// (an array of its fields in order), so a request means what the OpenAPI document says.
/// The fields are read through the caller's deserializer, so errors keep their path.
fn object_or_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectOrNull<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOrNull<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object {…} or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(ObjectOrNull(std::marker::PhantomData))
}

/// OpenAPI schemas the derive cannot express: constraints on the items of a list.
mod schema {
    use utoipa::openapi::schema::{Array, ObjectBuilder, Schema, SchemaType, Type};

    /// What the local API takes as a name: no control characters (Unicode Cc, which
    /// `char::is_control` tests) and no space at either end.
    pub const NAME_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f ](?:[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u001f\\u007f-\\u009f ])?$";

    fn name(max: usize, nullable: bool) -> Schema {
        let types = if nullable {
            SchemaType::from_iter([Type::String, Type::Null])
        } else {
            SchemaType::new(Type::String)
        };
        ObjectBuilder::new()
            .schema_type(types)
            .min_length(Some(1))
            .max_length(Some(max))
            .pattern(Some(NAME_PATTERN))
            .into()
    }

    /// A party's name: 1 to 64 characters.
    pub fn party_name() -> Schema {
        name(64, false)
    }

    /// A player's name in a party: 1 to 32 characters (absent or null: unchanged).
    pub fn player_name() -> Schema {
        name(32, true)
    }

    /// A UDP port number (0 is not one).
    fn port() -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(65_535))
            .into()
    }

    /// An IPv4 multicast group (224.0.0.0/4) in dotted-quad form without leading zeros.
    fn group() -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(
                "^(?:22[4-9]|23[0-9])(?:\\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}$",
            ))
            .into()
    }

    pub fn ports() -> Array {
        Array::new(port())
    }

    pub fn ports_or_null() -> Array {
        Array::new_nullable(port())
    }

    pub fn groups() -> Array {
        Array::new(group())
    }

    pub fn groups_or_null() -> Array {
        Array::new_nullable(group())
    }
}
