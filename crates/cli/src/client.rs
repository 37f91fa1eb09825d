//! The CLI's side of the local API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use lanrage_proto::local::{
    API_TOKEN_FILE, API_TOKEN_HEADER, CreateRequest, Done, InviteResponse, JoinRequest,
    KickRequest, LocalError, LockRequest, Status,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the daemon is.
#[derive(clap::Args, Clone)]
pub struct LocalArgs {
    /// The daemon's local API address.
    #[arg(long, env = "LANRAGE_API", default_value = lanrage_proto::DEFAULT_LOCAL_API, global = true)]
    api: SocketAddr,
    /// The daemon's state directory (the API token is read from it).
    #[arg(long, env = "LANRAGE_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
}

/// An error answer from the daemon; its code decides the CLI's exit status.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// A failure before or around the API call, with its exit code (see `EXIT_CODES`).
#[derive(Debug)]
pub struct Failure {
    pub exit: u8,
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code and error code for a failed command.
pub fn classify(e: &anyhow::Error) -> (u8, &str) {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return (f.exit, f.code);
    }
    if let Some(a) = e.downcast_ref::<ApiError>() {
        let exit = match (a.status, a.code.as_str()) {
            (_, "no_tun_permission") | (401 | 403, "unauthorized" | "forbidden_host") => 5,
            (400..=499, _) => 4,
            _ => 6,
        };
        return (exit, &a.code);
    }
    (1, "error")
}

/// `lanrage up` needs to create a TUN device: root or CAP_NET_ADMIN, said before anything
/// starts rather than when the first party is joined.
pub fn check_net_admin() -> anyhow::Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Ok(()); // not Linux-like: the TUN step reports it
    };
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match effective {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) == 0 => Err(Failure {
            exit: 5,
            code: "no_tun_permission",
            message: format!(
                "start-up step `tun` failed: {}",
                lanrage_daemon::NO_TUN_PERMISSION
            ),
        }
        .into()),
        _ => Ok(()),
    }
}

pub struct LocalClient {
    api: SocketAddr,
    state_dir: PathBuf,
    http: reqwest::Client,
    /// Print JSON instead of tables.
    pub json: bool,
}

impl LocalClient {
    pub fn new(args: &LocalArgs) -> Self {
        Self {
            api: args.api,
            state_dir: args
                .state_dir
                .clone()
                .unwrap_or_else(lanrage_daemon::default_state_dir),
            http: reqwest::Client::new(),
            json: false,
        }
    }

    pub fn with_json(mut self, json: bool) -> Self {
        self.json = json;
        self
    }

    /// The web UI's address with the token in its fragment (never sent over the wire; the
    /// page keeps it and strips it from the address bar).
    pub fn ui_url(&self) -> anyhow::Result<String> {
        Ok(format!("http://{}/#token={}", self.api, self.token()?))
    }

    pub async fn create(
        &self,
        name: String,
        max_members: Option<u32>,
        player_name: Option<String>,
    ) -> anyhow::Result<()> {
        // What a player types may carry stray spaces; the API takes names as they are.
        let req = CreateRequest {
            name: name.trim().to_owned(),
            max_members,
            player_name: player_name.map(|n| n.trim().to_owned()),
        };
        let r: InviteResponse = self.post("/api/v1/party/create", &req).await?;
        self.print_invite(&r, "Party created.")
    }

    pub async fn join(&self, invite: String, player_name: Option<String>) -> anyhow::Result<()> {
        let r: InviteResponse = self
            .post(
                "/api/v1/party/join",
                &JoinRequest {
                    invite: invite.trim().to_owned(),
                    player_name: player_name.map(|n| n.trim().to_owned()),
                },
            )
            .await?;
        if self.json {
            return print_json(&r);
        }
        let ip = r.virtual_ip.map(|i| i.to_string()).unwrap_or_default();
        println!("Joined party \"{}\" as {ip}.", r.party_name);
        Ok(())
    }

    pub async fn leave(&self) -> anyhow::Result<()> {
        let r: Done = self.post("/api/v1/party/leave", &()).await?;
        self.done(&r, "Left the party.")
    }

    pub async fn invite(&self) -> anyhow::Result<()> {
        let r: InviteResponse = self
            .request(reqwest::Method::GET, "/api/v1/party/invite", None::<&()>)
            .await?;
        self.print_invite(&r, "")
    }

    pub async fn kick(&self, member: String) -> anyhow::Result<()> {
        let r: Done = self
            .post(
                "/api/v1/party/kick",
                &KickRequest {
                    member: member.clone(),
                },
            )
            .await?;
        self.done(&r, &format!("Removed {member} from the party."))
    }

    pub async fn lock(&self, locked: bool) -> anyhow::Result<()> {
        let r: Done = self
            .post("/api/v1/party/lock", &LockRequest { locked })
            .await?;
        self.done(
            &r,
            if locked {
                "Party locked: nobody new can join."
            } else {
                "Party unlocked."
            },
        )
    }

