//! `lanrage`: the one binary. Parses arguments and dispatches to the daemon, the control
//! plane, or the local API client; nothing else lives here.

mod client;
mod games;
mod lan;
mod settings;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lanrage",
    version,
    about = "LAN parties over the internet: one virtual LAN for your friends"
)]
#[command(after_help = EXIT_CODES)]
struct Cli {
    /// Machine-readable output (JSON on stdout; errors as {"error": {"code", "message"}}).
    #[arg(long, global = true)]
    json: bool,
    /// Log format of `up`, `control` and `relay`: `human` (default) or `json` (one object
    /// per line, with the span fields: party, peer, request id).
    #[arg(
        long,
        global = true,
        env = "LANRAGE_LOG_FORMAT",
        default_value = "human"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

/// Documented in `lanrage --help` and docs/cli.md.
const EXIT_CODES: &str = "Exit codes:
  0  done
  1  unexpected error
  2  bad command line
  3  the daemon is not running (start it with `lanrage up`)
  4  refused: invite invalid or expired, party full or locked, not the host, not in a
     party, a setting out of range
  5  permission: not root / no CAP_NET_ADMIN, or the API token is unreadable
  6  the control plane cannot be reached or failed, or the daemon could not do it";

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (needs root or CAP_NET_ADMIN). Without --control it embeds its own
    /// control plane ("host mode") and invite codes point at this machine.
    Up(UpArgs),
    /// Run a control-plane server.
    Control(ControlArgs),
    /// Run a relay: STUN (public address, NAT type) and, with --secret, TURN for peers
    /// that cannot reach each other directly.
    Relay(RelayArgs),
    /// Create, join and manage a party.
    Party {
        #[command(subcommand)]
        action: PartyCmd,
        #[command(flatten)]
        local: client::LocalArgs,
    },
    /// LAN emulation: which broadcast and multicast ports are carried to the party, and
    /// where each packet went (`lanrage lan trace`).
    Lan {
        #[command(subcommand)]
        action: Option<lan::LanCmd>,
        #[command(flatten)]
        local: client::LocalArgs,
    },
    /// Games: what runs here (`lanrage games --json`), what is tuned for it, the
    /// profiles, the history and the Steam library.
    Games {
        #[command(subcommand)]
        action: Option<games::GamesCmd>,
        #[command(flatten)]
        local: client::LocalArgs,
    },
    /// Show this daemon's party, peers, paths and latencies.
    Status {
        #[command(flatten)]
        local: client::LocalArgs,
    },
    /// NAT type, public address, relays, and each member's latency and path over the last
    /// five minutes.
    Network {
        #[command(flatten)]
        local: client::LocalArgs,
    },
    /// Show or change settings: your player name and LAN emulation.
    Settings {
        #[command(subcommand)]
        action: Option<settings::SettingsCmd>,
        #[command(flatten)]
        local: client::LocalArgs,
    },
    /// Print the web UI's address, with the token that lets it control the party. Open it
    /// in your browser yourself: passed to a program, it would show in the process list.
    Ui {
        #[command(flatten)]
        local: client::LocalArgs,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// Control plane URL, e.g. http://203.0.113.10:8667. Absent: host mode.
    #[arg(long, env = "LANRAGE_CONTROL")]
    control: Option<String>,
    /// State directory (keys, database). Default: /var/lib/lanrage as root.
    #[arg(long, env = "LANRAGE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// UDP port for all tunnel traffic.
    #[arg(long, env = "LANRAGE_PORT", default_value_t = lanrage_proto::DEFAULT_UDP_PORT)]
    port: u16,
    /// Local API address (loopback only).
    #[arg(long, env = "LANRAGE_API", default_value = lanrage_proto::DEFAULT_LOCAL_API)]
    api: SocketAddr,
    /// MTU of the lanrage0 interface.
    #[arg(long, env = "LANRAGE_MTU", default_value_t = 1420)]
    mtu: u16,
    /// Host mode: where the embedded control plane listens.
    #[arg(long, env = "LANRAGE_CONTROL_LISTEN", default_value = "0.0.0.0:8667")]
    control_listen: SocketAddr,
    /// Host mode: the address invite codes carry (default: this machine's primary address).
    #[arg(long, env = "LANRAGE_ADVERTISE")]
    advertise: Option<IpAddr>,
    /// Your player name (default: the host name).
    #[arg(long, env = "LANRAGE_NAME")]
    name: Option<String>,
    /// STUN server HOST:PORT for the public address and NAT type; repeat for two servers on
    /// different IPs (needed to classify the NAT).
    #[arg(long, env = "LANRAGE_STUN", value_delimiter = ',')]
    stun: Vec<String>,
    /// Do not ask the home router to forward the UDP port (PCP / NAT-PMP).
    #[arg(long, env = "LANRAGE_NO_PORT_MAPPING")]
    no_port_mapping: bool,
    /// Host mode: UDP port of the embedded relay (STUN + TURN), on the control plane's IP.
    #[arg(long, env = "LANRAGE_HOST_RELAY_PORT", default_value_t = lanrage_proto::DEFAULT_STUN_PORT)]
    host_relay_port: u16,
    /// Host mode: UDP ports for relayed addresses, one per guest that needs the relay.
    #[arg(long, env = "LANRAGE_HOST_RELAY_PORTS", default_value = "49152-49407", value_parser = parse_port_range)]
    host_relay_ports: (u16, u16),
    /// Host mode: run no relay (guests behind two strict NATs then cannot connect).
    #[arg(long, env = "LANRAGE_NO_HOST_RELAY")]
    no_host_relay: bool,
    /// A directory of your own game profiles (`*.toml`), besides STATE_DIR/profiles;
    /// they override shipped profiles with the same id. Repeatable.
    #[arg(long = "profiles", env = "LANRAGE_PROFILES", value_name = "DIR")]
    profiles: Vec<std::path::PathBuf>,
    /// Seconds between looks for running games; 0 turns game detection off.
    #[arg(long, env = "LANRAGE_GAME_SCAN", default_value_t = 5.0)]
    game_scan: f64,
    /// A member's latency (ms) above which an alert is raised (event stream and log).
    #[arg(long, env = "LANRAGE_ALERT_LATENCY_MS", default_value_t = 150.0)]
    alert_latency_ms: f64,
    /// A member's packet loss (%) above which an alert is raised.
    #[arg(long, env = "LANRAGE_ALERT_LOSS_PCT", default_value_t = 5.0)]
    alert_loss_pct: f64,
}

#[derive(clap::Args)]
struct ControlArgs {
    /// Address to listen on.
    #[arg(long, env = "LANRAGE_CONTROL_LISTEN", default_value = "0.0.0.0:8667")]
    listen: SocketAddr,
    /// Database URL, e.g. sqlite:///var/lib/lanrage/control.db (created if missing).
    #[arg(
        long,
        env = "LANRAGE_DATABASE",
        default_value = "sqlite:///var/lib/lanrage/control.db"
    )]
    database: String,
    /// URL invite codes carry (default: the address each client used to reach this server).
    #[arg(long, env = "LANRAGE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Network new parties get.
    #[arg(long, env = "LANRAGE_NETWORK", default_value = lanrage_proto::DEFAULT_PARTY_NETWORK)]
    network: lanrage_control::PartyNetwork,
    /// Secret shared with the relays (and with coturn's `static-auth-secret`): TURN
    /// credentials are issued with it.
    #[arg(long, env = "LANRAGE_TURN_SECRET")]
    turn_secret: Option<String>,
    /// A relay key whose registrations are accepted (repeatable; `lanrage relay
    /// --print-key` shows a relay's). Without any, relays cannot register.
    #[arg(
        long = "trust-relay",
        env = "LANRAGE_TRUST_RELAY",
        value_delimiter = ','
    )]
    trust_relay: Vec<lanrage_control::RelayKey>,
    /// Open TCP connections one client address may hold (an IPv6 /64 counts as one).
    #[arg(long, env = "LANRAGE_CONTROL_CONNECTIONS_PER_IP", default_value_t = 64)]
    connections_per_ip: usize,
    /// Open WebSockets one device may hold; a new one closes its oldest.
    #[arg(
        long,
        env = "LANRAGE_CONTROL_WEBSOCKETS_PER_DEVICE",
        default_value_t = 4
    )]
    websockets_per_device: usize,
    /// A STUN server to hand to daemons besides the registered relays (repeatable).
    #[arg(long = "stun", value_delimiter = ',')]
    stun: Vec<SocketAddr>,
    /// A TURN server to hand to daemons besides the registered relays, e.g. a coturn
    /// with `use-auth-secret` (repeatable; needs --turn-secret).
    #[arg(long = "turn", value_delimiter = ',')]
    turn: Vec<SocketAddr>,
}

