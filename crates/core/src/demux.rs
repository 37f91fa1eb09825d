//! First-byte demultiplexing of the daemon's one UDP socket (ARCHITECTURE.md §2).
//!
//! STUN, TURN ChannelData and WireGuard share the socket so that probes travel the same
//! 5-tuple as data; their first bytes never overlap:
//! - STUN (RFC 8489 §5): top two bits `00`, so the first byte is 0x00–0x03, and the magic
//!   cookie `0x2112A442` at offset 4.
//! - TURN ChannelData (RFC 8656 §12): channel numbers 0x4000–0x7FFF, so 0x40–0x7F.
//! - WireGuard: a little-endian u32 message type 1–4, so the first byte is 1–4 and the
//!   next three bytes are zero.
//!
//! WireGuard's types 1–3 fall inside STUN's first-byte range; they are told apart by the
//! three zero bytes (a STUN message type with zero class bits and method would be 0x0001
//! with a zero length, i.e. a header with no cookie) and by the cookie.

/// What a datagram on the shared socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketClass {
    Stun,
    ChannelData,
    WireGuard,
    Unknown,
}

/// RFC 8489 §6: the fixed magic cookie.
pub const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// RFC 8489 §5: the STUN header is 20 bytes.
const STUN_HEADER_LEN: usize = 20;
/// RFC 8656 §12.4: the ChannelData header is 4 bytes.
const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// WireGuard message sizes (whitepaper §5.4): initiation, response, cookie reply, and the
/// smallest transport message (16-byte header + 16-byte tag).
const WG_MIN_LEN: [usize; 4] = [148, 92, 64, 32];

/// Classifies a datagram by its first bytes without parsing it further.
pub fn classify(datagram: &[u8]) -> PacketClass {
    let Some(&first) = datagram.first() else {
        return PacketClass::Unknown;
    };
    if is_wireguard(first, datagram) {
        return PacketClass::WireGuard;
    }
    match first {
        0x00..=0x03 if datagram.len() >= STUN_HEADER_LEN && datagram[4..8] == STUN_MAGIC_COOKIE => {
            PacketClass::Stun
        }
        0x40..=0x7F if datagram.len() >= CHANNEL_DATA_HEADER_LEN => PacketClass::ChannelData,
        _ => PacketClass::Unknown,
    }
}

/// WireGuard: type 1–4, three zero bytes, and the exact size of that message type (at
/// least the minimum for transport data). A STUN header can share the first four bytes
/// (e.g. type 0x0100 with length 0), but never the size and the cookie at once.
fn is_wireguard(first: u8, datagram: &[u8]) -> bool {
    if !(1..=4).contains(&first) || datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
        return false;
    }
    let min = WG_MIN_LEN[usize::from(first - 1)];
    if first == 4 {
        datagram.len() >= min
    } else {
        datagram.len() == min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wg(kind: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        v[0] = kind;
        v
    }

    #[test]
    fn wireguard_messages_by_type_and_size() {
        assert_eq!(classify(&wg(1, 148)), PacketClass::WireGuard);
        assert_eq!(classify(&wg(2, 92)), PacketClass::WireGuard);
        assert_eq!(classify(&wg(3, 64)), PacketClass::WireGuard);
        assert_eq!(classify(&wg(4, 32)), PacketClass::WireGuard);
        assert_eq!(classify(&wg(4, 1500)), PacketClass::WireGuard);
        // Wrong sizes and non-zero reserved bytes are not WireGuard.
        assert_eq!(classify(&wg(1, 147)), PacketClass::Unknown);
        assert_eq!(classify(&wg(4, 31)), PacketClass::Unknown);
        let mut reserved = wg(4, 64);
        reserved[2] = 1;
        assert_eq!(classify(&reserved), PacketClass::Unknown);
        assert_eq!(classify(&wg(5, 64)), PacketClass::Unknown);
    }

    #[test]
    fn stun_needs_the_magic_cookie() {
        // A Binding request: type 0x0001, length 0, cookie, 12-byte transaction id.
        let mut stun = vec![0x00, 0x01, 0x00, 0x00];
        stun.extend_from_slice(&STUN_MAGIC_COOKIE);
        stun.extend_from_slice(&[7; 12]);
        assert_eq!(classify(&stun), PacketClass::Stun);
        // A Binding success response (0x0101) with one attribute.
        let mut resp = vec![0x01, 0x01, 0x00, 0x08];
        resp.extend_from_slice(&STUN_MAGIC_COOKIE);
        resp.extend_from_slice(&[1; 20]);
        assert_eq!(classify(&resp), PacketClass::Stun);
        // Same bytes without the cookie are nothing we know.
        stun[4] = 0;
        assert_eq!(classify(&stun), PacketClass::Unknown);
        assert_eq!(classify(&stun[..19]), PacketClass::Unknown);
    }

    #[test]
    fn stun_that_starts_like_a_wireguard_header_is_still_stun() {
        // Type 0x0100 (class bits set on method 0), length 0: bytes 1..4 are zero.
        let mut stun = vec![0x01, 0x00, 0x00, 0x00];
        stun.extend_from_slice(&STUN_MAGIC_COOKIE);
        stun.extend_from_slice(&[9; 12]);
        assert_eq!(classify(&stun), PacketClass::Stun);
    }

    #[test]
    fn channel_data_and_junk() {
        assert_eq!(
            classify(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]),
            PacketClass::ChannelData
        );
        assert_eq!(
            classify(&[0x7F, 0xFF, 0x00, 0x00]),
            PacketClass::ChannelData
        );
        assert_eq!(classify(&[0x40, 0x00]), PacketClass::Unknown);
        assert_eq!(classify(&[0x80; 40]), PacketClass::Unknown);
        assert_eq!(classify(&[]), PacketClass::Unknown);
    }

    #[test]
    fn never_panics_on_any_short_input() {
        for len in 0..200 {
            for first in [0u8, 1, 2, 3, 4, 0x40, 0xFF] {
                let mut v = vec![0u8; len];
                if let Some(b) = v.first_mut() {
                    *b = first;
                }
                let _ = classify(&v);
            }
        }
    }
}
