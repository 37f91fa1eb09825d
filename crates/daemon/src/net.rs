//! This machine's addresses: host candidates for peers, and the address invites carry.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::dataplane::TUN_NAME;

/// Every up, non-loopback IPv4 address of this machine (not the TUN), with `port`, sorted.
pub fn host_candidates(port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = interface_addrs()
        .into_iter()
        .map(|(_, ip)| SocketAddr::new(IpAddr::V4(ip), port))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The address of the interface holding the default route, else the first candidate.
pub fn primary_addr() -> Option<Ipv4Addr> {
    let default_if = default_route_interface();
    let addrs = interface_addrs();
    addrs
        .iter()
        .find(|(name, _)| Some(name) == default_if.as_ref())
        .or_else(|| addrs.first())
        .map(|(_, ip)| *ip)
}

fn interface_addrs() -> Vec<(String, Ipv4Addr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifa in addrs {
        if ifa.interface_name == TUN_NAME
            || !ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
            || ifa
                .flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(ip) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|s| s.ip())
        else {
            continue;
        };
        if ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() {
            continue;
        }
        out.push((ifa.interface_name.clone(), ip));
    }
    out.sort();
    out
}

/// The interface of the IPv4 default route, from `/proc/net/route`.
fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let iface = cols.next()?;
        let dest = cols.next()?;
        (dest == "00000000").then(|| iface.to_owned())
    })
}

/// The IPv4 default gateway and this machine's address on the interface that reaches it,
/// from `/proc/net/route`: where PCP and NAT-PMP requests go.
pub fn default_gateway() -> Option<(Ipv4Addr, Ipv4Addr)> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    let (iface, gateway) = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway ...; addresses in host byte order, as hex.
        let (iface, dest, gw) = (cols.first()?, cols.get(1)?, cols.get(2)?);
        let gw = u32::from_str_radix(gw, 16).ok()?;
        (*dest == "00000000" && gw != 0)
            .then(|| (iface.to_string(), Ipv4Addr::from(gw.to_ne_bytes())))
    })?;
    let (_, client) = interface_addrs()
        .into_iter()
        .find(|(name, _)| *name == iface)?;
    Some((gateway, client))
}

/// Whether this process may create the party's TUN interface: CAP_NET_ADMIN and a usable
/// `/dev/net/tun`. Checked at start-up so the player hears it at once, not at the first
/// party join.
pub fn check_tun() -> anyhow::Result<()> {
    const CAP_NET_ADMIN: u32 = 12;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
    if effective.is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) == 0) {
        anyhow::bail!("{NO_TUN_PERMISSION}");
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open /dev/net/tun ({e}): LANrage needs the TUN driver (`modprobe tun`)"
            )
        })
}

/// What to do without the permission to create the interface.
pub const NO_TUN_PERMISSION: &str = "LANrage needs to create a network interface: run it as \
    root (`sudo lanrage up`) or grant it CAP_NET_ADMIN \
    (`sudo setcap cap_net_admin+ep $(command -v lanrage)`)";
