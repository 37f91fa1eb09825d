//! The supervisor: starts everything, owns the party session, and is the one writer of
//! membership state. Local API commands and control-plane pushes arrive as messages.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use gotatun::x25519::{PublicKey, StaticSecret};
use lanrage_control::{Control, ControlConfig};
use lanrage_core::stun::NatReport;
use lanrage_proto::api::{
    CandidatesRequest, CreatePartyRequest, JoinPartyRequest, PartyView, ServerMessage,
};
use lanrage_proto::local::{CreateRequest, InviteResponse};
use lanrage_proto::{DeviceKey, InviteCode};
use tokio::net::TcpListener;
use tokio::sync::{RwLock, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::api::{self, ApiState};
use crate::config::DaemonConfig;
use crate::control_client::{ClientError, ControlClient};
use crate::dataplane::DataPlane;
use crate::net;
use crate::state::{Membership, State};
use crate::tasks::{Priority, Step, step};

/// Heartbeat period; the control plane marks a member away after 90 s of silence.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often this machine's candidate addresses are compared with those published.
const CANDIDATE_CHECK: Duration = Duration::from_secs(1);
/// How often the STUN/TURN server list and TURN credentials are fetched again.
const ICE_REFRESH: Duration = Duration::from_secs(60);
/// ...and how soon while the control plane knows no relay.
const ICE_RETRY: Duration = Duration::from_secs(4);
/// WebSocket reconnect back-off bounds.
const WS_BACKOFF_MIN: Duration = Duration::from_millis(250);
const WS_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A WebSocket silent this long is dead (the control plane pings every 20 s).
const WS_SILENCE: Duration = Duration::from_secs(60);

/// What the local API shows; written only by the supervisor.
#[derive(Debug, Clone)]
pub struct Shared {
    pub key: DeviceKey,
    pub name: String,
    pub host_mode: bool,
    pub control_url: String,
    pub control: String,
    pub party: Option<PartyView>,
}

/// An error for the local API: an HTTP status, a stable code and one sentence saying what
/// to do.
#[derive(Debug, Clone)]
pub struct LocalError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl LocalError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    fn not_in_party() -> Self {
        Self::new(
            409,
            "not_in_party",
            "not in a party; create one or join with an invite code",
        )
    }
}

impl From<ClientError> for LocalError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unreachable { url, reason } => Self::new(
                502,
                "control_unreachable",
                format!(
                    "cannot reach the party's control plane at {url} ({reason}); check this \
                     device's internet connection, or ask the host whether LANrage is running"
                ),
            ),
            // The control plane refusing *this device* is its problem to report, not the
            // local caller's credentials: a 401 here must not read as a bad local token.
            ClientError::Api {
                status: 401,
                message,
                ..
            } => Self::new(
                502,
                "control_error",
                format!(
                    "the control plane refused to sign this device in ({message}); try again in a moment"
                ),
            ),
            ClientError::Api {
                status,
                code,
                message,
            } if status < 500 => {
                let (code, message) = match code.as_str() {
                    "party_not_found" => (
                        "invite_expired",
                        // The control plane gives one answer for an ended party and a
                        // wrong secret, so as not to tell which party ids exist.
                        "this invite does not work: the party has ended or the invite is \
                         wrong; ask the host for a fresh invite"
                            .to_owned(),
                    ),
                    "wrong_secret" | "missing_secret" => ("invite_invalid", message),
                    "party_full" => (
                        "party_full",
                        format!("{message}; ask the host to make room or raise the limit"),
                    ),
                    _ => (code.as_str(), message),
                };
                Self::new(status, code, message)
            }
            e @ (ClientError::Api { .. } | ClientError::Protocol(_)) => Self::new(
                502,
                "control_error",
                format!("the control plane failed: {e}; try again in a moment"),
            ),
        }
    }
}

/// Commands from the local API.
pub enum Command {
    Create(
        CreateRequest,
        oneshot::Sender<Result<InviteResponse, LocalError>>,
    ),
    Join(
        String,
        Option<String>,
        oneshot::Sender<Result<InviteResponse, LocalError>>,
    ),
    Leave(oneshot::Sender<Result<(), LocalError>>),
    Kick(String, oneshot::Sender<Result<(), LocalError>>),
    Lock(bool, oneshot::Sender<Result<(), LocalError>>),
    Invite(oneshot::Sender<Result<InviteResponse, LocalError>>),
    /// The name used for the next party created or joined.
    SetName(String, oneshot::Sender<Result<(), LocalError>>),
}

/// What a started daemon tells its caller.
#[derive(Debug, Clone)]
pub struct Ready {
    pub api: SocketAddr,
    pub udp_port: u16,
    pub control_url: String,
    pub host_mode: bool,
}

