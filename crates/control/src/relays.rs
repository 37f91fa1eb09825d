//! The relay registry and the ICE servers handed to devices.
//!
//! Relays announce themselves with `POST /v1/relays`, signed with the TURN secret the
//! control plane shares with them, and repeat the call as a heartbeat; an entry not renewed
//! within [`RELAY_EXPIRY`] is dropped. `GET /v1/ice` gives a signed-in device the STUN
//! servers and TURN servers (configured ones and live registered relays, least loaded
//! first) with TURN REST credentials issued for that device.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lanrage_core::turn;
use lanrage_proto::DeviceKey;
use lanrage_proto::api::{IceServers, RelayRegistration, TurnServer};

/// A registration not renewed this long is forgotten (relays heartbeat every 10 s).
pub const RELAY_EXPIRY: Duration = Duration::from_secs(30);
/// How far a signed registration's timestamp may be from this server's clock.
const CLOCK_SKEW_SECS: u64 = 120;
/// TURN servers handed to one device.
const MAX_TURN_SERVERS: usize = 4;
/// Most relays remembered (a bound on what a leaked secret can make us store).
const MAX_RELAYS: usize = 256;

/// ICE settings of a control plane.
#[derive(Debug, Clone, Default)]
pub struct IceConfig {
    /// Shared with the relays (and any coturn with `use-auth-secret`); relays sign their
    /// registration with it (`lanrage_core::turn::relay_authorization`).
    pub turn_secret: Option<String>,
    /// STUN servers handed out besides the registered relays.
    pub stun: Vec<SocketAddr>,
    /// TURN servers handed out besides the registered relays (e.g. coturn).
    pub turn: Vec<SocketAddr>,
    /// Lifetime of issued TURN credentials.
    pub credential_ttl: Duration,
}

/// Live registrations.
#[derive(Default)]
pub struct Relays {
    entries: Mutex<HashMap<String, (RelayRegistration, Instant)>>,
}

impl Relays {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (RelayRegistration, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Checks a relay's signature (`header`) at Unix time `unix`.
    pub fn authorized(config: &IceConfig, header: Option<&str>, unix: u64) -> bool {
        let (Some(secret), Some(header)) = (&config.turn_secret, header) else {
            return false;
        };
        let Some((ts, _)) = header
            .strip_prefix("LanrageRelay ")
            .and_then(|v| v.split_once(':'))
        else {
            return false;
        };
        let Ok(ts) = ts.parse::<u64>() else {
            return false;
        };
        if ts.abs_diff(unix) > CLOCK_SKEW_SECS {
            return false;
        }
        let expected = turn::relay_authorization(secret, ts);
        constant_time_eq(expected.as_bytes(), header.as_bytes())
    }

    /// Records (or renews) a registration.
    pub fn register(&self, reg: RelayRegistration, now: Instant) -> Result<(), &'static str> {
        if reg.id.is_empty() || reg.id.len() > 64 || reg.region.len() > 64 {
            return Err("relay id must be 1-64 characters and region at most 64");
        }
        if reg.addrs.is_empty() || reg.addrs.len() > 8 {
            return Err("a relay announces 1-8 addresses");
        }
        if reg
            .addrs
            .iter()
            .any(|a| a.ip().is_unspecified() || a.port() == 0)
        {
            return Err("relay addresses must be reachable IP:port pairs");
        }
        let mut entries = self.entries();
        entries.retain(|_, (_, seen)| now.saturating_duration_since(*seen) < RELAY_EXPIRY);
        if entries.len() >= MAX_RELAYS && !entries.contains_key(&reg.id) {
            return Err("too many relays registered");
        }
        if !entries.contains_key(&reg.id) {
            tracing::info!(id = %reg.id, region = %reg.region, addrs = ?reg.addrs, "relay registered");
        }
        entries.insert(reg.id.clone(), (reg, now));
        Ok(())
    }

