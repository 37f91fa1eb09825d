//! The daemon's settings.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Everything `lanrage up` can be told.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Control plane URL; `None` means host mode (embed one).
    pub control: Option<String>,
    pub state_dir: PathBuf,
    /// UDP port of the one data socket.
    pub port: u16,
    /// Local API address; must be a loopback address.
    pub api: SocketAddr,
    pub mtu: u16,
    /// Host mode: where the embedded control plane listens.
    pub control_listen: SocketAddr,
    /// Host mode: the address invite codes carry; default: this machine's primary address.
    pub advertise: Option<IpAddr>,
    /// Player name shown to the party; default: the host name.
    pub player_name: Option<String>,
    /// STUN servers for the public address and NAT classification.
    pub stun: Vec<SocketAddr>,
    /// Ask the home router (PCP, else NAT-PMP) to forward the UDP port.
    pub port_mapping: bool,
    /// Host mode: the embedded relay (STUN + TURN) listens on this UDP port of the control
    /// plane's listen IP; `None` runs no relay.
    pub host_relay_port: Option<u16>,
    /// Host mode: the relay's relayed ports, one allocation each.
    pub host_relay_ports: (u16, u16),
    /// Directories of the player's own game profiles (besides `STATE_DIR/profiles`).
    pub profile_dirs: Vec<std::path::PathBuf>,
    /// How often running games are looked for; zero turns detection off.
    pub game_scan: std::time::Duration,
    /// A member's latency or loss past these raises an alert (event stream and log).
    pub alerts: crate::metrics::Thresholds,
}

impl DaemonConfig {
    /// Defaults for a state directory.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            control: None,
            state_dir,
            port: lanrage_proto::DEFAULT_UDP_PORT,
            api: lanrage_proto::DEFAULT_LOCAL_API
                .parse()
                .expect("the default API address is valid"),
            // 1500 minus the largest WireGuard overhead (IPv6 40 + UDP 8 + WireGuard 32).
            mtu: 1420,
            control_listen: SocketAddr::from(([0, 0, 0, 0], lanrage_proto::DEFAULT_CONTROL_PORT)),
            advertise: None,
            player_name: None,
            stun: Vec::new(),
            port_mapping: true,
            host_relay_port: Some(lanrage_proto::DEFAULT_STUN_PORT),
            host_relay_ports: (49152, 49407),
            profile_dirs: Vec::new(),
            game_scan: crate::games::DEFAULT_SCAN,
            alerts: crate::metrics::Thresholds::default(),
        }
    }
}

/// `/var/lib/lanrage` for root (the daemon is a system service), else the user's data dir.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/lanrage");
    }
    directories::ProjectDirs::from("", "", "lanrage")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".lanrage"))
}