/// Runs the daemon until `shutdown` completes; then removes the interface and stops.
/// `on_ready` is called once everything listens.
pub async fn run(
    config: DaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    if !config.api.ip().is_loopback() {
        anyhow::bail!(
            "the local API must listen on a loopback address, not {}",
            config.api
        );
    }
    let (secret, api_token) = step(Step::Keys, async {
        let keys = crate::state::Keys::load(&config.state_dir)?;
        Ok((keys.device, keys.api_token))
    })
    .await?;
    let (state, _lock) = step(Step::Store, async {
        let state = State::open(&config.state_dir).await?;
        let lock = state.lock()?;
        Ok((state, lock))
    })
    .await?;
    let started = start(&config, state.clone(), secret.clone(), api_token).await;
    let (
        dataplane,
        dp_task,
        Started {
            embedded,
            control_url,
            key,
            name,
            changes,
            games,
            shared,
            cmd_rx,
            api_addr,
            api,
            mut tasks,
        },
    ) = match started {
        Ok(s) => s,
        Err(e) => {
            state.close().await;
            return Err(e);
        }
    };
    tracing::info!(
        api = %format!("http://{api_addr}"),
        udp_port = dataplane.port,
        control = %control_url,
        host_mode = embedded.is_some(),
        "LANrage is up"
    );
    on_ready(&Ready {
        api: api_addr,
        udp_port: dataplane.port,
        control_url: control_url.clone(),
        host_mode: embedded.is_some(),
    });
    let (events_tx, events_rx) = mpsc::channel(64);
    let mut sup = Supervisor {
        state: state.clone(),
        secret,
        key,
        name,
        control_url,
        dataplane: dataplane.clone(),
        shared,
        session: None,
        generation: 0,
        events_tx,
        ice_next: None,
        games,
        changes,
    };
    sup.resume().await;
    sup.run(cmd_rx, events_rx, shutdown).await;

    // Shutdown, the reverse of start-up: the API and the detectors, then the party session
    // and the interface (so the OS routes nothing into a dead tunnel), the embedded control
    // plane and relay, the data path, and last the store.
    crate::tasks::stop_all(std::mem::take(&mut tasks), Duration::from_secs(2)).await;
    let (api_stop, api_task) = api;
    let _ = api_stop.send(());
    let _ = api_task.await;
    sup.session = None;
    dataplane.clear().await;
    drop(sup);
    drop(dataplane);
    if let Some((stop, task)) = embedded {
        let _ = stop.send(());
        let _ = task.await;
    }
    // Every handle is gone, so the data plane ends its loop and hands back the router's
    // forwarded port; it gets a moment for that, no more.
    let mut dp_task = dp_task;
    if tokio::time::timeout(Duration::from_secs(1), &mut dp_task)
        .await
        .is_err()
    {
        dp_task.abort();
    }
    state.close().await;
    tracing::info!("LANrage stopped");
    Ok(())
}

/// The start-up steps after the keys and the store; on failure nothing they started is
/// left running (the data plane holds no interface until a party is joined, and is told
/// to clear anyway).
async fn start(
    config: &DaemonConfig,
    state: State,
    secret: StaticSecret,
    api_token: String,
) -> anyhow::Result<(DataPlane, JoinHandle<()>, Started)> {
    let key = DeviceKey::from_bytes(PublicKey::from(&secret).to_bytes());
    step(Step::Tun, async { net::check_tun() }).await?;
    let (dataplane, dp_task) = step(
        Step::Socket,
        DataPlane::start(
            secret.clone(),
            config.port,
            config.mtu,
            config.stun.clone(),
            config.port_mapping,
        ),
    )
    .await?;
    let rest = start_after_socket(config, &state, key, api_token, &dataplane).await;
    match rest {
        Ok(parts) => Ok((dataplane, dp_task, parts)),
        Err(e) => {
            dataplane.clear().await;
            drop(dataplane);
            let _ = tokio::time::timeout(Duration::from_secs(1), dp_task).await;
            Err(e)
        }
    }
}

/// What start-up hands to the running daemon, besides the data plane.
struct Started {
    embedded: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    control_url: String,
    key: DeviceKey,
    name: String,
    changes: Arc<tokio::sync::Notify>,
    games: crate::games::Handle,
    shared: Arc<RwLock<Shared>>,
    cmd_rx: mpsc::Receiver<Command>,
    api_addr: SocketAddr,
    api: (oneshot::Sender<()>, JoinHandle<()>),
    tasks: Vec<crate::tasks::Supervised>,
}