    pub async fn status(&self, json: bool) -> anyhow::Result<()> {
        let s: Status = self
            .request(reqwest::Method::GET, "/api/v1/status", None::<&()>)
            .await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            print_status(&s);
        }
        Ok(())
    }

    pub(crate) async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    pub(crate) async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let mut req = self
            .http
            .request(method.clone(), format!("http://{}{path}", self.api));
        if method != reqwest::Method::GET || path == "/api/v1/party/invite" {
            req = req.header(API_TOKEN_HEADER, self.token()?);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::Error::new(Failure {
                    exit: 3,
                    code: "daemon_not_running",
                    message: format!(
                        "the LANrage daemon is not running (nothing answers on {}); start it \
                         with `sudo lanrage up`",
                        self.api
                    ),
                })
            } else {
                anyhow!("talking to the daemon on {}: {e}", self.api)
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the daemon's answer")?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<LocalError>(&bytes) {
                Ok(e) => anyhow::Error::new(ApiError {
                    status: status.as_u16(),
                    code: e.error.code,
                    message: e.error.message,
                }),
                Err(_) => anyhow!("the daemon answered {status}"),
            });
        }
        serde_json::from_slice(&bytes).context("the daemon sent an unreadable answer")
    }

    fn token(&self) -> anyhow::Result<String> {
        let path = self.state_dir.join(API_TOKEN_FILE);
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                Failure {
                    exit: 5,
                    code: "no_token",
                    message: format!(
                        "cannot read the API token {}: {e} (run as the daemon's user, e.g. with \
                         sudo, or pass --state-dir)",
                        path.display()
                    ),
                }
                .into()
            })
    }
}

impl LocalClient {
    fn print_invite(&self, r: &InviteResponse, headline: &str) -> anyhow::Result<()> {
        if self.json {
            return print_json(r);
        }
        print_invite(r, headline);
        Ok(())
    }

    fn done(&self, r: &Done, human: &str) -> anyhow::Result<()> {
        if self.json {
            return print_json(r);
        }
        println!("{human}");
        Ok(())
    }
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_invite(r: &InviteResponse, headline: &str) {
    if !headline.is_empty() {
        let ip = r
            .virtual_ip
            .map(|i| format!(" You are {i}."))
            .unwrap_or_default();
        eprintln!(
            "{headline} \"{}\".{ip} Share this invite code:",
            r.party_name
        );
    }
    println!("{}", r.invite);
}

fn print_status(s: &Status) {
    let ip = s
        .virtual_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "-".into());
    println!(
        "{}  {}  control: {} ({})",
        s.name, ip, s.control, s.control_url
    );
    if let Some(nat) = &s.nat {
        let public = nat
            .public_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let binding = match &nat.binding_lifetime {
            Some(b) if b.measuring => {
                format!(", idle binding kept ≥ {:.1} s (measuring)", b.at_least_s)
            }
            Some(b) => format!(", idle binding kept ≥ {:.1} s", b.at_least_s),
            None => String::new(),
        };
        println!(
            "NAT: mapping {}, filtering {}, public address {public}{binding}, keepalive {:.1} s",
            nat.mapping, nat.filtering, nat.keepalive_s
        );
    }
    if let Some(m) = &s.port_mapping {
        println!(
            "Router forwards {} to this device ({}, renewed in the background)",
            m.external, m.protocol
        );
    }
    let Some(p) = &s.party else {
        println!(
            "Not in a party. Create one with `lanrage party create NAME` or join with `lanrage party join CODE`."
        );
        return;
    };
    let lock = if p.locked { ", locked" } else { "" };
    println!(
        "Party \"{}\" ({}), host: {}{lock}",
        p.name,
        p.id,
        if p.is_host { "you" } else { &p.host }
    );
    if p.members.is_empty() {
        println!("Nobody else is here yet. Share the invite: lanrage party invite");
        return;
    }
    println!(
        "{:<20} {:<15} {:<12} {:>10}  {:<7} {:<22} PLAYING",
        "NAME", "VIRTUAL IP", "PATH", "LATENCY", "ONLINE", "ENDPOINT"
    );
    for m in &p.members {
        let latency = m
            .latency_ms
            .map(|l| format!("{l:.2} ms"))
            .unwrap_or_else(|| "-".into());
        let endpoint = m
            .endpoint
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".into());
        let playing: Vec<&str> = m.games.iter().map(|g| g.name.as_str()).collect();
        println!(
            "{:<20} {:<15} {:<12} {:>10}  {:<7} {:<22} {}",
            m.name,
            m.virtual_ip,
            m.path.as_str(),
            latency,
            if m.online { "yes" } else { "away" },
            endpoint,
            if playing.is_empty() {
                "-".to_owned()
            } else {
                playing.join(", ")
            }
        );
    }
}
