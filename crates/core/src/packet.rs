//! The little IPv4 parsing and building the mesh needs: addresses for routing and the
//! cryptokey-routing check, and the daemon's in-tunnel latency probes.
//!
//! Probes are IPv4/UDP datagrams between two members' virtual IPs with source and
//! destination port 0. Port 0 is reserved (RFC 6335 §6) so no program can use it; the
//! receiving daemon consumes them before its TUN and the operating system never sees them.

use std::net::Ipv4Addr;

const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const PROTO_UDP: u8 = 17;
const PROBE_MAGIC: [u8; 3] = *b"LRP";
const PROBE_PAYLOAD_LEN: usize = 3 + 1 + 4 + 8;
/// Total length of a probe packet.
pub const PROBE_LEN: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN + PROBE_PAYLOAD_LEN;

/// Source and destination of an IPv4 packet, if it is one.
pub fn ipv4_addrs(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < IPV4_HEADER_LEN || packet[0] >> 4 != 4 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Some((src, dst))
}

/// The packet without the zero padding WireGuard adds to a multiple of 16 bytes
/// (whitepaper §5.4.6): cut at the IPv4 total length. `None` if the length field is bogus.
pub fn ipv4_unpadded(packet: &[u8]) -> Option<&[u8]> {
    ipv4_addrs(packet)?;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    (IPV4_HEADER_LEN..=packet.len())
        .contains(&total)
        .then(|| &packet[..total])
}

/// Whether a probe asks for an answer or is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Ping,
    Pong,
}

/// A decoded latency probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: ProbeKind,
    pub seq: u32,
    /// The pinger's clock when it sent the ping, in nanoseconds since its own epoch; echoed.
    pub sent_ns: u64,
}

/// Builds a probe packet from `src` to `dst`.
pub fn build_probe(src: Ipv4Addr, dst: Ipv4Addr, probe: Probe) -> Vec<u8> {
    let mut p = vec![0u8; PROBE_LEN];
    let total = u16::try_from(PROBE_LEN).expect("probe fits in u16");
    p[0] = 0x45; // version 4, IHL 5
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64; // TTL
    p[9] = PROTO_UDP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = ipv4_checksum(&p[..IPV4_HEADER_LEN]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp_len = u16::try_from(UDP_HEADER_LEN + PROBE_PAYLOAD_LEN).expect("fits");
    // Ports stay 0; the UDP checksum stays 0, which means "none" in IPv4 (RFC 768).
    p[24..26].copy_from_slice(&udp_len.to_be_bytes());
    let payload = &mut p[IPV4_HEADER_LEN + UDP_HEADER_LEN..];
    payload[..3].copy_from_slice(&PROBE_MAGIC);
    payload[3] = match probe.kind {
        ProbeKind::Ping => 0,
        ProbeKind::Pong => 1,
    };
    payload[4..8].copy_from_slice(&probe.seq.to_be_bytes());
    payload[8..16].copy_from_slice(&probe.sent_ns.to_be_bytes());
    p
}

/// Decodes a probe, or `None` if the packet is ordinary traffic.
pub fn parse_probe(packet: &[u8]) -> Option<Probe> {
    if packet.len() != PROBE_LEN
        || packet[0] != 0x45
        || packet[9] != PROTO_UDP
        || packet[20..24] != [0, 0, 0, 0]
    {
        return None;
    }
    let payload = &packet[IPV4_HEADER_LEN + UDP_HEADER_LEN..];
    if payload[..3] != PROBE_MAGIC {
        return None;
    }
    let kind = match payload[3] {
        0 => ProbeKind::Ping,
        1 => ProbeKind::Pong,
        _ => return None,
    };
    let seq = u32::from_be_bytes(payload[4..8].try_into().ok()?);
    let sent_ns = u64::from_be_bytes(payload[8..16].try_into().ok()?);
    Some(Probe { kind, seq, sent_ns })
}

/// RFC 791 header checksum: one's complement of the one's complement sum of 16-bit words.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trip_with_valid_checksum() {
        let a = Ipv4Addr::new(10, 66, 0, 1);
        let b = Ipv4Addr::new(10, 66, 0, 2);
        let probe = Probe {
            kind: ProbeKind::Pong,
            seq: 42,
            sent_ns: 123_456_789,
        };
        let p = build_probe(a, b, probe);
        assert_eq!(ipv4_addrs(&p), Some((a, b)));
        assert_eq!(parse_probe(&p), Some(probe));
        // A correct header sums to 0xffff, so its checksum over itself is 0.
        assert_eq!(ipv4_checksum(&p[..20]), 0);
    }

    #[test]
    fn ordinary_and_malformed_packets_are_not_probes() {
        let mut p = build_probe(
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            Probe {
                kind: ProbeKind::Ping,
                seq: 1,
                sent_ns: 1,
            },
        );
        p[23] = 53; // destination port 53: a real datagram
        assert_eq!(parse_probe(&p), None);
        assert_eq!(parse_probe(&p[..10]), None);
        assert_eq!(ipv4_addrs(&[0x60; 40]), None); // IPv6
        assert_eq!(ipv4_addrs(&[0x45; 19]), None);
    }

    #[test]
    fn padding_is_cut_at_the_total_length() {
        let mut p = build_probe(
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            Probe {
                kind: ProbeKind::Ping,
                seq: 1,
                sent_ns: 1,
            },
        );
        let len = p.len();
        p.extend_from_slice(&[0; 12]);
        assert_eq!(ipv4_unpadded(&p).map(<[u8]>::len), Some(len));
        p[2..4].copy_from_slice(&9999u16.to_be_bytes());
        assert_eq!(ipv4_unpadded(&p), None);
        p[2..4].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(ipv4_unpadded(&p), None);
    }
}