async fn start_after_socket(
    config: &DaemonConfig,
    state: &State,
    key: DeviceKey,
    api_token: String,
    dataplane: &DataPlane,
) -> anyhow::Result<Started> {
    if !config.stun.is_empty() {
        // The first answer is worth a short wait (candidates published at once); the probe
        // carries on in the background either way.
        let first = step(Step::NatProbe, async {
            loop {
                if dataplane.stats().await.public_addr.is_some() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if let Err(e) = first {
            tracing::info!(error = %format!("{e:#}"), "NAT probe continues in the background");
        }
    }
    if let Some(lan) = state.lan_settings().await? {
        dataplane.set_lan(crate::lan::to_core(&lan)).await;
    }
    // `--name` wins for this run; else what the player saved in the settings; else the
    // machine's host name.
    let name = match &config.player_name {
        Some(n) => n.clone(),
        None => state
            .player_name()
            .await?
            .unwrap_or_else(default_player_name),
    };
    let changes = Arc::new(tokio::sync::Notify::new());
    let (control_url, embedded) = step(Step::Control, async {
        match &config.control {
            Some(url) => {
                let url = url.trim_end_matches('/').to_owned();
                // Not fatal: the party comes back as soon as the control plane answers.
                if let Err(reason) = control_health(&url).await {
                    tracing::warn!(
                        step = Step::Control.name(), control = %url, %reason,
                        "cannot reach the control plane; retrying in the background"
                    );
                }
                Ok((url, None))
            }
            None => {
                let (url, stop, task) =
                    start_embedded_control(config, state, key, dataplane.port).await?;
                Ok((url, Some((stop, task))))
            }
        }
    })
    .await?;
    let mut profile_dirs = vec![config.state_dir.join("profiles")];
    profile_dirs.extend(config.profile_dirs.iter().cloned());
    let games = step(Step::Detectors, async {
        Ok(crate::games::start(
            crate::games::Sources { dirs: profile_dirs },
            config.game_scan,
            dataplane.clone(),
            Arc::clone(&changes),
        ))
    })
    .await?;
    let shared = Arc::new(RwLock::new(Shared {
        key,
        name: name.clone(),
        host_mode: embedded.is_some(),
        control_url: control_url.clone(),
        control: "idle".into(),
        party: None,
    }));
    let metrics = Arc::new(crate::metrics::Metrics::new(
        state.writes().clone(),
        config.alerts,
    ));
    metrics.restore(state.pool()).await;
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let api_listener = step(Step::Api, async {
        TcpListener::bind(config.api).await.with_context(|| {
            format!(
                "binding the local API on {} (is another LANrage daemon running?)",
                config.api
            )
        })
    })
    .await?;
    let api_addr = api_listener.local_addr()?;
    let (api_stop, api_stop_rx) = oneshot::channel::<()>();
    let api_state = ApiState::new(
        cmd_tx,
        Arc::clone(&shared),
        dataplane.clone(),
        state.clone(),
        api_token,
        api_addr.port(),
    )
    .with_games(Arc::clone(&games.view))
    .with_changes(Arc::clone(&changes))
    .with_metrics(metrics);
    let tasks = vec![crate::tasks::supervise(
        "events",
        Priority::Api,
        api::hub_task(api_state.clone()),
    )];
    let api_task = tokio::spawn(api::serve(api_listener, api_state, async {
        let _ = api_stop_rx.await;
    }));
    Ok(Started {
        embedded,
        control_url,
        key,
        name,
        changes,
        games,
        shared,
        cmd_rx,
        api_addr,
        api: (api_stop, api_task),
        tasks,
    })
}

/// Whether the control plane answers its health check.
async fn control_health(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    match client.get(format!("{url}/v1/health")).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("it answered {}", r.status())),
        Err(e) => Err(e.without_url().to_string()),
    }
}

async fn start_embedded_control(
    config: &DaemonConfig,
    state: &State,
    owner: DeviceKey,
    wg_port: u16,
) -> anyhow::Result<(String, oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)> {
    let advertise = config
        .advertise
        .or_else(|| net::primary_addr().map(Into::into))
        .unwrap_or_else(|| {
            tracing::warn!("no network address found; invites will only work on this machine");
            Ipv4Addr::LOCALHOST.into()
        });
    let url = format!(
        "http://{}",
        SocketAddr::new(advertise, config.control_listen.port())
    );
    let mut cc = ControlConfig::new(state.control_db_url());
    cc.public_url = Some(url.clone());
    let relay = match config.host_relay_port {
        Some(port) => start_embedded_relay(config, state, advertise, port, wg_port).await,
        None => None,
    };
    if let Some((addr, secret, handle)) = &relay {
        // The relay is the party's STUN server and TURN fallback, as a registered one
        // would be; credentials are signed with the secret the two share.
        cc.ice.turn_secret = Some(secret.clone());
        cc.ice.stun = vec![*addr];
        cc.ice.turn = vec![*addr];
        // A full relay is not handed out, as a registered one would not be.
        let handle = handle.clone();
        cc.ice.turn_load = Some(Arc::new(move || {
            let load = handle.load();
            lanrage_control::RelayLoad {
                allocations: load.allocations as u64,
                capacity: (load.capacity + load.allocations) as u64,
                draining: load.draining,
            }
        }));
    }
    // The port is open to the network so friends can join; only this device creates parties.
    cc.creators = Some(vec![owner]);
    let control = Control::open(cc).await?;
    if let Some((_, _, handle)) = relay {
        // Members who leave or are kicked lose their allocations on the relay at once.
        let mut revocations = control.revocations();
        tokio::spawn(async move {
            loop {
                match revocations.recv().await {
                    Ok(r) => handle.revoke(&r.user, r.until),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            "relay missed revocations; their credentials expire by themselves"
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
    let listener = TcpListener::bind(config.control_listen)
        .await
        .with_context(|| {
            format!(
                "binding the embedded control plane on {}",
                config.control_listen
            )
        })?;
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(control.serve(listener, async {
        let _ = stop_rx.await;
    }));
    tracing::info!(listen = %config.control_listen, invites = %url, "host mode: control plane embedded");
    Ok((url, stop, task))
}

/// Host mode's relay: STUN and TURN on the control plane's IP, relayed addresses on the
/// advertised one. Returns the address guests reach it at, its secret and its handle, or
/// `None` (with a warning) when it cannot run: the party then does without a relay.
async fn start_embedded_relay(
    config: &DaemonConfig,
    state: &State,
    advertise: std::net::IpAddr,
    port: u16,
    wg_port: u16,
) -> Option<(SocketAddr, String, lanrage_relay::Handle)> {
    let secret = match state.host_turn_secret() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "host mode: no relay (cannot store its secret)");
            return None;
        }
    };
    let (first, last) = config.host_relay_ports;
    let options = lanrage_relay::Options {
        listen: vec![SocketAddr::new(config.control_listen.ip(), port)],
        turn: Some(lanrage_relay::TurnOptions {
            config: lanrage_relay::turn::Config {
                secret: secret.clone().into_bytes(),
                // The host's own WireGuard socket shares the relay's IP; guests behind
                // strict NATs reach the host through the relay, so that one address on
                // the relay's IP is a peer after all.
                self_peers: vec![SocketAddr::new(advertise, wg_port)],
                ..lanrage_relay::turn::Config::default()
            },
            relay_ip: advertise,
            ports: first..=last,
        }),
    };
    let relay = match lanrage_relay::Relay::bind(&options).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                error = %format!("{e:#}"),
                "host mode: no relay (players behind two strict NATs will not connect)"
            );
            return None;
        }
    };
    let handle = relay.handle();
    // It runs as long as the process: the daemon's end is the relay's end.
    tokio::spawn(relay.run(std::future::pending()));
    let addr = SocketAddr::new(advertise, port);
    tracing::info!(%addr, "host mode: relay embedded");
    Some((addr, secret, handle))
}

