//! Checks a party view before it reaches the operating system.
//!
//! The view comes from whatever control plane an invite names, so it is network input: a
//! hostile one could hand out a network like `0.0.0.0/1` or place a "member" at the
//! player's DNS server and have that traffic routed into the tunnel. Only private networks
//! of a sensible size are accepted, and every address must sit inside them.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use lanrage_proto::DeviceKey;
use lanrage_proto::api::{NatHint, PartyView};

/// Most candidate addresses used per peer.
pub const MAX_CANDIDATES: usize = 16;

/// A view that is safe to configure.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedView {
    pub local_ip: Ipv4Addr,
    pub prefix: u8,
    pub peers: Vec<CheckedPeer>,
}

/// One other member.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedPeer {
    pub key: DeviceKey,
    pub virtual_ip: Ipv4Addr,
    pub candidates: Vec<SocketAddr>,
    /// The candidates that are TURN relayed addresses.
    pub relayed: Vec<SocketAddr>,
    /// The member's NAT, as it reported it.
    pub nat: Option<NatHint>,
}

/// Why a view was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("this device is not a member of the party")]
    NotMember,
    #[error("party network {0:?} is not a private IPv4 network between /8 and /24")]
    Network(String),
    #[error("member address {0} is outside the party network or reserved")]
    Address(Ipv4Addr),
    #[error("two members share the address {0}")]
    Duplicate(Ipv4Addr),
}

/// Checks `view` for the device `me`.
pub fn check_view(view: &PartyView, me: &DeviceKey) -> Result<CheckedView, ViewError> {
    let (base, prefix) = parse_private_network(&view.network)
        .ok_or_else(|| ViewError::Network(view.network.clone()))?;
    let mask = u32::MAX << (32 - u32::from(prefix));
    let usable = |ip: Ipv4Addr| {
        let v = u32::from(ip);
        v & mask == base && v != base && v != base | !mask
    };
    let mut seen = BTreeSet::new();
    let mut local_ip = None;
    let mut peers = Vec::new();
    for m in &view.members {
        if !usable(m.virtual_ip) {
            return Err(ViewError::Address(m.virtual_ip));
        }
        if !seen.insert(m.virtual_ip) {
            return Err(ViewError::Duplicate(m.virtual_ip));
        }
        if m.public_key == *me {
            local_ip = Some(m.virtual_ip);
            continue;
        }
        let candidates: Vec<SocketAddr> = m
            .candidates
            .iter()
            .filter(|c| {
                let ip = c.ip();
                c.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !ip.is_loopback()
            })
            .take(MAX_CANDIDATES)
            .copied()
            .collect();
        peers.push(CheckedPeer {
            key: m.public_key,
            virtual_ip: m.virtual_ip,
            relayed: m
                .relayed
                .iter()
                .filter(|r| candidates.contains(r))
                .copied()
                .collect(),
            candidates,
            nat: m.nat,
        });
    }
    Ok(CheckedView {
        local_ip: local_ip.ok_or(ViewError::NotMember)?,
        prefix,
        peers,
    })
}

/// `a.b.c.d/p` inside 10/8, 172.16/12, 192.168/16 or 100.64/10 (RFC 1918, RFC 6598), with
/// p between 8 and 24 and no host bits.
fn parse_private_network(s: &str) -> Option<(u32, u8)> {
    let (ip, prefix) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    if !(8..=24).contains(&prefix) {
        return None;
    }
    let base = u32::from(ip);
    let mask = u32::MAX << (32 - u32::from(prefix));
    if base & !mask != 0 {
        return None;
    }
    const PRIVATE: [(u32, u8); 4] = [
        (0x0A00_0000, 8),  // 10.0.0.0/8
        (0xAC10_0000, 12), // 172.16.0.0/12
        (0xC0A8_0000, 16), // 192.168.0.0/16
        (0x6440_0000, 10), // 100.64.0.0/10
    ];
    PRIVATE
        .iter()
        .any(|&(net, bits)| {
            let m = u32::MAX << (32 - u32::from(bits));
            prefix >= bits && base & m == net
        })
        .then_some((base, prefix))
}