#[derive(clap::Args)]
struct RelayArgs {
    /// UDP address to serve STUN on; repeat it with a second IP (and port) so daemons can
    /// classify their NAT (RFC 5780).
    #[arg(
        long,
        env = "LANRAGE_RELAY_LISTEN",
        value_delimiter = ',',
        default_value = "0.0.0.0:3478"
    )]
    listen: Vec<SocketAddr>,
    /// TURN shared secret (TURN REST credentials); without it only STUN is served.
    #[arg(long, env = "LANRAGE_RELAY_SECRET")]
    secret: Option<String>,
    /// UDP ports for relayed addresses, one allocation each (at most 4096 ports).
    #[arg(long, default_value = "49152-49407", value_parser = parse_port_range)]
    relay_ports: (u16, u16),
    /// IP relayed addresses are announced with (default: the first --listen IP).
    #[arg(long)]
    relay_ip: Option<std::net::IpAddr>,
    /// Control plane to register with (heartbeat every 10 s), signed with --key-file; the
    /// control plane must trust the key (`lanrage control --trust-relay KEY`).
    #[arg(long, env = "LANRAGE_CONTROL")]
    control: Option<String>,
    /// The relay's signing key (created, mode 0600, if missing); used with --control.
    #[arg(
        long,
        env = "LANRAGE_RELAY_KEY_FILE",
        default_value = "/var/lib/lanrage/relay.key"
    )]
    key_file: PathBuf,
    /// Print the relay's public key (creating the key file if needed) and exit.
    #[arg(long)]
    print_key: bool,
    /// Region announced to the control plane.
    #[arg(long, default_value = "")]
    region: String,
    /// Allocations one TURN user id (one device in one party) may hold at once.
    #[arg(long, env = "LANRAGE_RELAY_USER_QUOTA", default_value_t = 4)]
    user_quota: usize,
    /// Allocations one source IP may hold at once (486 past it).
    #[arg(long, env = "LANRAGE_RELAY_IP_QUOTA", default_value_t = 8)]
    ip_quota: usize,
    /// Allocations one party may hold at once; never more than half the relay.
    #[arg(long, env = "LANRAGE_RELAY_PARTY_QUOTA", default_value_t = 80)]
    party_quota: usize,
    /// Allocations the relay holds at most (508 past it); default: the relay ports less
    /// one in sixteen kept in reserve.
    #[arg(long, env = "LANRAGE_RELAY_MAX_ALLOCATIONS")]
    max_allocations: Option<usize>,
    /// Per-allocation rate limit in Mbit/s.
    #[arg(long, env = "LANRAGE_RELAY_RATE_LIMIT_MBPS", default_value_t = 50)]
    rate_limit_mbps: u64,
    /// Rate limit of one TURN user id over all its allocations, in Mbit/s.
    #[arg(long, env = "LANRAGE_RELAY_USER_RATE_MBPS", default_value_t = 100)]
    user_rate_mbps: u64,
    /// Rate limit of the whole relay, in Mbit/s.
    #[arg(long, env = "LANRAGE_RELAY_TOTAL_RATE_MBPS", default_value_t = 1000)]
    total_rate_mbps: u64,
    /// A special-use range peers may be relayed to after all (repeatable), e.g.
    /// 10.0.0.0/8 for a relay serving one private network. By default private,
    /// shared, loopback, link-local, multicast and reserved ranges are refused; the
    /// relay's own addresses always are.
    #[arg(long, env = "LANRAGE_ALLOW_PEER", value_delimiter = ',')]
    allow_peer: Vec<lanrage_relay::turn::Cidr>,
    /// TCP address to serve Prometheus metrics on (`GET /metrics`, no authentication:
    /// keep it on a private address or behind a firewall), e.g. 127.0.0.1:9478.
    #[arg(long, env = "LANRAGE_RELAY_METRICS")]
    metrics: Option<SocketAddr>,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("expected FIRST-LAST, got {s:?}"))?;
    let a: u16 = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!(
            "{s:?} is not a range of ports (1-65535, first <= last)"
        ));
    }
    Ok((a, b))
}