fn default_player_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .map(|h| h.chars().take(32).collect())
        .unwrap_or_else(|| "player".to_owned())
}

/// Events from a session's background tasks, tagged with the session's generation so events
/// of an ended session are ignored.
enum SessionEvent {
    Connected(u64),
    Disconnected(u64, String),
    Message(u64, ServerMessage),
    /// The outcome of a background heartbeat, or of a join when `joined`.
    Beat {
        generation: u64,
        joined: bool,
        result: Result<PartyView, ClientError>,
    },
}

struct Session {
    generation: u64,
    client: ControlClient,
    invite: InviteCode,
    player_name: String,
    view: Option<PartyView>,
    /// The join has not been confirmed by the control plane yet (it was down at resume, or
    /// it forgot us).
    needs_join: bool,
    /// A heartbeat or join is on its way; the next one waits for it.
    beat_in_flight: bool,
    ws: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ws.abort();
    }
}

/// Control-plane answers after which a saved membership is gone for good; anything else
/// (network trouble, a proxy's 4xx, a server error) is retried.
fn is_final(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { code, .. }
        if matches!(code.as_str(), "wrong_secret" | "banned" | "party_not_found" | "missing_secret"))
}

struct Supervisor {
    state: State,
    secret: StaticSecret,
    key: DeviceKey,
    name: String,
    control_url: String,
    dataplane: DataPlane,
    shared: Arc<RwLock<Shared>>,
    session: Option<Session>,
    generation: u64,
    events_tx: mpsc::Sender<SessionEvent>,
    /// When the STUN/TURN servers were last fetched from the control plane, and when to
    /// fetch them again.
    ice_next: Option<std::time::Instant>,
    /// Game detection: what runs here, and what the party plays.
    games: crate::games::Handle,
    /// Woken after every change the local API's event stream shows.
    changes: Arc<tokio::sync::Notify>,
}

