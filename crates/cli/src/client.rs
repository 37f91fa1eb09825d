//! The CLI's side of the local API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use lanrage_proto::local::{
    API_TOKEN_FILE, API_TOKEN_HEADER, CreateRequest, InviteResponse, JoinRequest, KickRequest,
    LocalError, LockRequest, Status,
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

pub struct LocalClient {
    api: SocketAddr,
    state_dir: PathBuf,
    http: reqwest::Client,
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
        }
    }

    pub async fn create(
        &self,
        name: String,
        max_members: Option<u32>,
        player_name: Option<String>,
    ) -> anyhow::Result<()> {
        let req = CreateRequest {
            name,
            max_members,
            player_name,
        };
        let r: InviteResponse = self.post("/v1/party/create", &req).await?;
        print_invite(&r, "Party created.");
        Ok(())
    }

    pub async fn join(&self, invite: String, player_name: Option<String>) -> anyhow::Result<()> {
        let r: InviteResponse = self
            .post(
                "/v1/party/join",
                &JoinRequest {
                    invite,
                    player_name,
                },
            )
            .await?;
        let ip = r.virtual_ip.map(|i| i.to_string()).unwrap_or_default();
        println!("Joined party \"{}\" as {ip}.", r.party_name);
        Ok(())
    }

    pub async fn leave(&self) -> anyhow::Result<()> {
        let _: serde_json::Value = self.post("/v1/party/leave", &()).await?;
        println!("Left the party.");
        Ok(())
    }

    pub async fn invite(&self) -> anyhow::Result<()> {
        let r: InviteResponse = self
            .request(reqwest::Method::GET, "/v1/party/invite", None::<&()>)
            .await?;
        print_invite(&r, "");
        Ok(())
    }

    pub async fn kick(&self, member: String) -> anyhow::Result<()> {
        let _: serde_json::Value = self
            .post(
                "/v1/party/kick",
                &KickRequest {
                    member: member.clone(),
                },
            )
            .await?;
        println!("Removed {member} from the party.");
        Ok(())
    }

    pub async fn lock(&self, locked: bool) -> anyhow::Result<()> {
        let _: serde_json::Value = self.post("/v1/party/lock", &LockRequest { locked }).await?;
        println!(
            "{}",
            if locked {
                "Party locked: nobody new can join."
            } else {
                "Party unlocked."
            }
        );
        Ok(())
    }

    pub async fn status(&self, json: bool) -> anyhow::Result<()> {
        let s: Status = self
            .request(reqwest::Method::GET, "/v1/status", None::<&()>)
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
        if method != reqwest::Method::GET || path == "/v1/party/invite" {
            req = req.header(API_TOKEN_HEADER, self.token()?);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "the LANrage daemon is not running (nothing answers on {}); start it with `lanrage up`",
                    self.api
                )
            } else {
                anyhow!("talking to the daemon on {}: {e}", self.api)
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the daemon's answer")?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<LocalError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("the daemon answered {status}"));
            return Err(anyhow!(msg));
        }
        serde_json::from_slice(&bytes).context("the daemon sent an unreadable answer")
    }

    fn token(&self) -> anyhow::Result<String> {
        let path = self.state_dir.join(API_TOKEN_FILE);
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                anyhow!(
                    "cannot read the API token {}: {e} (run as the daemon's user, or pass --state-dir)",
                    path.display()
                )
            })
    }
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
