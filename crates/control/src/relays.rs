//! The relay registry and the ICE servers handed to party members.
//!
//! Relays announce themselves with `POST /v1/relays`, signed with their own Ed25519 key
//! (`lanrage_core::turn::RelaySigner`), and repeat the call as a heartbeat; an entry not
//! renewed within [`RELAY_EXPIRY`] is dropped. Only keys the operator listed are accepted,
//! each signature covers the method, path, body digest, time and a nonce, and a nonce is
//! accepted once. The answer to a heartbeat lists the revoked TURN user ids.
//!
//! `GET /v1/ice` gives a member of a party the STUN servers and the TURN servers that can
//! still take an allocation (configured ones and live registered relays, least loaded
//! first, none draining or full) with TURN REST credentials bound to that membership: the
//! user id is `<first 16 characters of the device key>.<party id>`, and it is revoked
//! when the member leaves, is kicked or is removed for silence.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanrage_core::turn::{self, RelayAuthError, RelayKey};
use lanrage_proto::api::{IceServers, RelayRegistration, Revocation, TurnServer};
use lanrage_proto::{DeviceKey, PartyId};
use tokio::sync::broadcast;

/// A registration not renewed this long is forgotten (relays heartbeat every 10 s).
pub const RELAY_EXPIRY: Duration = Duration::from_secs(30);
/// How far a signed registration's timestamp may be from this server's clock.
pub const CLOCK_SKEW_SECS: u64 = 120;
/// TURN servers handed to one device.
const MAX_TURN_SERVERS: usize = 4;
/// Most relays remembered (a bound on what a trusted but misbehaving relay can make us store).
const MAX_RELAYS: usize = 256;
/// Nonces remembered at once: a relay signs one every 10 s and each is kept for twice the
/// skew, so this is room for hundreds of relays; only verified signatures of trusted keys
/// get in.
const MAX_NONCES: usize = 16_384;
/// Revocations kept (each lives one credential lifetime); past it the oldest go first.
const MAX_REVOCATIONS: usize = 16_384;
/// Revocations queued for in-process relays (host mode) before a slow one misses some.
const REVOCATION_QUEUE: usize = 1024;

/// How full a TURN server is, as its own count says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayLoad {
    pub allocations: u64,
    /// Allocations it can hold in all (in use + still possible).
    pub capacity: u64,
    pub draining: bool,
}

impl RelayLoad {
    /// Whether a new allocation would be refused: handing it out would only cost a
    /// round trip and a 508.
    pub fn refuses_allocations(&self) -> bool {
        self.draining || self.capacity == 0 || self.allocations >= self.capacity
    }
}

/// Reads the load of the configured TURN servers (host mode: its embedded relay).
pub type LoadSource = Arc<dyn Fn() -> RelayLoad + Send + Sync>;

/// ICE settings of a control plane.
#[derive(Clone, Default)]
pub struct IceConfig {
    /// Shared with the relays (and any coturn with `use-auth-secret`): TURN credentials
    /// are signed with it.
    pub turn_secret: Option<String>,
    /// STUN servers handed out besides the registered relays.
    pub stun: Vec<SocketAddr>,
    /// TURN servers handed out besides the registered relays (e.g. coturn).
    pub turn: Vec<SocketAddr>,
    /// Lifetime of issued TURN credentials.
    pub credential_ttl: Duration,
    /// Relay keys whose registrations are accepted; none: every registration is refused.
    pub trusted_relays: Vec<RelayKey>,
    /// The load of the servers in `turn`, when known; a full or draining one is skipped.
    pub turn_load: Option<LoadSource>,
}

impl fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceConfig")
            .field("turn_secret", &self.turn_secret.as_ref().map(|_| "…"))
            .field("stun", &self.stun)
            .field("turn", &self.turn)
            .field("credential_ttl", &self.credential_ttl)
            .field("trusted_relays", &self.trusted_relays)
            .field("turn_load", &self.turn_load.is_some())
            .finish()
    }
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("this control plane trusts no relay keys; its operator lists them with --trust-relay")]
    NoTrustedKeys,
    #[error("relay signature refused: {0}")]
    Signature(RelayAuthError),
    #[error("relay key {0} is not trusted by this control plane")]
    Untrusted(RelayKey),
    #[error("this signed request was already used")]
    Replayed,
    #[error("too many signed requests in flight; retry in a moment")]
    Busy,
    #[error("{0}")]
    Invalid(&'static str),
}