#[cfg(test)]
mod tests {
    use lanrage_proto::PartyId;
    use lanrage_proto::api::MemberView;

    use super::*;

    fn member(key: u8, ip: [u8; 4], candidates: &[&str]) -> MemberView {
        MemberView {
            public_key: DeviceKey::from_bytes([key; 32]),
            name: format!("m{key}"),
            virtual_ip: Ipv4Addr::from(ip),
            joined_at: 0,
            online: true,
            candidates: candidates
                .iter()
                .map(|c| c.parse().expect("addr"))
                .collect(),
            relayed: Vec::new(),
            nat: None,
            games: Vec::new(),
        }
    }

    fn view(network: &str, members: Vec<MemberView>) -> PartyView {
        PartyView {
            id: PartyId::from_bytes([1; 8]),
            name: "p".into(),
            version: 1,
            host: DeviceKey::from_bytes([1; 32]),
            locked: false,
            max_members: None,
            network: network.into(),
            members,
        }
    }

    #[test]
    fn a_normal_view_passes_and_junk_candidates_are_dropped() {
        let me = DeviceKey::from_bytes([2; 32]);
        let v = view(
            "10.66.0.0/16",
            vec![
                member(
                    1,
                    [10, 66, 0, 1],
                    &["192.0.2.1:51820", "127.0.0.1:51820", "0.0.0.0:1"],
                ),
                member(2, [10, 66, 0, 2], &[]),
            ],
        );
        let c = check_view(&v, &me).expect("valid");
        assert_eq!(c.local_ip, Ipv4Addr::new(10, 66, 0, 2));
        assert_eq!(c.prefix, 16);
        assert_eq!(c.peers.len(), 1);
        assert_eq!(
            c.peers[0].candidates,
            vec!["192.0.2.1:51820".parse().expect("addr")]
        );
    }

    #[test]
    fn hostile_views_are_refused() {
        let me = DeviceKey::from_bytes([2; 32]);
        let ok_members = || {
            vec![
                member(1, [10, 66, 0, 1], &[]),
                member(2, [10, 66, 0, 2], &[]),
            ]
        };
        for net in [
            "0.0.0.0/1",
            "10.66.0.0/28",
            "8.8.0.0/16",
            "10.66.0.1/16",
            "junk",
            "172.32.0.0/16",
        ] {
            assert!(
                matches!(
                    check_view(&view(net, ok_members()), &me),
                    Err(ViewError::Network(_))
                ),
                "{net}"
            );
        }
        let outside = view(
            "10.66.0.0/16",
            vec![member(1, [8, 8, 8, 8], &[]), member(2, [10, 66, 0, 2], &[])],
        );
        assert_eq!(
            check_view(&outside, &me),
            Err(ViewError::Address(Ipv4Addr::new(8, 8, 8, 8)))
        );
        let bcast = view(
            "10.66.0.0/16",
            vec![
                member(1, [10, 66, 255, 255], &[]),
                member(2, [10, 66, 0, 2], &[]),
            ],
        );
        assert!(matches!(
            check_view(&bcast, &me),
            Err(ViewError::Address(_))
        ));
        let dup = view(
            "10.66.0.0/16",
            vec![
                member(1, [10, 66, 0, 2], &[]),
                member(2, [10, 66, 0, 2], &[]),
            ],
        );
        assert!(matches!(
            check_view(&dup, &me),
            Err(ViewError::Duplicate(_))
        ));
        let absent = view("10.66.0.0/16", vec![member(1, [10, 66, 0, 1], &[])]);
        assert_eq!(check_view(&absent, &me), Err(ViewError::NotMember));
        assert!(
            check_view(
                &view("192.168.77.0/24", vec![member(2, [192, 168, 77, 9], &[])]),
                &me
            )
            .is_ok()
        );
        assert!(
            check_view(
                &view("100.64.0.0/10", vec![member(2, [100, 64, 0, 9], &[])]),
                &me
            )
            .is_ok()
        );
    }
}
