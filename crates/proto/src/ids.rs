//! Newtypes that cannot hold invalid values; raw strings become them at the edge.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("party id must be 16 lowercase hex characters")]
    PartyId,
    #[error("public key must be 32 bytes of standard base64")]
    DeviceKey,
    #[error("party secret must be 32 lowercase hex characters")]
    Secret,
}

/// A party's identifier: 8 random bytes, shown as 16 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartyId([u8; 8]);

impl PartyId {
    /// Wraps raw bytes (from a random source in the control plane).
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

/// A party's invite secret: 16 random bytes, shown as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PartySecret([u8; 16]);

impl PartySecret {
    /// Wraps raw bytes (from a random source in the control plane).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Compares in constant time, so a guesser learns nothing from timing.
    pub fn ct_eq(&self, other: &PartySecret) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// A device's WireGuard public key: its one identity everywhere in LANrage.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceKey([u8; 32]);

impl DeviceKey {
    /// Wraps a raw X25519 public key.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw X25519 public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn hex_decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let raw = s.as_bytes();
    if raw.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

impl fmt::Debug for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PartyId({self})")
    }
}

impl FromStr for PartyId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        hex_decode(s).map(Self).ok_or(IdError::PartyId)
    }
}

impl fmt::Display for PartySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

impl fmt::Debug for PartySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartySecret(..)")
    }
}

impl FromStr for PartySecret {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        hex_decode(s).map(Self).ok_or(IdError::Secret)
    }
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({self})")
    }
}

impl FromStr for DeviceKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bytes = STANDARD.decode(s).map_err(|_| IdError::DeviceKey)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| IdError::DeviceKey)?;
        Ok(Self(arr))
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(PartyId);
serde_via_str!(PartySecret);
serde_via_str!(DeviceKey);

/// OpenAPI: these ids travel as strings.
macro_rules! schema_as_string {
    ($t:ty, $pattern:expr, $doc:expr) => {
        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .description(Some($doc))
                    .into()
            }
        }
        impl utoipa::ToSchema for $t {}
    };
}
schema_as_string!(
    PartyId,
    "^[0-9a-f]{16}$",
    "A party id: 16 lowercase hex digits."
);
schema_as_string!(
    DeviceKey,
    "^[A-Za-z0-9+/]{43}=$",
    "A device's X25519 public key, base64."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = PartyId::from_bytes([0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]);
        assert_eq!(id.to_string(), "deadbeef00010203");
        assert_eq!("deadbeef00010203".parse::<PartyId>(), Ok(id));
        assert_eq!("DEADBEEF00010203".parse::<PartyId>(), Err(IdError::PartyId));
        assert_eq!("deadbeef".parse::<PartyId>(), Err(IdError::PartyId));
        let key = DeviceKey::from_bytes([7; 32]);
        assert_eq!(key.to_string().parse::<DeviceKey>(), Ok(key));
        assert_eq!("AAAA".parse::<DeviceKey>(), Err(IdError::DeviceKey));
        let secret = PartySecret::from_bytes([9; 16]);
        assert!(secret.ct_eq(&secret.to_string().parse().expect("round trip")));
        assert!(!secret.ct_eq(&PartySecret::from_bytes([8; 16])));
    }
}
