//! Announcing a relay to a control plane: `POST /v1/relays` now and every
//! [`HEARTBEAT`], signed with the TURN secret, carrying the relay's addresses and load.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lanrage_proto::api::RelayRegistration;

use crate::Handle;

/// How often the registration is renewed (the control plane forgets it after 30 s).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Failures in a row before the operator is warned (about 15 s of retries).
const WARN_AFTER: u32 = 5;

/// Where and as what the relay registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The control plane's base URL.
    pub control: String,
    pub secret: String,
    pub id: String,
    pub region: String,
    /// Addresses clients reach the relay on.
    pub addrs: Vec<SocketAddr>,
}

/// Registers and heartbeats forever (until the task is dropped).
pub async fn run(reg: Registration, relay: Handle) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let url = format!("{}/v1/relays", reg.control.trim_end_matches('/'));
    // Consecutive failures: retried quickly at first (the control plane may be starting
    // alongside), reported once they persist.
    let mut registered = false;
    let mut failures = 0u32;
    loop {
        let load = relay.load();
        let body = RelayRegistration {
            id: reg.id.clone(),
            region: reg.region.clone(),
            addrs: reg.addrs.clone(),
            turn: load.capacity + load.allocations > 0,
            allocations: load.allocations as u64,
            capacity: (load.capacity + load.allocations) as u64,
        };
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let result = http
            .post(&url)
            .header(
                "authorization",
                lanrage_core::turn::relay_authorization(&reg.secret, unix),
            )
            .json(&body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let wait = match result {
            Ok(_) => {
                if failures >= WARN_AFTER {
                    tracing::info!(control = %reg.control, "relay registered again");
                } else if !registered {
                    tracing::info!(control = %reg.control, "relay registered");
                }
                registered = true;
                failures = 0;
                HEARTBEAT
            }
            Err(e) => {
                failures += 1;
                if failures == WARN_AFTER {
                    tracing::warn!(control = %reg.control, error = %e, "relay registration failing; retrying every 10 s");
                } else {
                    tracing::debug!(error = %e, failures, "relay registration failed");
                }
                Duration::from_millis(500 * 2u64.pow(failures.min(5))).min(HEARTBEAT)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