    /// Live registrations, least loaded first.
    pub fn live(&self, now: Instant) -> Vec<RelayRegistration> {
        let mut entries = self.entries();
        entries.retain(|_, (_, seen)| now.saturating_duration_since(*seen) < RELAY_EXPIRY);
        let mut live: Vec<RelayRegistration> = entries.values().map(|(r, _)| r.clone()).collect();
        live.sort_by(|a, b| {
            let load = |r: &RelayRegistration| r.allocations as f64 / r.capacity.max(1) as f64;
            load(a).total_cmp(&load(b)).then_with(|| a.id.cmp(&b.id))
        });
        live
    }

    /// What device `device` should use, at Unix time `unix`.
    pub fn ice_for(
        &self,
        config: &IceConfig,
        device: &DeviceKey,
        now: Instant,
        unix: u64,
    ) -> IceServers {
        let live = self.live(now);
        let mut stun: Vec<SocketAddr> = config.stun.clone();
        for r in &live {
            for a in &r.addrs {
                if !stun.contains(a) {
                    stun.push(*a);
                }
            }
        }
        let mut turn_addrs: Vec<(SocketAddr, String)> = Vec::new();
        for r in live.iter().filter(|r| r.turn) {
            if let Some(a) = r.addrs.first() {
                turn_addrs.push((*a, r.region.clone()));
            }
        }
        for a in &config.turn {
            if !turn_addrs.iter().any(|(t, _)| t == a) {
                turn_addrs.push((*a, String::new()));
            }
        }
        turn_addrs.truncate(MAX_TURN_SERVERS);
        let turn = match &config.turn_secret {
            Some(secret) => {
                let expiry = unix + config.credential_ttl.as_secs();
                let id = device.to_string();
                let id = id.get(..16).unwrap_or(&id);
                let creds = turn::rest_credentials(secret.as_bytes(), id, expiry);
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
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> IceConfig {
        IceConfig {
            turn_secret: Some("s3cret".into()),
            stun: vec!["203.0.113.20:3478".parse().expect("addr")],
            turn: vec!["203.0.113.30:3478".parse().expect("addr")],
            credential_ttl: Duration::from_secs(3600),
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
        }
    }

    #[test]
    fn registrations_need_the_secret_and_a_fresh_timestamp() {
        let c = config();
        let h = turn::relay_authorization("s3cret", 1_000_000);
        assert!(Relays::authorized(&c, Some(&h), 1_000_000));
        assert!(Relays::authorized(&c, Some(&h), 1_000_100));
        assert!(!Relays::authorized(&c, Some(&h), 1_000_500), "stale");
        let wrong = turn::relay_authorization("other", 1_000_000);
        assert!(!Relays::authorized(&c, Some(&wrong), 1_000_000));
        assert!(!Relays::authorized(&c, None, 1_000_000));
        assert!(!Relays::authorized(&c, Some("LanrageRelay x:y"), 1_000_000));
        let no_secret = IceConfig::default();
        assert!(!Relays::authorized(&no_secret, Some(&h), 1_000_000));
    }

    #[test]
    fn ice_lists_live_relays_least_loaded_first_with_valid_credentials() {
        let relays = Relays::default();
        let t0 = Instant::now();
        relays.register(reg("busy", 50), t0).expect("ok");
        relays.register(reg("idle", 1), t0).expect("ok");
        let device = DeviceKey::from_bytes([7; 32]);
        let ice = relays.ice_for(&config(), &device, t0, 5_000);
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
        let (expiry, _) = turn::parse_rest_username(&t.username).expect("REST form");
        assert_eq!(expiry, 5_000 + 3600);
        assert_eq!(t.password, turn::rest_password(b"s3cret", &t.username));
        // Registrations expire without heartbeats.
        let later = t0 + RELAY_EXPIRY + Duration::from_secs(1);
        let ice = relays.ice_for(&config(), &device, later, 5_000);
        assert_eq!(ice.turn.len(), 1);
        assert!(
            relays
                .register(
                    RelayRegistration {
                        addrs: vec![],
                        ..reg("x", 0)
                    },
                    t0
                )
                .is_err()
        );
    }
}
