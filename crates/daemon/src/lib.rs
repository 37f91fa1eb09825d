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
mod binding;
mod config;
mod control_client;
mod dataplane;
pub mod games;
mod igd;
mod lan;
mod metrics;
mod net;
mod state;
mod store;
mod supervisor;
mod tasks;

pub use config::{DaemonConfig, default_state_dir};
pub use metrics::Thresholds;
pub use net::NO_TUN_PERMISSION;
pub use supervisor::{Ready, run};

/// Makes rustls (on ring, the one crypto library in the build) the TLS provider for
/// `https://` control planes. Idempotent; call before building any HTTP client.
pub fn install_tls_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
