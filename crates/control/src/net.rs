//! The party network and the address arithmetic of virtual-IP assignment.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network parties take addresses from, e.g. `10.66.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartyNetwork {
    base: u32,
    prefix: u8,
}

impl Default for PartyNetwork {
    fn default() -> Self {
        Self {
            base: u32::from(Ipv4Addr::new(10, 66, 0, 0)),
            prefix: 16,
        }
    }
}

impl PartyNetwork {
    /// The address at `offset` from the network address.
    pub fn addr(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + offset)
    }

    /// The offset of `ip`, if it is inside the network.
    pub fn offset_of(&self, ip: Ipv4Addr) -> Option<u32> {
        let v = u32::from(ip);
        (v & self.mask() == self.base).then(|| v - self.base)
    }

    /// The lowest usable offset not in `taken` (sorted ascending), from `start`.
    ///
    /// Skips addresses ending in .0 or .255: some games and stacks treat them as network or
    /// broadcast addresses even inside a larger network.
    pub fn lowest_free(&self, start: u32, taken: &[u32]) -> Option<u32> {
        let last = self.size().checked_sub(2)?; // the last address is the broadcast
        let mut i = 0;
        let mut candidate = start;
        while candidate <= last {
            let octet = (self.base + candidate) & 0xff;
            if octet == 0 || octet == 255 {
                candidate += 1;
                continue;
            }
            while i < taken.len() && taken[i] < candidate {
                i += 1;
            }
            if i < taken.len() && taken[i] == candidate {
                candidate += 1;
                continue;
            }
            return Some(candidate);
        }
        None
    }

    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }
}

impl fmt::Display for PartyNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl FromStr for PartyNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR notation (like 10.66.0.0/16)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=24).contains(p))
            .ok_or_else(|| "the prefix length must be between 8 and 24".to_owned())?;
        let net = Self {
            base: u32::from(ip),
            prefix,
        };
        if net.base & !net.mask() != 0 {
            return Err(format!("{s} has host bits set"));
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_skips_taken_and_special_octets() {
        let net = PartyNetwork::default();
        assert_eq!(net.lowest_free(2, &[]), Some(2));
        assert_eq!(net.lowest_free(2, &[1, 2, 3, 5]), Some(4));
        let taken: Vec<u32> = (1..=254).collect();
        // .255 and .256 (= 10.66.1.0) are skipped.
        assert_eq!(net.lowest_free(2, &taken), Some(257));
        assert_eq!(net.addr(257), Ipv4Addr::new(10, 66, 1, 1));
        let small: PartyNetwork = "192.168.77.0/24".parse().expect("valid");
        let all: Vec<u32> = (1..=254).collect();
        assert_eq!(small.lowest_free(2, &all), None);
        assert_eq!(small.offset_of(Ipv4Addr::new(192, 168, 77, 9)), Some(9));
        assert_eq!(small.offset_of(Ipv4Addr::new(192, 168, 78, 9)), None);
    }

    #[test]
    fn parses_cidr_and_rejects_nonsense() {
        assert_eq!(
            "10.66.0.0/16".parse::<PartyNetwork>(),
            Ok(PartyNetwork::default())
        );
        assert!("10.66.0.1/16".parse::<PartyNetwork>().is_err());
        assert!("10.66.0.0".parse::<PartyNetwork>().is_err());
        assert!("10.66.0.0/30".parse::<PartyNetwork>().is_err());
    }
}
