//! `lanrage games …`: what is running, the profiles, the history and the Steam library.

use lanrage_proto::games::GameEvent;
use lanrage_proto::local::{GamesStatus, ProfilesResponse};

use crate::client::LocalClient;
use crate::lan::print_json_or;

#[derive(clap::Subcommand)]
pub enum GamesCmd {
    /// Games running on this device (the default): `--json` gives a list of
    /// `{"id", "name", "confidence", "method", "pid", "since_ms"}`.
    Running,
    /// What the running games changed: priority ports, LAN ports, MTU, keepalive.
    Tuning,
    /// The loaded profiles, and any profile file that was skipped and why.
    Profiles,
    /// Games that started and stopped.
    History,
    /// Games installed in a local Steam library, with their profile when LANrage knows them.
    Library,
}

pub async fn run(c: &LocalClient, cmd: Option<GamesCmd>, json: bool) -> anyhow::Result<()> {
    let get = reqwest::Method::GET;
    match cmd.unwrap_or(GamesCmd::Running) {
        GamesCmd::Running => {
            let s: GamesStatus = c.request(get, "/api/v1/games", None::<&()>).await?;
            print_json_or(json, &s.detected, |d| {
                if d.is_empty() {
                    println!("No game running (scanned every {} s).", s.scan_interval_s);
                }
                for g in d {
                    println!(
                        "{:<28} {:>5.0} %  by {:<8} pid {:<8} {}",
                        g.name,
                        g.confidence * 100.0,
                        format!("{:?}", g.method).to_lowercase(),
                        g.pid,
                        g.summary()
                    );
                }
                if !s.party.is_empty() {
                    println!("The party also plays: {}", s.party.join(", "));
                }
            })
        }
        GamesCmd::Tuning => {
            let s: GamesStatus = c.request(get, "/api/v1/games", None::<&()>).await?;
            print_json_or(json, &s.tuning, |t| match t {
                None => println!("Nothing applied: nobody in the party plays a known game."),
                Some(t) => {
                    let ports: Vec<String> =
                        t.priority_ports.iter().map(ToString::to_string).collect();
                    println!(
                        "priority ports  {} (DSCP {})",
                        or_none(&ports.join(", ")),
                        t.dscp
                    );
                    let lan: Vec<String> = t.lan_ports.iter().map(ToString::to_string).collect();
                    println!("LAN ports       {}", or_none(&lan.join(", ")));
                    println!("MTU             {}", t.mtu);
                    println!("keepalive       {} s", t.keepalive_s);
                }
            })
        }
        GamesCmd::Profiles => {
            let r: ProfilesResponse = c
                .request(get, "/api/v1/games/profiles", None::<&()>)
                .await?;
            print_json_or(json, &r.profiles, |ps| {
                for p in ps {
                    let ports: Vec<String> = p.ports.iter().map(ToString::to_string).collect();
                    println!(
                        "{:<28} {:<14} {:<8} {}",
                        p.id,
                        p.genre,
                        format!("{:?}", p.priority).to_lowercase(),
                        ports.join(",")
                    );
                }
                println!("{} profiles", ps.len());
            })?;
            for e in &r.errors {
                eprintln!("skipped: {e}");
            }
            Ok(())
        }
        GamesCmd::History => {
            let h: Vec<GameEvent> = c.request(get, "/api/v1/games/history", None::<&()>).await?;
            print_json_or(json, &h, |h| {
                for e in h {
                    println!(
                        "{} {:<8} {} (pid {})",
                        e.at_ms,
                        format!("{:?}", e.event).to_lowercase(),
                        e.name,
                        e.pid
                    );
                }
            })
        }
        GamesCmd::Library => {
            let l: serde_json::Value = c.request(get, "/api/v1/games/library", None::<&()>).await?;
            print_json_or(json, &l, |l| {
                let items = l.as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    println!("No Steam library found.");
                }
                for i in items {
                    println!(
                        "{:<10} {:<40} {}",
                        i["app_id"],
                        i["name"].as_str().unwrap_or_default(),
                        i["profile"].as_str().unwrap_or("(no profile)")
                    );
                }
            })
        }
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}