impl Supervisor {
    async fn run(
        &mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<SessionEvent>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Candidates are compared often (locally) and published only when they change, so
        // an address learned from STUN reaches the peers within seconds.
        let mut candidates = tokio::time::interval(CANDIDATE_CHECK);
        candidates.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut local_games = self.games.local.clone();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Ok(()) = local_games.changed() => {
                    // A game started or stopped: the party hears it now, not at the next
                    // candidate check.
                    let connected = self.shared.read().await.control == "connected";
                    if connected && self.session.as_ref().is_some_and(|s| !s.needs_join) {
                        self.publish_candidates().await;
                    }
                }
                Some(cmd) = cmds.recv() => {
                    let span = self.command_span(&cmd);
                    self.command(cmd).instrument(span).await
                }
                Some(ev) = events.recv() => {
                    let span = self.party_span();
                    self.event(ev).instrument(span).await
                }
                _ = heartbeat.tick() => self.beat(),
                _ = candidates.tick() => {
                    // Only while the control plane answers: a publish to a dead one would
                    // hold up commands for its whole timeout.
                    let connected = self.shared.read().await.control == "connected";
                    if connected && self.session.as_ref().is_some_and(|s| !s.needs_join) {
                        self.refresh_ice().await;
                        self.publish_candidates().await;
                    }
                }
            }
        }
    }

    /// Restores the saved membership: the data plane comes up from the last known view at
    /// once (so peers reconnect even if the control plane is down), and the join is
    /// confirmed with the control plane in the background.
    async fn resume(&mut self) {
        let saved = match self.state.membership().await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not read the saved membership");
                return;
            }
        };
        let Ok(invite) = saved.invite.parse::<InviteCode>() else {
            tracing::warn!("saved invite is unreadable; forgetting the membership");
            let _ = self.state.set_membership(None).await;
            return;
        };
        tracing::info!(party = %invite.party, "rejoining the saved party");
        // A bad saved view is logged; the confirming join brings a fresh one.
        let _ = self
            .start_session(invite, saved.player_name, saved.last_view, true)
            .await;
        self.beat();
    }

    /// The span a command runs in: named after it, with the party it concerns (for a join,
    /// the invite's), so every line it logs says which party.
    fn command_span(&self, cmd: &Command) -> tracing::Span {
        let (name, party) = match cmd {
            Command::Create(..) => ("create", None),
            Command::Join(code, ..) => (
                "join",
                code.trim().parse::<InviteCode>().ok().map(|i| i.party),
            ),
            Command::Leave(_) => ("leave", None),
            Command::Kick(..) => ("kick", None),
            Command::Lock(..) => ("lock", None),
            Command::Invite(_) => ("invite", None),
            Command::SetName(..) => ("set_name", None),
        };
        let party = party.or_else(|| self.session.as_ref().map(|s| s.invite.party));
        match party {
            Some(party) => tracing::info_span!("command", command = name, %party),
            None => tracing::info_span!("command", command = name, party = tracing::field::Empty),
        }
    }

    /// The current party's span, for work done on its behalf.
    fn party_span(&self) -> tracing::Span {
        match &self.session {
            Some(s) => tracing::info_span!("party", party = %s.invite.party),
            None => tracing::Span::none(),
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Create(req, reply) => {
                let r = self.create(req).await;
                let _ = reply.send(r);
            }
            Command::Join(invite, name, reply) => {
                let r = self.join(&invite, name).await;
                let _ = reply.send(r);
            }
            Command::Leave(reply) => {
                let r = match self.session.is_some() {
                    true => {
                        self.leave_current().await;
                        Ok(())
                    }
                    false => Err(LocalError::not_in_party()),
                };
                let _ = reply.send(r);
            }
            Command::Kick(who, reply) => {
                let r = self.kick(&who).await;
                let _ = reply.send(r);
            }
            Command::Lock(locked, reply) => {
                let r = self.lock(locked).await;
                let _ = reply.send(r);
            }
            Command::SetName(name, reply) => {
                self.name = name.clone();
                self.shared.write().await.name = name;
                self.changes.notify_one();
                let _ = reply.send(Ok(()));
            }
            Command::Invite(reply) => {
                let r = self
                    .session
                    .as_ref()
                    .map(|s| invite_response(s, &self.key))
                    .ok_or_else(LocalError::not_in_party);
                let _ = reply.send(r);
            }
        }
    }

    /// Creates a party; the current one (if any) is left only once the new one exists.
    async fn create(&mut self, req: CreateRequest) -> Result<InviteResponse, LocalError> {
        let player_name = req.player_name.unwrap_or_else(|| self.name.clone());
        let client = ControlClient::new(&self.control_url, self.secret.clone());
        let resp = client
            .create(&CreatePartyRequest {
                name: req.name,
                max_members: req.max_members,
                player_name: player_name.clone(),
            })
            .await?;
        let invite: InviteCode = resp.invite.parse().map_err(|e| {
            LocalError::new(
                502,
                "control_error",
                format!("the control plane sent a bad invite: {e}"),
            )
        })?;
        if self.session.is_some() {
            self.leave_current().await;
        }
        self.enter(invite, player_name, resp.party).await
    }

    /// Joins a party; the current one (if any) is left only once the join succeeded, so a
    /// refused join leaves the player where they were.
    async fn join(
        &mut self,
        code: &str,
        name: Option<String>,
    ) -> Result<InviteResponse, LocalError> {
        let invite: InviteCode = code.parse().map_err(|e: lanrage_proto::InviteError| {
            // The local API checked the code's shape (a 400 there): one of that shape that
            // does not decode names no party.
            LocalError::new(
                404,
                "invite_invalid",
                format!("{e}; copy the whole code the host shared (it starts with lr1-)"),
            )
        })?;
        let player_name = name.unwrap_or_else(|| self.name.clone());
        let req = JoinPartyRequest {
            secret: Some(invite.secret),
            player_name: player_name.clone(),
        };
        if let Some(s) = &self.session
            && s.invite.party == invite.party
        {
            if s.needs_join {
                let view = s.client.join(invite.party, &req).await?.party;
                if let Some(s) = &mut self.session {
                    s.needs_join = false;
                }
                let _ = self.apply_view(view).await; // logged inside
            }
            return self
                .session
                .as_ref()
                .map(|s| invite_response(s, &self.key))
                .ok_or_else(LocalError::not_in_party);
        }
        let client = ControlClient::new(&invite.control_url, self.secret.clone());
        let resp = client.join(invite.party, &req).await?;
        if self.session.is_some() {
            self.leave_current().await;
        }
        self.enter(invite, player_name, resp.party).await
    }

    /// Starts the session for a party the control plane just admitted us to.
    async fn enter(
        &mut self,
        invite: InviteCode,
        player_name: String,
        view: PartyView,
    ) -> Result<InviteResponse, LocalError> {
        // A created party's id is known only now.
        tracing::Span::current().record("party", tracing::field::display(invite.party));
        tracing::info!(members = view.members.len(), "entering the party");
        if let Err(e) = self
            .start_session(invite, player_name, Some(view), false)
            .await
        {
            // A member that cannot route would only black-hole its friends' packets.
            self.leave_current().await;
            return Err(
                if e.contains("Operation not permitted") || e.contains("Permission denied") {
                    LocalError::new(
                        500,
                        "no_tun_permission",
                        "LANrage cannot create its network interface: permission denied; run the \
                     daemon as root (`sudo lanrage up`) or grant it CAP_NET_ADMIN \
                     (`sudo setcap cap_net_admin+ep $(command -v lanrage)`)",
                    )
                } else {
                    LocalError::new(500, "setup_failed", e)
                },
            );
        }
        // Relay credentials are bound to the membership: the last party's are revoked.
        self.ice_next = None;
        self.refresh_ice().await;
        self.publish_candidates().await;
        self.session
            .as_ref()
            .map(|s| invite_response(s, &self.key))
            .ok_or_else(|| {
                LocalError::new(
                    500,
                    "setup_failed",
                    "the party could not be set up; see the daemon log",
                )
            })
    }

    /// Leaves the current party: local teardown first (the player is out at once), then the
    /// control plane is told; if it cannot be reached it drops the silent member by itself.
    async fn leave_current(&mut self) {
        let Some(s) = self.session.take() else { return };
        let (client, party) = (s.client.clone(), s.invite.party);
        drop(s);
        self.end_session("left the party").await;
        match client.leave(party).await {
            Ok(()) => {}
            Err(ClientError::Api { code, .. })
                if code == "not_member" || code == "party_not_found" => {}
            Err(e) => tracing::warn!(error = %e, "left locally; the control plane was not told"),
        }
    }

    async fn kick(&mut self, who: &str) -> Result<(), LocalError> {
        let s = self.session.as_ref().ok_or_else(LocalError::not_in_party)?;
        let view = s.client.kick(s.invite.party, who).await?;
        let _ = self.apply_view(view).await; // logged inside
        Ok(())
    }

    async fn lock(&mut self, locked: bool) -> Result<(), LocalError> {
        let s = self.session.as_ref().ok_or_else(LocalError::not_in_party)?;
        let view = s.client.lock(s.invite.party, locked).await?;
        let _ = self.apply_view(view).await; // logged inside
        Ok(())
    }

    async fn start_session(
        &mut self,
        invite: InviteCode,
        player_name: String,
        view: Option<PartyView>,
        needs_join: bool,
    ) -> Result<(), String> {
        self.generation += 1;
        let client = ControlClient::new(&invite.control_url, self.secret.clone());
        let ws = tokio::spawn(ws_loop(
            client.clone(),
            self.generation,
            self.events_tx.clone(),
        ));
        self.session = Some(Session {
            generation: self.generation,
            client,
            invite,
            player_name,
            view: None,
            needs_join,
            beat_in_flight: false,
            ws,
        });
        match view {
            Some(v) => self.apply_view(v).await,
            None => {
                self.save_membership().await;
                Ok(())
            }
        }
    }

    /// Sends a heartbeat (or, if the membership is unconfirmed, a join) in the background;
    /// the answer comes back as [`SessionEvent::Beat`], so a slow control plane never holds
    /// up the player's commands.
    fn beat(&mut self) {
        let Some(s) = &mut self.session else { return };
        if s.beat_in_flight {
            return;
        }
        s.beat_in_flight = true;
        let (client, party, generation, joined) =
            (s.client.clone(), s.invite.party, s.generation, s.needs_join);
        let req = JoinPartyRequest {
            secret: Some(s.invite.secret),
            player_name: s.player_name.clone(),
        };
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let result = if joined {
                client.join(party, &req).await.map(|r| r.party)
            } else {
                client.heartbeat(party).await
            };
            let _ = tx
                .send(SessionEvent::Beat {
                    generation,
                    joined,
                    result,
                })
                .await;
        });
    }

    async fn event(&mut self, ev: SessionEvent) {
        let current = self.session.as_ref().map(|s| s.generation);
        match ev {
            SessionEvent::Connected(g) if Some(g) == current => {
                self.set_control("connected".into()).await;
                if self.session.as_ref().is_some_and(|s| s.needs_join) {
                    self.beat();
                }
            }
            SessionEvent::Disconnected(g, why) if Some(g) == current => {
                self.set_control(format!("unreachable: {why}")).await;
            }
            SessionEvent::Message(g, msg) if Some(g) == current => match msg {
                ServerMessage::Party { party } => {
                    if self
                        .session
                        .as_ref()
                        .is_some_and(|s| s.invite.party == party.id)
                    {
                        let _ = self.apply_view(party).await; // logged inside
                    }
                }
                ServerMessage::Removed { party, reason } => {
                    if self
                        .session
                        .as_ref()
                        .is_some_and(|s| s.invite.party == party)
                    {
                        tracing::info!(%reason, "removed from the party");
                        self.end_session(&reason).await;
                    }
                }
                ServerMessage::Signal { .. } => {
                    tracing::trace!("signal ignored: no ICE agent yet")
                }
                ServerMessage::Error { error } => tracing::debug!(%error, "control plane error"),
            },
            SessionEvent::Beat {
                generation,
                joined,
                result,
            } if Some(generation) == current => self.beat_done(joined, result).await,
            _ => {} // from an ended session
        }
    }

    async fn beat_done(&mut self, joined: bool, result: Result<PartyView, ClientError>) {
        if let Some(s) = &mut self.session {
            s.beat_in_flight = false;
        }
        match result {
            Ok(view) => {
                if joined && let Some(s) = &mut self.session {
                    s.needs_join = false;
                    tracing::info!(party = %s.invite.party, "membership confirmed");
                    // Relay credentials are bound to the membership: fetch them now.
                    self.ice_next = None;
                }
                let _ = self.apply_view(view).await; // logged inside
                self.publish_candidates().await;
            }
            Err(e) if joined && is_final(&e) => {
                tracing::warn!(error = %e, "the saved party refused this device; leaving it");
                self.end_session(&e.to_string()).await;
            }
            Err(ClientError::Api { code, .. })
                if !joined && (code == "not_member" || code == "party_not_found") =>
            {
                // Removed while away: join again at once (the same address comes back);
                // if the party itself is gone, that join says so and the session ends.
                if let Some(s) = &mut self.session {
                    s.needs_join = true;
                }
                self.beat();
            }
            Err(e) => {
                if joined {
                    tracing::info!(error = %e, "could not confirm the membership; will retry");
                }
                self.set_control(format!("unreachable: {e}")).await;
            }
        }
    }

    /// Makes the data plane match a party view, after checking it is safe to configure.
    /// Failures are logged here; the error is for the callers that must refuse (create,
    /// join), the others carry on with the last good configuration.
    async fn apply_view(&mut self, view: PartyView) -> Result<(), String> {
        let Some(s) = &mut self.session else {
            return Ok(());
        };
        if s.view
            .as_ref()
            .is_some_and(|v| v.id == view.id && v.version > view.version)
        {
            return Ok(()); // an older view arriving late
        }
        let checked = match lanrage_core::party::check_view(&view, &self.key) {
            Ok(c) => c,
            Err(lanrage_core::party::ViewError::NotMember) => {
                tracing::info!("this device is no longer a member of the party");
                self.end_session("no longer a member").await;
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "refusing a party view from the control plane");
                return Err(format!("the control plane sent an unsafe party: {e}"));
            }
        };
        let configured = self
            .dataplane
            .set_party(checked.local_ip, checked.prefix, checked.peers)
            .await
            .map_err(|e| format!("{e:#}"));
        if let Err(e) = &configured {
            tracing::error!(error = %e, "could not configure the data plane");
        }
        let changed = s.view.as_ref().is_none_or(|v| v != &view);
        let mut played: Vec<String> = view
            .members
            .iter()
            .filter(|m| m.public_key != self.key)
            .flat_map(|m| m.games.iter().cloned())
            .collect();
        played.sort();
        played.dedup();
        self.games.party.send_if_modified(|cur| {
            let differs = *cur != played;
            if differs {
                cur.clone_from(&played);
            }
            differs
        });
        s.view = Some(view.clone());
        self.shared.write().await.party = Some(view);
        self.changes.notify_one();
        if changed {
            self.save_membership().await;
        }
        configured
    }

    /// Fetches the STUN/TURN servers (and fresh credentials) now and then: relays come and
    /// go, and credentials expire.
    async fn refresh_ice(&mut self) {
        let Some(s) = &self.session else { return };
        let now = std::time::Instant::now();
        if self.ice_next.is_some_and(|t| now < t) {
            return;
        }
        match s.client.ice().await {
            Ok(ice) => {
                // No relay yet (one may be registering right now): ask again soon.
                let again = if ice.turn.is_empty() {
                    ICE_RETRY
                } else {
                    ICE_REFRESH
                };
                self.ice_next = Some(now + again);
                let turn = ice
                    .turn
                    .into_iter()
                    .map(|t| {
                        (
                            t.addr,
                            lanrage_core::turn::Credentials {
                                username: t.username,
                                password: t.password,
                            },
                        )
                    })
                    .collect();
                self.dataplane.set_ice(ice.stun, turn).await;
            }
            // Not (yet, or no longer) a member: normal around a join; ask again soon.
            Err(ClientError::Api { code, .. }) if code == "not_a_member" => {
                self.ice_next = Some(now + ICE_RETRY);
                tracing::debug!("no relay credentials before the membership is confirmed");
            }
            Err(e) => tracing::debug!(error = %e, "fetching ICE servers failed; retrying"),
        }
    }

    async fn publish_candidates(&mut self) {
        let Some(s) = &self.session else { return };
        let Some(view) = &s.view else { return };
        let mut mine = net::host_candidates(self.dataplane.port);
        let stats = self.dataplane.stats().await;
        // The server-reflexive address: behind an endpoint-independent NAT, peers that
        // send to it at the same time as we send to theirs open the way both directions.
        if let Some(public) = stats.public_addr
            && !mine.contains(&public)
        {
            mine.push(public);
        }
        // The router's forwarded port: reachable from anyone, even behind a symmetric NAT.
        if let Some(m) = stats.port_mapping {
            let mapped = SocketAddr::V4(m.external);
            if !mine.contains(&mapped) {
                mine.push(mapped);
            }
        }
        // Relayed addresses: the floor every peer can reach.
        for r in &stats.relayed {
            if !mine.contains(r) {
                mine.push(*r);
            }
        }
        let nat = stats.nat.as_ref().and_then(NatReport::hint);
        let mut games = self.games.local.borrow().clone();
        games.truncate(lanrage_proto::api::MAX_GAMES);
        let published = view
            .members
            .iter()
            .find(|m| m.public_key == self.key)
            .map(|m| {
                (
                    m.candidates.clone(),
                    m.relayed.clone(),
                    m.nat,
                    m.games.clone(),
                )
            });
        if published.as_ref() == Some(&(mine.clone(), stats.relayed.clone(), nat, games.clone())) {
            return;
        }
        let req = CandidatesRequest {
            candidates: mine,
            relayed: stats.relayed,
            nat,
            games,
        };
        match s.client.set_candidates(s.invite.party, req).await {
            Ok(view) => {
                let _ = self.apply_view(view).await; // logged inside
            }
            Err(e) => tracing::debug!(error = %e, "publishing candidates failed; retrying later"),
        }
    }

    async fn end_session(&mut self, reason: &str) {
        tracing::info!(%reason, "party session ended");
        self.session = None;
        self.games.party.send_replace(Vec::new());
        self.dataplane.clear().await;
        if let Err(e) = self.state.set_membership(None).await {
            tracing::error!(error = %format!("{e:#}"), "could not clear the saved membership");
        }
        let mut shared = self.shared.write().await;
        shared.party = None;
        shared.control = "idle".into();
        self.changes.notify_one();
    }

    async fn save_membership(&self) {
        let Some(s) = &self.session else { return };
        let m = Membership {
            invite: s.invite.to_string(),
            player_name: s.player_name.clone(),
            last_view: s.view.clone(),
        };
        if let Err(e) = self.state.set_membership(Some(&m)).await {
            tracing::error!(error = %format!("{e:#}"), "could not save the membership");
        }
    }

    async fn set_control(&self, status: String) {
        self.shared.write().await.control = status;
        self.changes.notify_one();
    }
}

