//! Wire formats and shared types of LANrage: identifiers, invite codes, the control-plane
//! API, the WebSocket messages and the daemon's local API. No I/O, no clocks.

pub mod api;
pub mod games;
pub mod ids;
pub mod invite;
pub mod local;
pub mod metrics;

pub use ids::{DeviceKey, IdError, PartyId, PartySecret};
pub use invite::{InviteCode, InviteError};

/// Default party network (ARCHITECTURE.md §2): host `.1`, members from `.2`.
pub const DEFAULT_PARTY_NETWORK: &str = "10.66.0.0/16";
/// Default UDP port of the daemon's one data socket.
pub const DEFAULT_UDP_PORT: u16 = 51820;
/// Default address of the daemon's local API.
pub const DEFAULT_LOCAL_API: &str = "127.0.0.1:8666";
/// Default port of STUN (RFC 8489) and TURN: the relay's, and host mode's embedded one.
pub const DEFAULT_STUN_PORT: u16 = 3478;
/// Default port of the control plane (also the embedded one in host mode).
pub const DEFAULT_CONTROL_PORT: u16 = 8667;
