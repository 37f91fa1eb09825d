//! Proof that a device holds the private key of its WireGuard public key.
//!
//! X25519 keys cannot sign, so the control plane sends an ephemeral X25519 public key and a
//! nonce; the device answers with BLAKE2s-MAC(key = DH(device private, server ephemeral),
//! "lanrage-auth-v1" ‖ device public ‖ nonce). Only the holder of the private key (or of
//! the server's ephemeral secret) can compute it.

use blake2::Blake2sMac256;
use blake2::digest::{FixedOutput, KeyInit, Update};
use gotatun::x25519::{PublicKey, StaticSecret};

const CONTEXT: &[u8] = b"lanrage-auth-v1";

/// The device side: computes the proof for a challenge.
pub fn prove(device: &StaticSecret, server_public: &PublicKey, nonce: &[u8]) -> Option<[u8; 32]> {
    let shared = device.diffie_hellman(server_public);
    // A low-order server key would make the secret predictable (RFC 7748 §6.1).
    if !shared.was_contributory() {
        return None;
    }
    Some(mac(shared.as_bytes(), &PublicKey::from(device), nonce))
}

/// The server side: checks a proof in constant time.
pub fn verify(
    server_ephemeral: &StaticSecret,
    device_public: &PublicKey,
    nonce: &[u8],
    proof: &[u8],
) -> bool {
    let shared = server_ephemeral.diffie_hellman(device_public);
    if !shared.was_contributory() || proof.len() != 32 {
        return false;
    }
    let expected = mac(shared.as_bytes(), device_public, nonce);
    expected
        .iter()
        .zip(proof)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn mac(key: &[u8; 32], device_public: &PublicKey, nonce: &[u8]) -> [u8; 32] {
    let mut m =
        <Blake2sMac256 as KeyInit>::new_from_slice(key).expect("BLAKE2s accepts a 32-byte key");
    m.update(CONTEXT);
    m.update(device_public.as_bytes());
    m.update(nonce);
    m.finalize_fixed().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_verifies_only_for_the_key_holder() {
        let device = StaticSecret::from([1u8; 32]);
        let impostor = StaticSecret::from([2u8; 32]);
        let server = StaticSecret::from([3u8; 32]);
        let server_pub = PublicKey::from(&server);
        let nonce = [9u8; 32];
        let proof = prove(&device, &server_pub, &nonce).expect("contributory");
        assert!(verify(&server, &PublicKey::from(&device), &nonce, &proof));
        // Another nonce, another claimed key, or the impostor's proof all fail.
        assert!(!verify(
            &server,
            &PublicKey::from(&device),
            &[8u8; 32],
            &proof
        ));
        assert!(!verify(
            &server,
            &PublicKey::from(&impostor),
            &nonce,
            &proof
        ));
        let forged = prove(&impostor, &server_pub, &nonce).expect("contributory");
        assert!(!verify(&server, &PublicKey::from(&device), &nonce, &forged));
        assert!(!verify(
            &server,
            &PublicKey::from(&device),
            &nonce,
            &proof[..31]
        ));
    }

    #[test]
    fn low_order_keys_are_refused() {
        let device = StaticSecret::from([1u8; 32]);
        let zero = PublicKey::from([0u8; 32]);
        assert!(prove(&device, &zero, b"n").is_none());
        assert!(!verify(&device, &zero, b"n", &[0u8; 32]));
    }
}
