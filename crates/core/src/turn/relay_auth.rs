//! Relay registration signatures: how a relay proves to a control plane that a
//! `POST /v1/relays` comes from it, unchanged and only once.
//!
//! Each relay holds its own Ed25519 key (RFC 8032); the control plane accepts only the
//! public keys its operator listed. The signature covers the method, the path, the SHA-256
//! of the body, the timestamp and a random nonce, so a captured request cannot be sent with
//! another body, to another route, later than the allowed clock skew, or twice (the control
//! plane remembers nonces for the skew window). A shared secret cannot give that: anyone who
//! can check it can forge it, which is why the TURN secret no longer signs registrations.
//!
//! Header: `Authorization: LanrageRelay <key>:<unix>:<nonce>:<signature>`, with the public
//! key and the signature in standard base64 and the 16-byte nonce in hex. The signed
//! message is [`signed_message`]. Sans-IO: the caller passes the time and the nonce.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

/// The `Authorization` scheme of relay registrations.
pub const SCHEME: &str = "LanrageRelay";
/// Domain separation: a signature made for this purpose means nothing elsewhere.
const CONTEXT: &str = "lanrage-relay-registration-v2";

/// A relay's public key, as an operator lists it (`lanrage control --trust-relay KEY`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayKey([u8; 32]);

impl RelayKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayKey({self})")
    }
}

impl FromStr for RelayKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| format!("{s:?} is not a relay key (44 characters of base64)"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("{s:?} is not a relay key (32 bytes of base64)"))?;
        Ok(Self(bytes))
    }
}

/// A relay's signing key, made from a 32-byte seed (the key file holds the seed).
pub struct RelaySigner {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for RelaySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelaySigner({})", self.public_key())
    }
}

impl RelaySigner {
    /// The key of `seed` (RFC 8032 §5.1.5: any 32 bytes are a valid private key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .expect("every 32-byte seed is an Ed25519 private key (RFC 8032 §5.1.5)");
        Self { pair }
    }

    /// What the control plane's operator lists to trust this relay.
    pub fn public_key(&self) -> RelayKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        RelayKey(key)
    }

    /// The `Authorization` header for a request at Unix time `unix` with a fresh random
    /// `nonce` (never reuse one: the control plane refuses a nonce it has seen).
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        unix: u64,
        nonce: [u8; 16],
    ) -> String {
        let message = signed_message(method, path, body, unix, &nonce);
        let signature = self.pair.sign(message.as_bytes());
        format!(
            "{SCHEME} {}:{unix}:{}:{}",
            self.public_key(),
            hex(&nonce),
            STANDARD.encode(signature.as_ref())
        )
    }
}

/// A checked registration signature: who signed, when, and the nonce to remember.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAuth {
    pub key: RelayKey,
    pub unix: u64,
    pub nonce: [u8; 16],
}

/// Why a relay signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayAuthError {
    #[error("no `LanrageRelay KEY:TS:NONCE:SIG` authorization")]
    Malformed,
    #[error("the timestamp is more than {0} s from this server's clock")]
    Stale(u64),
    #[error("the signature does not match the request")]
    BadSignature,
}

/// Checks `header` against the request and the clock (`unix`, allowed `skew` seconds).
/// Does not check whether the key is trusted nor whether the nonce was seen: the caller
/// holds the list and the replay cache.
pub fn verify_authorization(
    header: &str,
    method: &str,
    path: &str,
    body: &[u8],
    unix: u64,
    skew: u64,
) -> Result<RelayAuth, RelayAuthError> {
    let value = header
        .strip_prefix(SCHEME)
        .and_then(|v| v.strip_prefix(' '))
        .ok_or(RelayAuthError::Malformed)?;
    let mut parts = value.split(':');
    let (Some(key), Some(ts), Some(nonce), Some(sig), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(RelayAuthError::Malformed);
    };
    let key: RelayKey = key.parse().map_err(|_| RelayAuthError::Malformed)?;
    let ts: u64 = ts.parse().map_err(|_| RelayAuthError::Malformed)?;
    let nonce = unhex16(nonce).ok_or(RelayAuthError::Malformed)?;
    let sig = STANDARD
        .decode(sig)
        .map_err(|_| RelayAuthError::Malformed)?;
    if ts.abs_diff(unix) > skew {
        return Err(RelayAuthError::Stale(skew));
    }
    let message = signed_message(method, path, body, ts, &nonce);
    UnparsedPublicKey::new(&ED25519, key.as_bytes())
        .verify(message.as_bytes(), &sig)
        .map_err(|_| RelayAuthError::BadSignature)?;
    Ok(RelayAuth {
        key,
        unix: ts,
        nonce,
    })
}

