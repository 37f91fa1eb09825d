//! `lanrage lan …`: what LAN emulation forwards, and where each broadcast went.

use std::net::Ipv4Addr;

use anyhow::anyhow;
use lanrage_proto::local::{LanEvent, LanStatus, LanTrace, LanUpdate};

use crate::client::LocalClient;

#[derive(clap::Subcommand)]
pub enum LanCmd {
    /// What is forwarded, and the counters (the default).
    Status,
    /// The last broadcast and multicast packets: who sent them, who got them, what was
    /// dropped and why.
    Trace {
        /// Events shown in the table.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
    /// Forward these UDP ports or multicast groups too (e.g. `27960` or `239.1.2.3`).
    Allow {
        #[arg(required = true)]
        items: Vec<String>,
    },
    /// Take ports or groups off the allow-list.
    Remove {
        #[arg(required = true)]
        items: Vec<String>,
    },
    /// Forward every UDP port and group (`on`), or only the listed ones (`off`).
    All { state: OnOff },
    /// Also catch discovery that games send out of the physical interface (needs root or
    /// CAP_NET_RAW).
    Physical { state: OnOff },
    /// Per-source limits against broadcast storms.
    Rate {
        /// Packets per second from one member.
        #[arg(long)]
        packets: Option<u32>,
        /// Bytes per second from one member.
        #[arg(long)]
        bytes: Option<u32>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

pub async fn run(c: &LocalClient, cmd: Option<LanCmd>) -> anyhow::Result<()> {
    match cmd.unwrap_or(LanCmd::Status) {
        LanCmd::Status => {
            let s: LanStatus = c
                .request(reqwest::Method::GET, "/api/v1/lan", None::<&()>)
                .await?;
            print_json_or(c.json, &s, print_status)
        }
        LanCmd::Trace { last } => {
            let t: LanTrace = c
                .request(reqwest::Method::GET, "/api/v1/lan/trace", None::<&()>)
                .await?;
            print_json_or(c.json, &t, |t| print_trace(t, last))
        }
        LanCmd::Allow { items } => {
            let (ports, groups) = parse_items(&items)?;
            update(
                c,
                LanUpdate {
                    allow_ports: ports,
                    allow_groups: groups,
                    ..LanUpdate::default()
                },
            )
            .await
        }
        LanCmd::Remove { items } => {
            let (ports, groups) = parse_items(&items)?;
            update(
                c,
                LanUpdate {
                    remove_ports: ports,
                    remove_groups: groups,
                    ..LanUpdate::default()
                },
            )
            .await
        }
        LanCmd::All { state } => {
            let all = Some(matches!(state, OnOff::On));
            update(
                c,
                LanUpdate {
                    all,
                    ..LanUpdate::default()
                },
            )
            .await
        }
        LanCmd::Physical { state } => {
            let physical = Some(matches!(state, OnOff::On));
            update(
                c,
                LanUpdate {
                    physical,
                    ..LanUpdate::default()
                },
            )
            .await
        }
        LanCmd::Rate { packets, bytes } => {
            if packets.is_none() && bytes.is_none() {
                return Err(anyhow!("give --packets N and/or --bytes N"));
            }
            update(
                c,
                LanUpdate {
                    rate_packets_per_s: packets,
                    rate_bytes_per_s: bytes,
                    ..LanUpdate::default()
                },
            )
            .await
        }
    }
}

async fn update(c: &LocalClient, u: LanUpdate) -> anyhow::Result<()> {
    let s: LanStatus = c.post("/api/v1/lan/settings", &u).await?;
    print_json_or(c.json, &s, print_status)
}

pub(crate) fn print_json_or<T: serde::Serialize>(
    json: bool,
    v: &T,
    human: impl Fn(&T),
) -> anyhow::Result<()> {
    if json {
        return crate::client::print_json(v);
    }
    human(v);
    Ok(())
}

/// Splits `27960` / `239.1.2.3` arguments into ports and groups.
fn parse_items(items: &[String]) -> anyhow::Result<(Vec<u16>, Vec<Ipv4Addr>)> {
    let mut ports = Vec::new();
    let mut groups = Vec::new();
    for item in items {
        if let Ok(p) = item.parse::<u16>() {
            ports.push(p);
        } else if let Ok(g) = item.parse::<Ipv4Addr>() {
            groups.push(g);
        } else {
            return Err(anyhow!(
                "{item:?} is neither a UDP port (1-65535) nor a multicast group (224.0.0.0-239.255.255.255)"
            ));
        }
    }
    Ok((ports, groups))
}

fn join<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_status(s: &LanStatus) {
    if s.settings.all {
        println!("Forwarding:   every UDP port and multicast group (lan all on)");
    } else {
        println!("Ports:        {}", join(&s.forwarded_ports));
        println!("Groups:       {}", join(&s.forwarded_groups));
        println!(
            "  allow-list: ports {}, groups {}",
            join(&s.settings.ports),
            join(&s.settings.groups)
        );
        println!("  from games: {}", join(&s.profile_ports));
        println!("  joined:     {}", join(&s.joined_groups));
    }
    let physical = match (&s.physical_error, s.physical_capture, s.settings.physical) {
        (Some(e), _, _) => format!("wanted but off: {e}"),
        (None, true, _) => "on".into(),
        (None, false, true) => "on (starts with the party)".into(),
        (None, false, false) => "off".into(),
    };
    println!("Physical:     {physical}");
    println!(
        "Rate limit:   {} packets/s, {} bytes/s per member",
        s.settings.rate_packets_per_s, s.settings.rate_bytes_per_s
    );
    let c = &s.counters;
    println!(
        "Sent:         {} captured ({} physical), {} forwarded as {} copies",
        c.captured, c.captured_physical, c.forwarded, c.copies
    );
    println!(
        "Received:     {} from members, {} delivered",
        c.received, c.injected
    );
    println!(
        "Dropped:      {} port not forwarded, {} duplicates, {} rate limited, {} not UDP",
        c.not_forwarded, c.deduplicated, c.rate_limited, c.unsupported
    );
}

fn print_trace(t: &LanTrace, last: usize) {
    if t.events.is_empty() {
        println!("No broadcast or multicast yet.");
        return;
    }
    println!(
        "{:<12} {:<4} {:<22} {:<22} {:>5}  RESULT",
        "TIME", "DIR", "FROM", "TO", "BYTES"
    );
    let skip = t.events.len().saturating_sub(last);
    for e in &t.events[skip..] {
        println!(
            "{:<12} {:<4} {:<22} {:<22} {:>5}  {}",
            clock(e.at_unix_ms),
            e.direction,
            e.src.to_string(),
            e.dst.to_string(),
            e.size,
            result(e)
        );
    }
}

fn result(e: &LanEvent) -> String {
    let name = |ip: &Ipv4Addr, n: &Option<String>| n.clone().unwrap_or_else(|| ip.to_string());
    if let Some(why) = &e.dropped {
        return format!("dropped: {why}");
    }
    if e.direction == "in" {
        let from = e
            .from
            .as_ref()
            .map(|m| name(&m.ip, &m.name))
            .unwrap_or_default();
        return format!("delivered (from {from})");
    }
    let mut out = if e.sent_to.is_empty() {
        "sent to nobody".to_owned()
    } else {
        let to: Vec<String> = e.sent_to.iter().map(|m| name(&m.ip, &m.name)).collect();
        format!("sent to {}", to.join(", "))
    };
    for s in &e.skipped {
        out.push_str(&format!("; not {} ({})", name(&s.ip, &s.name), s.reason));
    }
    if e.via == "physical" {
        out.push_str(" [physical]");
    }
    out
}

/// HH:MM:SS.mmm in UTC.
fn clock(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let s = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}
