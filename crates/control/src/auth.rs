//! Device authentication: a challenge answered with proof of the WireGuard private key, then
//! short-lived bearer tokens. The device's identity is its public key, never a name it picks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac256, Digest};
use gotatun::x25519::{PublicKey, StaticSecret};
use lanrage_proto::DeviceKey;
use lanrage_proto::api::{ChallengeResponse, TokenResponse};
use rand::RngCore;

use crate::error::ApiError;

/// How long a challenge may be answered.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Token lifetime: short, so a leaked token is worth little; clients renew at half-life.
pub const TOKEN_TTL: Duration = Duration::from_secs(30 * 60);

/// Challenges without server-side state: everything the server needs to check an answer
/// is in the challenge id, authenticated with a key only this instance knows. Asking for
/// challenges therefore costs the server no memory, and a flood of them cannot lock anyone
/// out. Only answered challenges are remembered (until they expire), so each works once.
pub struct Challenges {
    key: [u8; 32],
    /// Answered challenge ids and when they expire.
    used: Mutex<HashMap<[u8; 16], Instant>>,
}

impl Default for Challenges {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self {
            key,
            used: Mutex::new(HashMap::new()),
        }
    }
}

/// Decoded challenge id: nonce, expiry (Unix ms) and the tag over both and the device.
const ID_LEN: usize = 32 + 8 + 16;

impl Challenges {
    /// Issues a challenge for `device`.
    pub fn issue(&self, device: DeviceKey) -> ChallengeResponse {
        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        let ttl = i64::try_from(CHALLENGE_TTL.as_millis()).unwrap_or(i64::MAX);
        let expires = crate::parties::now_ms() + ttl;
        let mut id = Vec::with_capacity(ID_LEN);
        id.extend_from_slice(&nonce);
        id.extend_from_slice(&expires.to_be_bytes());
        id.extend_from_slice(&self.tag(&nonce, expires, &device));
        let secret = self.ephemeral(&nonce, expires, &device);
        ChallengeResponse {
            challenge_id: URL_SAFE_NO_PAD.encode(id),
            server_public: DeviceKey::from_bytes(PublicKey::from(&secret).to_bytes()),
            nonce: STANDARD.encode(nonce),
            expires_in_s: CHALLENGE_TTL.as_secs(),
        }
    }

    /// Checks an answer; a challenge can be used once.
    pub fn verify(&self, id: &str, device: &DeviceKey, proof_b64: &str) -> Result<(), ApiError> {
        let expired = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "challenge_expired",
                "unknown or expired challenge; request a new one",
            )
        };
        let bad_proof = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_proof",
                "the proof does not match this public key",
            )
        };
        let raw = URL_SAFE_NO_PAD.decode(id).map_err(|_| expired())?;
        if raw.len() != ID_LEN {
            return Err(expired());
        }
        let (nonce, rest) = raw.split_at(32);
        let (expires, tag) = rest.split_at(8);
        let nonce: [u8; 32] = nonce.try_into().map_err(|_| expired())?;
        let expires = i64::from_be_bytes(expires.try_into().map_err(|_| expired())?);
        let tag: [u8; 16] = tag.try_into().map_err(|_| expired())?;
        if crate::parties::now_ms() > expires {
            return Err(expired());
        }
        // The tag binds the id to the key it was issued for.
        if !ct_eq(&self.tag(&nonce, expires, device), &tag) {
            return Err(bad_proof());
        }
        let now = Instant::now();
        if self
            .used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&tag)
            .is_some_and(|until| *until > now)
        {
            return Err(expired());
        }
        let proof = STANDARD.decode(proof_b64).map_err(|_| bad_proof())?;
        let secret = self.ephemeral(&nonce, expires, device);
        let public = PublicKey::from(*device.as_bytes());
        if !lanrage_core::auth::verify(&secret, &public, &nonce, &proof) {
            // A 256-bit MAC cannot be guessed, so a wrong answer need not spend the challenge.
            return Err(bad_proof());
        }
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, until| *until > now);
        // Only successful sign-ins are remembered, and only until the id expires anyway.
        if used.insert(tag, now + CHALLENGE_TTL).is_some() {
            return Err(expired()); // a concurrent replay of the same answer lost the race
        }
        Ok(())
    }

    fn tag(&self, nonce: &[u8; 32], expires: i64, device: &DeviceKey) -> [u8; 16] {
        let full = self.mac(b"lanrage-challenge-id", nonce, expires, device);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }

    /// The server's ephemeral X25519 secret for one challenge, derived, not stored.
    fn ephemeral(&self, nonce: &[u8; 32], expires: i64, device: &DeviceKey) -> StaticSecret {
        StaticSecret::from(self.mac(b"lanrage-challenge-key", nonce, expires, device))
    }

    fn mac(&self, label: &[u8], nonce: &[u8; 32], expires: i64, device: &DeviceKey) -> [u8; 32] {
        let mut m = <Blake2sMac256 as KeyInit>::new_from_slice(&self.key)
            .expect("BLAKE2s accepts a 32-byte key");
        m.update(label);
        m.update(nonce);
        m.update(&expires.to_be_bytes());
        m.update(device.as_bytes());
        m.finalize_fixed().into()
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random bearer token and the digest stored for it.
pub fn new_token() -> (TokenResponse, String) {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = URL_SAFE_NO_PAD.encode(raw);
    let digest = token_digest(&token);
    (
        TokenResponse {
            token,
            expires_in_s: TOKEN_TTL.as_secs(),
        },
        digest,
    )
}

/// The database holds digests, so a copy of it grants no access.
pub fn token_digest(token: &str) -> String {
    STANDARD.encode(Blake2s256::digest(token.as_bytes()))
}