/// What is signed: one field per line, the body as its SHA-256 in hex.
pub fn signed_message(
    method: &str,
    path: &str,
    body: &[u8],
    unix: u64,
    nonce: &[u8; 16],
) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    format!(
        "{CONTEXT}\n{method}\n{path}\n{}\n{unix}\n{}",
        hex(digest.as_ref()),
        hex(nonce)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn signed() -> (RelaySigner, String) {
        let signer = RelaySigner::from_seed(&[7; 32]);
        let h = signer.authorization("POST", "/v1/relays", b"{\"id\":\"r\"}", NOW, [9; 16]);
        (signer, h)
    }

    #[test]
    fn a_signature_verifies_for_exactly_the_signed_request() {
        let (signer, h) = signed();
        let ok = verify_authorization(&h, "POST", "/v1/relays", b"{\"id\":\"r\"}", NOW + 60, 120)
            .expect("valid");
        assert_eq!(ok.key, signer.public_key());
        assert_eq!((ok.unix, ok.nonce), (NOW, [9; 16]));
        let check = |m: &str, p: &str, b: &[u8], t: u64| verify_authorization(&h, m, p, b, t, 120);
        assert_eq!(
            check("PUT", "/v1/relays", b"{\"id\":\"r\"}", NOW),
            Err(RelayAuthError::BadSignature),
            "method"
        );
        assert_eq!(
            check("POST", "/v1/relays/x", b"{\"id\":\"r\"}", NOW),
            Err(RelayAuthError::BadSignature),
            "path"
        );
        assert_eq!(
            check("POST", "/v1/relays", b"{\"id\":\"evil\"}", NOW),
            Err(RelayAuthError::BadSignature),
            "body"
        );
        assert_eq!(
            check("POST", "/v1/relays", b"{\"id\":\"r\"}", NOW + 121),
            Err(RelayAuthError::Stale(120)),
            "too late"
        );
        assert_eq!(
            check("POST", "/v1/relays", b"{\"id\":\"r\"}", NOW - 121),
            Err(RelayAuthError::Stale(120)),
            "too early"
        );
    }

    #[test]
    fn a_changed_timestamp_nonce_or_key_breaks_the_signature() {
        let (_, h) = signed();
        let fields: Vec<&str> = h
            .strip_prefix("LanrageRelay ")
            .expect("scheme")
            .split(':')
            .collect();
        let rebuild = |i: usize, v: &str| {
            let mut f = fields.clone();
            f[i] = v;
            format!("LanrageRelay {}", f.join(":"))
        };
        let other = RelaySigner::from_seed(&[8; 32]).public_key().to_string();
        let body = b"{\"id\":\"r\"}";
        for (i, v) in [
            (0, other.as_str()),
            (1, "1700000001"),
            (2, "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a"),
        ] {
            assert_eq!(
                verify_authorization(&rebuild(i, v), "POST", "/v1/relays", body, NOW, 120),
                Err(RelayAuthError::BadSignature),
                "field {i}"
            );
        }
        for bad in [
            "",
            "LanrageRelay",
            "Bearer x",
            "LanrageRelay a:b:c:d",
            "LanrageRelay 1700000000:abc",
            &format!("{h}:extra"),
        ] {
            assert_eq!(
                verify_authorization(bad, "POST", "/v1/relays", body, NOW, 120),
                Err(RelayAuthError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn relay_keys_round_trip_and_reject_nonsense() {
        let key = RelaySigner::from_seed(&[1; 32]).public_key();
        assert_eq!(key.to_string().parse::<RelayKey>(), Ok(key));
        assert!("abc".parse::<RelayKey>().is_err());
        assert!(STANDARD.encode([0u8; 31]).parse::<RelayKey>().is_err());
    }
}
