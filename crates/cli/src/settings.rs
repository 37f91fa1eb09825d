//! `lanrage settings`, `lanrage network` and `lanrage ui`: the Settings and Network pages
//! of the web UI, on the command line.

use std::net::Ipv4Addr;

use lanrage_proto::local::{LanSettingsUpdate, Quality, Settings, SettingsUpdate, Status};

use crate::client::LocalClient;
use crate::lan::{OnOff, print_json_or};

#[derive(clap::Subcommand)]
pub enum SettingsCmd {
    /// Show the settings (the default).
    Show,
    /// Change settings; what is not given stays. Lists replace the whole list.
    Set {
        /// The name other members see, from the next party you create or join.
        #[arg(long)]
        player_name: Option<String>,
        /// Forward every UDP port and multicast group.
        #[arg(long)]
        lan_all: Option<OnOff>,
        /// Also catch discovery sent out of the physical interface.
        #[arg(long)]
        physical: Option<OnOff>,
        /// Extra UDP ports to forward, comma-separated (`--ports` alone clears them).
        #[arg(long, num_args = 0.., value_delimiter = ',')]
        ports: Option<Vec<u16>>,
        /// Multicast groups to forward, comma-separated (`--groups` alone clears them).
        #[arg(long, num_args = 0.., value_delimiter = ',')]
        groups: Option<Vec<Ipv4Addr>>,
        /// Broadcast packets per second accepted from one member.
        #[arg(long)]
        rate_packets: Option<u32>,
        /// Broadcast bytes per second accepted from one member.
        #[arg(long)]
        rate_bytes: Option<u32>,
    },
}

pub async fn run(c: &LocalClient, cmd: Option<SettingsCmd>) -> anyhow::Result<()> {
    let s: Settings = match cmd.unwrap_or(SettingsCmd::Show) {
        SettingsCmd::Show => {
            c.request(reqwest::Method::GET, "/api/v1/settings", None::<&()>)
                .await?
        }
        SettingsCmd::Set {
            player_name,
            lan_all,
            physical,
            ports,
            groups,
            rate_packets,
            rate_bytes,
        } => {
            let on = |o: OnOff| matches!(o, OnOff::On);
            let lan = LanSettingsUpdate {
                all: lan_all.map(on),
                physical: physical.map(on),
                ports,
                groups,
                rate_packets_per_s: rate_packets,
                rate_bytes_per_s: rate_bytes,
            };
            let touched = lan.all.is_some()
                || lan.physical.is_some()
                || lan.ports.is_some()
                || lan.groups.is_some()
                || lan.rate_packets_per_s.is_some()
                || lan.rate_bytes_per_s.is_some();
            if player_name.is_none() && !touched {
                anyhow::bail!("nothing to change; see `lanrage settings set --help`");
            }
            let update = SettingsUpdate {
                player_name: player_name.map(|n| n.trim().to_owned()),
                lan: touched.then_some(lan),
            };
            c.request(reqwest::Method::PATCH, "/api/v1/settings", Some(&update))
                .await?
        }
    };
    print_json_or(c.json, &s, print_settings)
}

fn print_settings(s: &Settings) {
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let yes = |b: bool| if b { "on" } else { "off" };
    println!("player name:        {}", s.player_name);
    println!("forward everything: {}", yes(s.lan.all));
    println!("physical capture:   {}", yes(s.lan.physical));
    println!(
        "extra ports:        {}",
        list(s.lan.ports.iter().map(u16::to_string).collect())
    );
    println!(
        "multicast groups:   {}",
        list(s.lan.groups.iter().map(Ipv4Addr::to_string).collect())
    );
    println!(
        "rate limit:         {} packets/s, {} bytes/s per member",
        s.lan.rate_packets_per_s, s.lan.rate_bytes_per_s
    );
}

/// What `lanrage network --json` prints.
#[derive(serde::Serialize)]
struct Network {
    nat: Option<lanrage_proto::local::NatStatus>,
    port_mapping: Option<lanrage_proto::local::PortMappingStatus>,
    relayed: Vec<std::net::SocketAddr>,
    control: String,
    control_url: String,
    host_mode: bool,
    quality: Quality,
}

pub async fn network(c: &LocalClient) -> anyhow::Result<()> {
    let get = reqwest::Method::GET;
    let s: Status = c
        .request(get.clone(), "/api/v1/status", None::<&()>)
        .await?;
    let quality: Quality = c.request(get, "/api/v1/quality", None::<&()>).await?;
    let n = Network {
        nat: s.nat,
        port_mapping: s.port_mapping,
        relayed: s.relayed,
        control: s.control,
        control_url: s.control_url,
        host_mode: s.host_mode,
        quality,
    };
    print_json_or(c.json, &n, print_network)
}

fn print_network(n: &Network) {
    match &n.nat {
        Some(nat) => {
            let public = nat
                .public_addr
                .map_or_else(|| "-".to_owned(), |a| a.to_string());
            println!(
                "NAT: mapping {}, filtering {}, public address {public}, keepalive {:.1} s",
                nat.mapping, nat.filtering, nat.keepalive_s
            );
        }
        None => println!("NAT: not measured (no STUN server answered yet)"),
    }
    if let Some(m) = &n.port_mapping {
        println!("Router forwards {} here ({})", m.external, m.protocol);
    }
    for r in &n.relayed {
        println!("Relayed address: {r}");
    }
    println!(
        "Control plane: {} ({}{})",
        n.control,
        n.control_url,
        if n.host_mode { ", embedded" } else { "" }
    );
    if n.quality.peers.is_empty() {
        println!("No members to measure.");
        return;
    }
    println!(
        "{:<20} {:<12} {:>10} {:>10} {:>10} {:>10}  SAMPLES",
        "MEMBER", "PATH", "NOW", "MIN", "AVG", "MAX"
    );
    for p in &n.quality.peers {
        let lat: Vec<f64> = p.samples.iter().filter_map(|s| s.latency_ms).collect();
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
        let min = lat.iter().copied().reduce(f64::min);
        let max = lat.iter().copied().reduce(f64::max);
        #[allow(clippy::cast_precision_loss)]
        let avg = (!lat.is_empty()).then(|| lat.iter().sum::<f64>() / lat.len() as f64);
        let last = p.samples.last();
        println!(
            "{:<20} {:<12} {:>10} {:>10} {:>10} {:>10}  {}",
            p.name,
            last.map_or("-", |s| s.path.as_str()),
            ms(last.and_then(|s| s.latency_ms)),
            ms(min),
            ms(avg),
            ms(max),
            p.samples.len()
        );
    }
}

pub fn ui(c: &LocalClient) -> anyhow::Result<()> {
    let url = c.ui_url()?;
    if c.json {
        return crate::client::print_json(&serde_json::json!({ "url": url }));
    }
    println!("{url}");
    eprintln!(
        "Open that address in a browser on this machine. It carries the token that controls \
         the party: do not share it."
    );
    Ok(())
}