fn invite_response(s: &Session, me: &DeviceKey) -> InviteResponse {
    let view = s.view.as_ref();
    InviteResponse {
        invite: s.invite.to_string(),
        party_id: s.invite.party,
        party_name: view.map(|v| v.name.clone()).unwrap_or_default(),
        virtual_ip: view
            .and_then(|v| v.members.iter().find(|m| m.public_key == *me))
            .map(|m| m.virtual_ip),
    }
}

/// Keeps a WebSocket to the session's control plane open, forwarding every push.
async fn ws_loop(client: ControlClient, generation: u64, tx: mpsc::Sender<SessionEvent>) {
    let mut backoff = WS_BACKOFF_MIN;
    loop {
        let error = match client.ws_request().await {
            Err(e) => e.to_string(),
            Ok(req) => match tokio_tungstenite::connect_async(req).await {
                Err(e) => format!("WebSocket to {}: {e}", client.base_url()),
                Ok((mut stream, _)) => {
                    backoff = WS_BACKOFF_MIN;
                    if tx.send(SessionEvent::Connected(generation)).await.is_err() {
                        return;
                    }
                    loop {
                        // The server pings every 20 s; three missed pings mean it is gone.
                        let Ok(next) = tokio::time::timeout(WS_SILENCE, stream.next()).await else {
                            break "no word from the control plane for 60 s".to_owned();
                        };
                        match next {
                            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                                match serde_json::from_str::<ServerMessage>(&text) {
                                    Ok(msg) => {
                                        if tx
                                            .send(SessionEvent::Message(generation, msg))
                                            .await
                                            .is_err()
                                        {
                                            return;
                                        }
                                    }
                                    Err(e) => {
                                        tracing::debug!(error = %e, "unreadable push ignored")
                                    }
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break format!("WebSocket closed: {e}"),
                            None => break "WebSocket closed".to_owned(),
                        }
                    }
                }
            },
        };
        if tx
            .send(SessionEvent::Disconnected(generation, error))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(WS_BACKOFF_MAX);
    }
}