/// Live registrations, the replay cache and the revocations.
pub struct Relays {
    entries: Mutex<HashMap<String, Entry>>,
    /// Nonce → Unix time after which its signature is stale anyway.
    nonces: Mutex<HashMap<[u8; 16], u64>>,
    /// TURN user id → until (Unix s): credentials expiring at or before it are refused.
    revoked: Mutex<BTreeMap<String, u64>>,
    revocations: broadcast::Sender<Revocation>,
}

struct Entry {
    reg: RelayRegistration,
    key: RelayKey,
    seen: Instant,
}

impl Default for Relays {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            nonces: Mutex::default(),
            revoked: Mutex::default(),
            revocations: broadcast::channel(REVOCATION_QUEUE).0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every operation leaves the maps consistent; a panic elsewhere changes nothing here.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Relays {
    /// Checks a relay's signed request at Unix time `unix`: a trusted key, a valid signature
    /// over exactly this request, a fresh timestamp and a nonce not seen before.
    pub fn authorize(
        &self,
        config: &IceConfig,
        header: Option<&str>,
        request: (&str, &str, &[u8]),
        unix: u64,
    ) -> Result<RelayKey, RegisterError> {
        if config.trusted_relays.is_empty() {
            return Err(RegisterError::NoTrustedKeys);
        }
        let (method, path, body) = request;
        let auth = turn::verify_relay_authorization(
            header.unwrap_or(""),
            method,
            path,
            body,
            unix,
            CLOCK_SKEW_SECS,
        )
        .map_err(RegisterError::Signature)?;
        if !config.trusted_relays.contains(&auth.key) {
            return Err(RegisterError::Untrusted(auth.key));
        }
        let mut nonces = lock(&self.nonces);
        if nonces.contains_key(&auth.nonce) {
            return Err(RegisterError::Replayed);
        }
        if nonces.len() >= MAX_NONCES {
            nonces.retain(|_, until| *until >= unix);
            if nonces.len() >= MAX_NONCES {
                return Err(RegisterError::Busy);
            }
        }
        // Past ts + skew the timestamp check refuses it by itself.
        nonces.insert(auth.nonce, auth.unix + CLOCK_SKEW_SECS);
        Ok(auth.key)
    }

    /// Records (or renews) a registration signed by `key`.
    pub fn register(
        &self,
        reg: RelayRegistration,
        key: RelayKey,
        now: Instant,
    ) -> Result<(), RegisterError> {
        if reg.id.is_empty() || reg.id.len() > 64 || reg.region.len() > 64 {
            return Err(RegisterError::Invalid(
                "relay id must be 1-64 characters and region at most 64",
            ));
        }
        if reg.addrs.is_empty() || reg.addrs.len() > 8 {
            return Err(RegisterError::Invalid("a relay announces 1-8 addresses"));
        }
        if reg
            .addrs
            .iter()
            .any(|a| a.ip().is_unspecified() || a.port() == 0)
        {
            return Err(RegisterError::Invalid(
                "relay addresses must be reachable IP:port pairs",
            ));
        }
        let mut entries = lock(&self.entries);
        entries.retain(|_, e| now.saturating_duration_since(e.seen) < RELAY_EXPIRY);
        match entries.get(&reg.id) {
            // One relay's id is not another's to take over while it is alive.
            Some(e) if e.key != key => {
                return Err(RegisterError::Invalid(
                    "another relay key holds this relay id",
                ));
            }
            Some(_) => {}
            None if entries.len() >= MAX_RELAYS => {
                return Err(RegisterError::Invalid("too many relays registered"));
            }
            None => {
                tracing::info!(id = %reg.id, region = %reg.region, addrs = ?reg.addrs, %key, "relay registered");
            }
        }
        if reg.draining && entries.get(&reg.id).is_some_and(|e| !e.reg.draining) {
            tracing::info!(id = %reg.id, "relay draining: no longer handed out");
        }
        entries.insert(
            reg.id.clone(),
            Entry {
                reg,
                key,
                seen: now,
            },
        );
        Ok(())
    }

    /// Live registrations, least loaded first.
    pub fn live(&self, now: Instant) -> Vec<RelayRegistration> {
        let mut entries = lock(&self.entries);
        entries.retain(|_, e| now.saturating_duration_since(e.seen) < RELAY_EXPIRY);
        let mut live: Vec<RelayRegistration> = entries.values().map(|e| e.reg.clone()).collect();
        live.sort_by(|a, b| {
            let load = |r: &RelayRegistration| r.allocations as f64 / r.capacity.max(1) as f64;
            load(a).total_cmp(&load(b)).then_with(|| a.id.cmp(&b.id))
        });
        live
    }

    /// What `device`, a member of `party`, should use, at Unix time `unix`.
    pub fn ice_for(
        &self,
        config: &IceConfig,
        device: &DeviceKey,
        party: &PartyId,
        now: Instant,
        unix: u64,
    ) -> IceServers {
        let live = self.live(now);
        let mut stun: Vec<SocketAddr> = config.stun.clone();
        // A draining relay is going away; a full one still answers STUN.
        for r in live.iter().filter(|r| !r.draining) {
            for a in &r.addrs {
                if !stun.contains(a) {
                    stun.push(*a);
                }
            }
        }
        let mut turn_addrs: Vec<(SocketAddr, String)> = Vec::new();
        for r in live
            .iter()
            .filter(|r| r.turn && !load_of(r).refuses_allocations())
        {
            if let Some(a) = r.addrs.first() {
                turn_addrs.push((*a, r.region.clone()));
            }
        }
        let configured_full = config
            .turn_load
            .as_ref()
            .is_some_and(|load| load().refuses_allocations());
        if !configured_full {
            for a in &config.turn {
                if !turn_addrs.iter().any(|(t, _)| t == a) {
                    turn_addrs.push((*a, String::new()));
                }
            }
        }
        turn_addrs.truncate(MAX_TURN_SERVERS);
        let turn = match &config.turn_secret {
            Some(secret) => {
                let user = turn_user(device, party);
                let mut expiry = unix + config.credential_ttl.as_secs();
                // A member who left and came back within one lifetime: its new credentials
                // must outlive the revocation of the old ones.
                if let Some(until) = lock(&self.revoked).get(&user)
                    && *until >= expiry
                {
                    expiry = until + 1;
                }
                let creds = turn::rest_credentials(secret.as_bytes(), &user, expiry);
                turn_addrs
                    .into_iter()
                    .map(|(addr, region)| TurnServer {
                        addr,
                        username: creds.username.clone(),
                        password: creds.password.clone(),
                        region,
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        IceServers {
            stun,
            turn,
            ttl_secs: config.credential_ttl.as_secs(),
        }
    }

    /// Revokes the credentials of `device` in `party` (it left or was removed) issued
    /// before Unix time `unix`; `ttl` is the credential lifetime.
    pub fn revoke(
        &self,
        device: &DeviceKey,
        party: &PartyId,
        unix: u64,
        ttl: Duration,
    ) -> Revocation {
        let revocation = Revocation {
            user: turn_user(device, party),
            until: unix + ttl.as_secs(),
        };
        {
            let mut revoked = lock(&self.revoked);
            revoked.retain(|_, until| *until > unix);
            let until = revoked.entry(revocation.user.clone()).or_insert(0);
            *until = (*until).max(revocation.until);
            while revoked.len() > MAX_REVOCATIONS {
                let Some(oldest) = revoked
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(u, _)| u.clone())
                else {
                    break;
                };
                revoked.remove(&oldest);
                tracing::info!("revocation list full: the oldest revocation was dropped");
            }
        }
        tracing::debug!(user = %revocation.user, until = revocation.until, "TURN credentials revoked");
        // No receiver (no relay in this process) is fine.
        let _ = self.revocations.send(revocation.clone());
        revocation
    }

    /// Takes back revocations remembered in the database (at start, before any relay
    /// registers or subscribes).
    pub fn restore(&self, revocations: impl IntoIterator<Item = Revocation>) {
        let mut revoked = lock(&self.revoked);
        for r in revocations {
            let until = revoked.entry(r.user).or_insert(0);
            *until = (*until).max(r.until);
        }
    }

    /// Revocations still in force at Unix time `unix`, for a relay's heartbeat answer.
    pub fn revoked(&self, unix: u64) -> Vec<Revocation> {
        lock(&self.revoked)
            .iter()
            .filter(|(_, until)| **until > unix)
            .map(|(user, until)| Revocation {
                user: user.clone(),
                until: *until,
            })
            .collect()
    }

    /// Every revocation from now on, for a relay in this process.
    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.revocations.subscribe()
    }
}

/// The TURN REST user id of `device` in `party`: the first 16 characters of its key (64
/// bits: enough to tell devices apart, short enough for logs) and the party id, so relays
/// can count and limit per party.
pub fn turn_user(device: &DeviceKey, party: &PartyId) -> String {
    let key = device.to_string();
    let prefix = key.get(..16).unwrap_or(&key);
    format!("{prefix}.{party}")
}

fn load_of(r: &RelayRegistration) -> RelayLoad {
    RelayLoad {
        allocations: r.allocations,
        capacity: r.capacity,
        draining: r.draining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanrage_core::turn::RelaySigner;

    const NOW: u64 = 1_700_000_000;

    fn signer() -> RelaySigner {
        RelaySigner::from_seed(&[3; 32])
    }

    fn config() -> IceConfig {
        IceConfig {
            turn_secret: Some("s3cret".into()),
            stun: vec!["203.0.113.20:3478".parse().expect("addr")],
            turn: vec!["203.0.113.30:3478".parse().expect("addr")],
            credential_ttl: Duration::from_secs(3600),
            trusted_relays: vec![signer().public_key()],
            turn_load: None,
        }
    }

    fn reg(id: &str, allocations: u64) -> RelayRegistration {
        RelayRegistration {
            id: id.into(),
            region: "test".into(),
            addrs: vec![
                format!("203.0.113.{}:3478", 40 + allocations)
                    .parse()
                    .expect("addr"),
            ],
            turn: true,
            allocations,
            capacity: 100,
            draining: false,
        }
    }

    fn party() -> PartyId {
        PartyId::from_bytes([0xab; 8])
    }

    fn request(body: &[u8], nonce: u8) -> String {
        signer().authorization("POST", "/v1/relays", body, NOW, [nonce; 16])
    }

    #[test]
    fn registrations_need_a_trusted_key_an_exact_signature_and_a_fresh_nonce() {
        let relays = Relays::default();
        let c = config();
        let body = br#"{"id":"r1"}"#;
        let h = request(body, 1);
        let req = ("POST", "/v1/relays", &body[..]);
        assert_eq!(
            relays.authorize(&c, Some(&h), req, NOW + 60),
            Ok(signer().public_key())
        );
        // The same request again: a replay.
        assert_eq!(
            relays.authorize(&c, Some(&h), req, NOW + 61),
            Err(RegisterError::Replayed)
        );
        // The captured header with another body, path or method, or too late.
        let h2 = request(body, 2);
        for (m, p, b, t) in [
            ("POST", "/v1/relays", &br#"{"id":"evil"}"#[..], NOW),
            ("POST", "/v1/ice", &body[..], NOW),
            ("PUT", "/v1/relays", &body[..], NOW),
        ] {
            assert!(matches!(
                relays.authorize(&c, Some(&h2), (m, p, b), t),
                Err(RegisterError::Signature(RelayAuthError::BadSignature))
            ));
        }
        assert!(matches!(
            relays.authorize(&c, Some(&h2), req, NOW + CLOCK_SKEW_SECS + 1),
            Err(RegisterError::Signature(RelayAuthError::Stale(_)))
        ));
        // Still unused, so it works once.
        assert!(relays.authorize(&c, Some(&h2), req, NOW).is_ok());
        // A valid signature by a key nobody listed.
        let stranger = RelaySigner::from_seed(&[4; 32]);
        let h3 = stranger.authorization("POST", "/v1/relays", body, NOW, [3; 16]);
        assert_eq!(
            relays.authorize(&c, Some(&h3), req, NOW),
            Err(RegisterError::Untrusted(stranger.public_key()))
        );
        // No keys trusted at all: nothing is accepted, whatever the signature.
        let none = IceConfig {
            trusted_relays: vec![],
            ..config()
        };
        assert_eq!(
            relays.authorize(&none, Some(&request(body, 4)), req, NOW),
            Err(RegisterError::NoTrustedKeys)
        );
        assert!(matches!(
            relays.authorize(&c, None, req, NOW),
            Err(RegisterError::Signature(RelayAuthError::Malformed))
        ));
        // The old shared-secret form is no longer a signature.
        assert!(matches!(
            relays.authorize(&c, Some("LanrageRelay 1700000000:abc="), req, NOW),
            Err(RegisterError::Signature(RelayAuthError::Malformed))
        ));
    }

    #[test]
    fn a_relay_id_belongs_to_the_key_that_registered_it() {
        let relays = Relays::default();
        let t0 = Instant::now();
        let k1 = signer().public_key();
        let k2 = RelaySigner::from_seed(&[5; 32]).public_key();
        relays.register(reg("r", 1), k1, t0).expect("first");
        assert!(relays.register(reg("r", 2), k2, t0).is_err());
        relays.register(reg("r", 3), k1, t0).expect("renewal");
        // Once the first one expired, the id is free.
        let later = t0 + RELAY_EXPIRY + Duration::from_secs(1);
        relays.register(reg("r", 4), k2, later).expect("taken over");
    }

    #[test]
    fn ice_lists_live_relays_least_loaded_first_with_membership_bound_credentials() {
        let relays = Relays::default();
        let t0 = Instant::now();
        let k = signer().public_key();
        relays.register(reg("busy", 50), k, t0).expect("ok");
        relays.register(reg("idle", 1), k, t0).expect("ok");
        let device = DeviceKey::from_bytes([7; 32]);
        let ice = relays.ice_for(&config(), &device, &party(), t0, 5_000);
        let addrs: Vec<String> = ice.turn.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "203.0.113.41:3478",
                "203.0.113.90:3478",
                "203.0.113.30:3478"
            ]
        );
        assert_eq!(ice.stun.len(), 3);
        let t = &ice.turn[0];
        let (expiry, user) = turn::parse_rest_username(&t.username).expect("REST form");
        assert_eq!(expiry, 5_000 + 3600);
        assert_eq!(user, format!("BwcHBwcHBwcHBwcH.{}", party()));
        assert_eq!(user.rsplit('.').next(), Some("abababababababab"));
        assert_eq!(t.password, turn::rest_password(b"s3cret", &t.username));
        // Registrations expire without heartbeats.
        let later = t0 + RELAY_EXPIRY + Duration::from_secs(1);
        let ice = relays.ice_for(&config(), &device, &party(), later, 5_000);
        assert_eq!(ice.turn.len(), 1);
        assert!(
            relays
                .register(
                    RelayRegistration {
                        addrs: vec![],
                        ..reg("x", 0)
                    },
                    k,
                    t0
                )
                .is_err()
        );
    }

    #[test]
    fn full_and_draining_relays_are_not_handed_out() {
        let relays = Relays::default();
        let t0 = Instant::now();
        let k = signer().public_key();
        let full = RelayRegistration {
            allocations: 100,
            ..reg("full", 2)
        };
        let draining = RelayRegistration {
            draining: true,
            ..reg("draining", 3)
        };
        let empty = RelayRegistration {
            capacity: 0,
            ..reg("no-ports", 4)
        };
        for r in [full, draining, empty, reg("ok", 5)] {
            relays.register(r, k, t0).expect("registered");
        }
        let device = DeviceKey::from_bytes([7; 32]);
        let c = IceConfig {
            turn: vec![],
            ..config()
        };
        let ice = relays.ice_for(&c, &device, &party(), t0, 5_000);
        let addrs: Vec<String> = ice.turn.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(addrs, ["203.0.113.45:3478"]);
        // The full relay still answers STUN; the draining one is going away.
        assert!(
            ice.stun
                .contains(&"203.0.113.42:3478".parse().expect("addr"))
        );
        assert!(
            !ice.stun
                .contains(&"203.0.113.43:3478".parse().expect("addr"))
        );
    }

    #[test]
    fn a_configured_turn_server_with_a_load_source_is_skipped_when_full() {
        let relays = Relays::default();
        let device = DeviceKey::from_bytes([7; 32]);
        let load = Arc::new(Mutex::new(RelayLoad {
            allocations: 3,
            capacity: 4,
            draining: false,
        }));
        let source = Arc::clone(&load);
        let c = IceConfig {
            turn_load: Some(Arc::new(move || *lock(&source))),
            ..config()
        };
        let t0 = Instant::now();
        assert_eq!(
            relays.ice_for(&c, &device, &party(), t0, 5_000).turn.len(),
            1
        );
        lock(&load).allocations = 4;
        assert!(
            relays
                .ice_for(&c, &device, &party(), t0, 5_000)
                .turn
                .is_empty()
        );
        *lock(&load) = RelayLoad {
            allocations: 0,
            capacity: 4,
            draining: true,
        };
        assert!(
            relays
                .ice_for(&c, &device, &party(), t0, 5_000)
                .turn
                .is_empty()
        );
    }

    #[test]
    fn revocations_reach_heartbeats_and_subscribers_and_expire() {
        let relays = Relays::default();
        let mut rx = relays.subscribe();
        let device = DeviceKey::from_bytes([7; 32]);
        let ttl = Duration::from_secs(3600);
        relays.revoke(&device, &party(), 5_000, ttl);
        let expected = Revocation {
            user: turn_user(&device, &party()),
            until: 5_000 + 3600,
        };
        assert_eq!(relays.revoked(5_001), vec![expected.clone()]);
        assert_eq!(rx.try_recv().ok(), Some(expected));
        // Credentials issued after the revocation outlive it.
        let ice = relays.ice_for(&config(), &device, &party(), Instant::now(), 5_000);
        let (expiry, _) = turn::parse_rest_username(&ice.turn[0].username).expect("REST form");
        assert!(expiry > 5_000 + 3600);
        // Once every credential it covers has expired, it is gone.
        assert!(relays.revoked(5_000 + 3600).is_empty());
    }
}
