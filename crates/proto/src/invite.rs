//! Invite codes: everything a friend needs to join a party, in one pasteable string.
//!
//! `lr1-` followed by unpadded base64url of: party id (8 bytes), secret (16 bytes), then the
//! control plane's URL in UTF-8. The version prefix lets the format change without
//! misreading old codes.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{PartyId, PartySecret};

const PREFIX: &str = "lr1-";
/// Longest control URL an invite carries; keeps codes pasteable.
const MAX_URL_LEN: usize = 256;

/// A decoded invite code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteCode {
    /// Base URL of the control plane, e.g. `http://203.0.113.10:8667`.
    pub control_url: String,
    /// The party to join.
    pub party: PartyId,
    /// The party's invite secret.
    pub secret: PartySecret,
}

/// Why a string is not an invite code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("malformed invite code: it should start with \"{PREFIX}\"")]
    Prefix,
    #[error("malformed invite code: it is not valid base64url (was it cut off?)")]
    Encoding,
    #[error("malformed invite code: it is too short or too long (was it cut off?)")]
    Length,
    #[error("malformed invite code: the control-plane address in it is not an http(s) URL")]
    Url,
}

impl InviteCode {
    /// Checks only the shape of a code (what the local API's schema says): the prefix, the
    /// base64url alphabet, and a length that can hold a party. A code of this shape may
    /// still name no party (bad padding bits, no URL inside); parsing tells.
    pub fn check_shape(s: &str) -> Result<(), InviteError> {
        let body = s.strip_prefix(PREFIX).ok_or(InviteError::Prefix)?;
        if !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(InviteError::Encoding);
        }
        // Unpadded base64 of 24 + 8 ..= 24 + MAX_URL_LEN bytes.
        let min = ((24 + "http://x".len()) * 4).div_ceil(3);
        let max = ((24 + MAX_URL_LEN) * 4).div_ceil(3);
        if !(min..=max).contains(&body.len()) {
            return Err(InviteError::Length);
        }
        Ok(())
    }

    fn validate_url(url: &str) -> Result<(), InviteError> {
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() <= MAX_URL_LEN
            && url.len() > "http://".len()
            && !url.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok { Ok(()) } else { Err(InviteError::Url) }
    }

    /// Builds an invite, checking the URL the same way parsing does.
    pub fn new(
        control_url: &str,
        party: PartyId,
        secret: PartySecret,
    ) -> Result<Self, InviteError> {
        let control_url = control_url.trim_end_matches('/').to_owned();
        Self::validate_url(&control_url)?;
        Ok(Self {
            control_url,
            party,
            secret,
        })
    }
}

impl fmt::Display for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(24 + self.control_url.len());
        raw.extend_from_slice(self.party.as_bytes());
        raw.extend_from_slice(self.secret.as_bytes());
        raw.extend_from_slice(self.control_url.as_bytes());
        write!(f, "{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }
}

impl FromStr for InviteCode {
    type Err = InviteError;
    fn from_str(s: &str) -> Result<Self, InviteError> {
        let body = s.trim().strip_prefix(PREFIX).ok_or(InviteError::Prefix)?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| InviteError::Encoding)?;
        if raw.len() < 24 + "http://x".len() || raw.len() > 24 + MAX_URL_LEN {
            return Err(InviteError::Length);
        }
        let (id, rest) = raw.split_at(8);
        let (secret, url) = rest.split_at(16);
        let url = std::str::from_utf8(url).map_err(|_| InviteError::Url)?;
        let party = PartyId::from_bytes(id.try_into().map_err(|_| InviteError::Length)?);
        let secret = PartySecret::from_bytes(secret.try_into().map_err(|_| InviteError::Length)?);
        Self::new(url, party, secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InviteCode {
        InviteCode::new(
            "http://10.99.0.1:8667/",
            PartyId::from_bytes([1, 2, 3, 4, 5, 6, 7, 8]),
            PartySecret::from_bytes([0xab; 16]),
        )
        .expect("valid sample")
    }

    #[test]
    fn round_trips_and_strips_trailing_slash() {
        let code = sample();
        assert_eq!(code.control_url, "http://10.99.0.1:8667");
        let text = code.to_string();
        assert!(text.starts_with("lr1-"));
        assert_eq!(text.parse::<InviteCode>(), Ok(code));
        assert_eq!(format!("  {text}\n").parse::<InviteCode>(), Ok(sample()));
    }

    #[test]
    fn the_shape_check_matches_the_local_api_schema() {
        // The schema says: `^lr1-[A-Za-z0-9_-]+$`, 47 to 378 characters.
        let good = InviteCode::new(
            "http://10.99.0.1:8667",
            PartyId::from_bytes([1; 8]),
            PartySecret::from_bytes([2; 16]),
        )
        .expect("valid")
        .to_string();
        assert_eq!(InviteCode::check_shape(&good), Ok(()));
        let shortest = format!("lr1-{}", "A".repeat(43));
        assert_eq!(InviteCode::check_shape(&shortest), Ok(()));
        assert_eq!(shortest.len(), 47);
        assert_eq!(
            InviteCode::check_shape(&shortest[..46]),
            Err(InviteError::Length)
        );
        let longest = format!("lr1-{}", "A".repeat(374));
        assert_eq!(longest.len(), 378);
        assert_eq!(InviteCode::check_shape(&longest), Ok(()));
        assert_eq!(
            InviteCode::check_shape(&format!("{longest}A")),
            Err(InviteError::Length)
        );
        assert_eq!(
            InviteCode::check_shape(&format!(" {good}")),
            Err(InviteError::Prefix)
        );
        assert_eq!(
            InviteCode::check_shape(&format!("{good}=")),
            Err(InviteError::Encoding)
        );
        // The longest URL an invite holds fits the longest shape.
        let url = format!("http://{}", "a".repeat(MAX_URL_LEN - 7));
        let code = InviteCode::new(
            &url,
            PartyId::from_bytes([1; 8]),
            PartySecret::from_bytes([2; 16]),
        )
        .expect("valid")
        .to_string();
        assert_eq!(code.len(), 378);
    }

    #[test]
    fn rejects_malformed_codes_with_specific_errors() {
        let text = sample().to_string();
        assert_eq!("hello".parse::<InviteCode>(), Err(InviteError::Prefix));
        assert_eq!("lr1-!!!!".parse::<InviteCode>(), Err(InviteError::Encoding));
        assert_eq!(text[..20].parse::<InviteCode>(), Err(InviteError::Length));
        let mut raw = vec![0u8; 24];
        raw.extend_from_slice(b"ftp://example");
        let bad_url = format!("lr1-{}", URL_SAFE_NO_PAD.encode(raw));
        assert_eq!(bad_url.parse::<InviteCode>(), Err(InviteError::Url));
    }
}

#[cfg(test)]
mod garbage {
    use super::*;

    #[test]
    fn arbitrary_strings_never_panic() {
        // A small xorshift keeps the test deterministic without a dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet = b"lr1-_ABCxyz0189+/=:./\xc3\xa9 ";
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = usize::try_from(x % 120).unwrap_or(0);
            let mut s = String::from(if x.is_multiple_of(3) { "lr1-" } else { "" });
            let mut y = x;
            for _ in 0..len {
                y = y.rotate_left(5) ^ 0x5555;
                let c = alphabet[usize::try_from(y).unwrap_or(0) % alphabet.len()];
                s.push(char::from(c));
            }
            let _ = s.parse::<InviteCode>();
        }
    }
}
