//! TURN long-term credentials on the relay (RFC 8489 §9.2): stateless nonces and the
//! checks of a request's USERNAME, REALM, NONCE and MESSAGE-INTEGRITY against the TURN
//! REST secret and the revocation list.

use std::net::SocketAddr;

use base64::Engine as _;
use blake2::digest::Mac as _;
use lanrage_core::turn::{self, TurnRequest};
use stun_codec::rfc5389::attributes::{MessageIntegrity, Nonce, Realm, Username};

use super::{NONCE_BUCKET_SECS, Server};

/// Why a request's credentials were refused; all four answers carry a fresh nonce.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// No credentials yet, or not all of them (401).
    Challenge,
    /// A nonce no longer accepted (438).
    StaleNonce,
    /// A wrong or expired credential, or another realm (401).
    BadCredentials,
    /// A valid credential of a revoked user id (401).
    Revoked,
}

impl Refusal {
    pub(super) fn code(self) -> u16 {
        match self {
            Refusal::StaleNonce => 438,
            Refusal::Challenge | Refusal::BadCredentials | Refusal::Revoked => 401,
        }
    }
}

/// A request whose credentials checked out: who sent it, and the password its answer is
/// sealed with.
pub(super) struct Authed {
    pub(super) username: String,
    pub(super) user: String,
    pub(super) password: String,
}

impl Server {
    /// A nonce for `from`: eight characters (so a 401 fits inside the smallest Allocate
    /// a standard client sends), a 16-bit ten-minute time bucket and a 32-bit MAC.
    pub(super) fn nonce(&self, unix: u64, from: SocketAddr) -> String {
        let bucket = (unix / NONCE_BUCKET_SECS) as u16;
        let mut raw = [0u8; 6];
        raw[..2].copy_from_slice(&bucket.to_be_bytes());
        raw[2..].copy_from_slice(&self.nonce_mac(bucket, from));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn nonce_mac(&self, bucket: u16, from: SocketAddr) -> [u8; 4] {
        let mut mac =
            <blake2::Blake2sMac256 as blake2::digest::KeyInit>::new_from_slice(&self.nonce_key)
                .expect("a 32-byte key is valid");
        mac.update(&bucket.to_be_bytes());
        mac.update(from.to_string().as_bytes());
        let tag = mac.finalize().into_bytes();
        [tag[0], tag[1], tag[2], tag[3]]
    }

    /// Whether `nonce` was issued to `from` in this time bucket or the previous one (10 to
    /// 20 minutes of validity).
    fn nonce_fresh(&self, nonce: &str, from: SocketAddr, unix: u64) -> bool {
        let Ok(raw) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let Ok(raw) = <[u8; 6]>::try_from(raw.as_slice()) else {
            return false;
        };
        let bucket = u16::from_be_bytes([raw[0], raw[1]]);
        let now = (unix / NONCE_BUCKET_SECS) as u16;
        (bucket == now || bucket == now.wrapping_sub(1)) && raw[2..] == self.nonce_mac(bucket, from)
    }

    /// Checks the long-term credential of a request: `Ok` with the user, or why not.
    pub(super) fn authenticate(
        &mut self,
        msg: &TurnRequest,
        from: SocketAddr,
        unix: u64,
    ) -> Result<Authed, Refusal> {
        let (Some(user), Some(realm), Some(nonce), Some(mi)) = (
            msg.get_attribute::<Username>(),
            msg.get_attribute::<Realm>(),
            msg.get_attribute::<Nonce>(),
            msg.get_attribute::<MessageIntegrity>(),
        ) else {
            return Err(Refusal::Challenge);
        };
        if realm.text() != turn::REALM {
            return Err(Refusal::BadCredentials);
        }
        if !self.nonce_fresh(nonce.value(), from, unix) {
            return Err(Refusal::StaleNonce);
        }
        let Some((expiry, id)) = turn::parse_rest_username(user.name()) else {
            return Err(Refusal::BadCredentials);
        };
        let password = turn::rest_password(&self.config.secret, user.name());
        if mi
            .check_long_term_credential(user, realm, &password)
            .is_err()
            || expiry < unix
        {
            return Err(Refusal::BadCredentials);
        }
        if let Some(&until) = self.revoked.get(id) {
            if expiry <= until {
                return Err(Refusal::Revoked);
            }
            if until < unix {
                self.revoked.remove(id);
            }
        }
        Ok(Authed {
            username: user.name().to_owned(),
            user: id.to_owned(),
            password,
        })
    }
}
