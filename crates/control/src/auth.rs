//! Device authentication: a challenge answered with proof of the WireGuard private key, then
//! short-lived bearer tokens. The device's identity is its public key, never a name it picks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use blake2::{Blake2s256, Digest};
use gotatun::x25519::{PublicKey, StaticSecret};
use lanrage_proto::DeviceKey;
use lanrage_proto::api::{ChallengeResponse, TokenResponse};
use rand::RngCore;

use crate::error::ApiError;

/// How long a challenge may be answered.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Pending challenges held at most; beyond this new ones are refused until old ones expire.
const MAX_PENDING: usize = 10_000;
/// Token lifetime: short, so a leaked token is worth little; clients renew at half-life.
pub const TOKEN_TTL: Duration = Duration::from_secs(30 * 60);

struct Pending {
    device: DeviceKey,
    secret: StaticSecret,
    nonce: [u8; 32],
    expires: Instant,
}

/// Challenges waiting for an answer.
#[derive(Default)]
pub struct Challenges {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Challenges {
    /// Issues a challenge for `device`.
    pub fn issue(&self, device: DeviceKey) -> Result<ChallengeResponse, ApiError> {
        let now = Instant::now();
        let mut rng = rand::rng();
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let secret = StaticSecret::from(secret);
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let id = URL_SAFE_NO_PAD.encode(id);
        let server_public = DeviceKey::from_bytes(PublicKey::from(&secret).to_bytes());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING {
            pending.retain(|_, p| p.expires > now);
            if pending.len() >= MAX_PENDING {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many pending sign-ins; try again in a minute",
                ));
            }
        }
        pending.insert(
            id.clone(),
            Pending {
                device,
                secret,
                nonce,
                expires: now + CHALLENGE_TTL,
            },
        );
        Ok(ChallengeResponse {
            challenge_id: id,
            server_public,
            nonce: STANDARD.encode(nonce),
            expires_in_s: CHALLENGE_TTL.as_secs(),
        })
    }

    /// Checks an answer; a challenge can be used once.
    pub fn verify(&self, id: &str, device: &DeviceKey, proof_b64: &str) -> Result<(), ApiError> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .filter(|p| p.expires > Instant::now())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "challenge_expired",
                    "unknown or expired challenge; request a new one",
                )
            })?;
        let bad_proof = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_proof",
                "the proof does not match this public key",
            )
        };
        if pending.device != *device {
            return Err(bad_proof());
        }
        let proof = STANDARD.decode(proof_b64).map_err(|_| bad_proof())?;
        let public = PublicKey::from(*device.as_bytes());
        if lanrage_core::auth::verify(&pending.secret, &public, &pending.nonce, &proof) {
            Ok(())
        } else {
            Err(bad_proof())
        }
    }
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
