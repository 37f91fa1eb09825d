//! The LANrage daemon: the player's side. It owns the TUN device and the one UDP socket,
//! drives the WireGuard mesh node from `lanrage-core`, keeps the party membership in sync
//! with the control plane, and serves the local API the CLI and web UI use.
//!
//! Tasks and who owns them:
//! - the supervisor (`supervisor`): party session, control-plane calls, heartbeats; it is the
//!   only writer of membership state and receives commands from the local API;
//! - the data plane (`dataplane`): TUN + UDP + the mesh node, driven by commands;
//! - the WebSocket reader (`session`): one per party session, forwarding pushes;
//! - the local API server (`api`).

mod api;
mod config;
mod control_client;
mod dataplane;
mod net;
mod state;
mod supervisor;

pub use config::{DaemonConfig, default_state_dir};
pub use supervisor::{Ready, run};