#[derive(Subcommand)]
enum PartyCmd {
    /// Create a party and print its invite code.
    Create {
        /// The party's name.
        name: String,
        /// Most members allowed.
        #[arg(long)]
        max_members: Option<u32>,
        /// Your player name in this party.
        #[arg(long)]
        player_name: Option<String>,
    },
    /// Join a party with an invite code.
    Join {
        code: String,
        /// Your player name in this party.
        #[arg(long)]
        name: Option<String>,
    },
    /// Leave the party.
    Leave,
    /// Print the invite code again.
    Invite,
    /// Remove a member (host only); they cannot rejoin.
    Kick { name: String },
    /// Refuse new members (host only).
    Lock,
    /// Accept new members again (host only).
    Unlock,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_file_limit();
    // Everything LANrage writes (databases with party secrets, keys, tokens, logs) is the
    // running user's alone; state directories are repaired on top (private_dir).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    lanrage_daemon::install_tls_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    let result = runtime.block_on(dispatch(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (exit, code) = client::classify(&e);
            eprintln!("error: {e:#}");
            if json {
                let body = lanrage_proto::local::LocalError::new(code, format!("{e:#}"));
                if let Ok(text) = serde_json::to_string_pretty(&body) {
                    println!("{text}");
                }
            }
            ExitCode::from(exit)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    let log = cli.log_format;
    let local = |l: &client::LocalArgs| client::LocalClient::new(l).with_json(json);
    match cli.command {
        Cmd::Up(args) => {
            init_logging(log);
            up(args).await
        }
        Cmd::Control(args) => {
            init_logging(log);
            control(args).await
        }
        Cmd::Relay(args) => {
            init_logging(log);
            relay(args).await
        }
        Cmd::Party { action, local: l } => {
            let c = local(&l);
            match action {
                PartyCmd::Create {
                    name,
                    max_members,
                    player_name,
                } => c.create(name, max_members, player_name).await,
                PartyCmd::Join { code, name } => c.join(code, name).await,
                PartyCmd::Leave => c.leave().await,
                PartyCmd::Invite => c.invite().await,
                PartyCmd::Kick { name } => c.kick(name).await,
                PartyCmd::Lock => c.lock(true).await,
                PartyCmd::Unlock => c.lock(false).await,
            }
        }
        Cmd::Lan { action, local: l } => lan::run(&local(&l), action).await,
        Cmd::Games { action, local: l } => games::run(&local(&l), action, json).await,
        Cmd::Status { local: l } => local(&l).status(json).await,
        Cmd::Network { local: l } => settings::network(&local(&l)).await,
        Cmd::Settings { action, local: l } => settings::run(&local(&l), action).await,
        Cmd::Ui { local: l } => settings::ui(&local(&l)),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => fmt.init(),
        // Every line carries the fields of the spans it was logged in (`spans`), so a
        // line of a party join has the party id and a request line its request id.
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    client::check_net_admin()?;
    let mut config = lanrage_daemon::DaemonConfig::new(
        args.state_dir
            .unwrap_or_else(lanrage_daemon::default_state_dir),
    );
    config.control = args.control;
    config.port = args.port;
    config.api = args.api;
    config.mtu = args.mtu;
    config.control_listen = args.control_listen;
    config.advertise = args.advertise;
    config.player_name = args.name;
    config.port_mapping = !args.no_port_mapping;
    config.host_relay_port = (!args.no_host_relay).then_some(args.host_relay_port);
    config.host_relay_ports = args.host_relay_ports;
    config.profile_dirs = args.profiles;
    if !(args.game_scan.is_finite() && (0.0..=3600.0).contains(&args.game_scan)) {
        anyhow::bail!("--game-scan must be between 0 and 3600 seconds");
    }
    config.game_scan = std::time::Duration::from_secs_f64(args.game_scan);
    if !(args.alert_latency_ms.is_finite() && args.alert_latency_ms > 0.0) {
        anyhow::bail!("--alert-latency-ms must be a positive number of milliseconds");
    }
    if !(args.alert_loss_pct.is_finite() && (0.0..=100.0).contains(&args.alert_loss_pct)) {
        anyhow::bail!("--alert-loss-pct must be between 0 and 100");
    }
    config.alerts = lanrage_daemon::Thresholds {
        latency_ms: args.alert_latency_ms,
        loss_pct: args.alert_loss_pct,
    };
    for server in &args.stun {
        let addr = tokio::net::lookup_host(server.as_str())
            .await
            .ok()
            .and_then(|mut a| a.find(std::net::SocketAddr::is_ipv4))
            .ok_or_else(|| {
                anyhow::anyhow!("cannot resolve the STUN server {server:?} (HOST:PORT)")
            })?;
        config.stun.push(addr);
    }
    lanrage_daemon::run(config, shutdown_signal(), |ready| {
        println!("LANrage is up.");
        println!("  local API (web UI):  http://{}", ready.api);
        println!("  tunnel UDP port:     {}", ready.udp_port);
        if ready.host_mode {
            println!(
                "  host mode: control plane embedded, invites point at {}",
                ready.control_url
            );
        } else {
            println!("  control plane:       {}", ready.control_url);
        }
        println!("Create a party with: lanrage party create NAME");
    })
    .await
}

async fn control(args: ControlArgs) -> anyhow::Result<()> {
    let mut config = lanrage_control::ControlConfig::new(args.database);
    config.public_url = args.public_url;
    config.network = args.network;
    if !args.turn.is_empty() && args.turn_secret.is_none() {
        anyhow::bail!("--turn needs --turn-secret: TURN servers get credentials signed with it");
    }
    config.ice.turn_secret = args.turn_secret;
    config.ice.stun = args.stun;
    config.ice.turn = args.turn;
    config.ice.trusted_relays = args.trust_relay;
    if args.connections_per_ip == 0 || args.websockets_per_device == 0 {
        anyhow::bail!("--connections-per-ip and --websockets-per-device must be at least 1");
    }
    config.limits.connections_per_ip = args.connections_per_ip;
    config.limits.websockets_per_device = args.websockets_per_device;
    let control = lanrage_control::Control::open(config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", args.listen))?;
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    tracing::info!(listen = %args.listen, open_files = nofile, "control plane up");
    control.serve(listener, shutdown_signal()).await
}

async fn relay(args: RelayArgs) -> anyhow::Result<()> {
    if args.print_key {
        let signer = lanrage_relay::register::load_or_create_key(&args.key_file)?;
        println!("{}", signer.public_key());
        return Ok(());
    }
    let first = args
        .listen
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("--listen needs at least one address"))?;
    let turn = args
        .secret
        .clone()
        .map(|secret| lanrage_relay::TurnOptions {
            config: lanrage_relay::turn::Config {
                secret: secret.into_bytes(),
                user_quota: args.user_quota,
                ip_quota: args.ip_quota,
                party_quota: args.party_quota,
                max_allocations: args.max_allocations,
                rate_bytes_per_sec: args.rate_limit_mbps.saturating_mul(125_000),
                user_rate_bytes_per_sec: args.user_rate_mbps.saturating_mul(125_000),
                total_rate_bytes_per_sec: args.total_rate_mbps.saturating_mul(125_000),
                allow_peers: args.allow_peer.clone(),
                self_peers: Vec::new(),
            },
            relay_ip: args.relay_ip.unwrap_or(first.ip()),
            ports: args.relay_ports.0..=args.relay_ports.1,
        });
    let relay = lanrage_relay::Relay::bind(&lanrage_relay::Options {
        listen: args.listen.clone(),
        turn,
    })
    .await?;
    let metrics = match args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("binding the metrics address {addr}: {e}"))?;
            tracing::info!(metrics = %addr, "serving Prometheus metrics at /metrics");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(lanrage_relay::metrics::serve(
                listener,
                relay.handle(),
                async {
                    let _ = stopped.await;
                },
            ));
            Some((stop, task))
        }
        None => None,
    };
    let registration = match &args.control {
        Some(control) => {
            let addrs = relay.listen_addrs();
            if addrs.iter().any(|a| a.ip().is_unspecified()) {
                anyhow::bail!(
                    "--control needs --listen on specific IPs: they are what the relay announces"
                );
            }
            let signer = lanrage_relay::register::load_or_create_key(&args.key_file)?;
            // The operator copies this into the control plane's --trust-relay.
            tracing::info!(key = %signer.public_key(), key_file = %args.key_file.display(), "relay key");
            let reg = lanrage_relay::register::Registration {
                control: control.clone(),
                signer: std::sync::Arc::new(signer),
                id: format!("relay-{first}"),
                region: args.region.clone(),
                addrs,
            };
            let task = tokio::spawn(lanrage_relay::register::run(reg.clone(), relay.handle()));
            Some((reg, task))
        }
        None => None,
    };
    let handle = relay.handle();
    let farewell = registration.as_ref().map(|(reg, _)| reg.clone());
    let shutdown = shutdown_signal();
    // Allocations keep flowing while the control plane is told the relay is going away.
    relay
        .run(async move {
            shutdown.await;
            if let Some(reg) = farewell {
                lanrage_relay::register::farewell(&reg, &handle).await;
            }
        })
        .await;
    if let Some((_, task)) = registration {
        task.abort();
    }
    if let Some((stop, task)) = metrics {
        let _ = stop.send(());
        task.await??;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one: a server's connections are files,
/// and the usual soft 1024 is a small share of what the system allows. Best effort.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Completes on SIGINT or SIGTERM. The handlers are installed now, not when the future is
/// first polled, so a signal during start-up still shuts down cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                tracing::warn!("cannot listen for signals; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutting down");
    }
}
