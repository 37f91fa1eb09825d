//! Announcing a relay to a control plane: `POST /v1/relays` now and every [`HEARTBEAT`],
//! carrying the relay's addresses and load, signed with the relay's own Ed25519 key over
//! the exact request (`lanrage_core::turn::RelaySigner`; the control plane's operator lists
//! the key with `--trust-relay`). The answer lists revoked TURN user ids, which the relay
//! applies; on shutdown a last registration says the relay is draining.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lanrage_core::turn::RelaySigner;
use lanrage_proto::api::{RelayHeartbeatReply, RelayRegistration};

use crate::Handle;

/// How often the registration is renewed (the control plane forgets it after 30 s).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Failures in a row before the operator is warned (about 15 s of retries).
const WARN_AFTER: u32 = 5;
/// The route, as signed.
const PATH: &str = "/v1/relays";

/// Where and as what the relay registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The control plane's base URL.
    pub control: String,
    /// The relay's key (its public half is what the control plane trusts).
    pub signer: Arc<RelaySigner>,
    pub id: String,
    pub region: String,
    /// Addresses clients reach the relay on.
    pub addrs: Vec<SocketAddr>,
}

/// The relay key in `path`: a 32-byte Ed25519 seed in base64. Created (mode 0600, its
/// directory 0700) when missing; an existing file readable by others is narrowed to 0600.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<RelaySigner> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let meta = std::fs::metadata(path)?;
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("making the relay key {} private", path.display()))?;
                tracing::info!(path = %path.display(), "relay key file was readable by others; now 0600");
            }
            let seed: [u8; 32] = STANDARD
                .decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| {
                    format!(
                        "{} is not a relay key (32 bytes of base64); move it away to make a new one",
                        path.display()
                    )
                })?;
            Ok(RelaySigner::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && !dir.exists()
            {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let seed: [u8; 32] = rand::random();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating the relay key {}", path.display()))?;
            writeln!(file, "{}", STANDARD.encode(seed))?;
            file.sync_all()?;
            let signer = RelaySigner::from_seed(&seed);
            tracing::info!(path = %path.display(), key = %signer.public_key(), "relay key created");
            Ok(signer)
        }
        Err(e) => Err(e).with_context(|| format!("reading the relay key {}", path.display())),
    }
}

/// Registers and heartbeats forever (until the task is dropped).
pub async fn run(reg: Registration, relay: Handle) {
    let http = client();
    // Consecutive failures: retried quickly at first (the control plane may be starting
    // alongside), reported once they persist.
    let mut registered = false;
    let mut failures = 0u32;
    // Revocations already applied (user → until): the answer repeats them every beat, and
    // applying one again would drop allocations made since with newer credentials.
    let mut applied: HashMap<String, u64> = HashMap::new();
    loop {
        let wait = match send(&http, &reg, &relay).await {
            Ok(reply) => {
                if failures >= WARN_AFTER {
                    tracing::info!(control = %reg.control, "relay registered again");
                } else if !registered {
                    tracing::info!(control = %reg.control, key = %reg.signer.public_key(), "relay registered");
                }
                registered = true;
                failures = 0;
                apply(&relay, &mut applied, reply);
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

/// Stops taking allocations and tells the control plane at once, so it stops handing the
/// relay out now rather than when the registration expires. Best effort, a few seconds.
pub async fn farewell(reg: &Registration, relay: &Handle) {
    relay.drain();
    match send(&client(), reg, relay).await {
        Ok(_) => tracing::info!(control = %reg.control, "relay announced it is draining"),
        Err(e) => tracing::debug!(error = %e, "last registration failed"),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// One signed registration; the control plane's answer.
async fn send(
    http: &reqwest::Client,
    reg: &Registration,
    relay: &Handle,
) -> Result<RelayHeartbeatReply, String> {
    let load = relay.load();
    let body = RelayRegistration {
        id: reg.id.clone(),
        region: reg.region.clone(),
        addrs: reg.addrs.clone(),
        turn: load.turn,
        allocations: load.allocations as u64,
        capacity: (load.capacity + load.allocations) as u64,
        draining: load.draining,
    };
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let auth = reg
        .signer
        .authorization("POST", PATH, &body, unix, rand::random());
    let url = format!("{}{PATH}", reg.control.trim_end_matches('/'));
    let resp = http
        .post(&url)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes);
        return Err(format!("{status}: {}", text.trim()));
    }
    // An older control plane answers 204 without revocations.
    Ok(serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Applies the revocations not applied yet; forgets those whose credentials all expired.
fn apply(relay: &Handle, applied: &mut HashMap<String, u64>, reply: RelayHeartbeatReply) {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    applied.retain(|_, until| *until > unix);
    for r in reply.revoked {
        if applied.get(&r.user).is_some_and(|until| *until >= r.until) {
            continue;
        }
        relay.revoke(&r.user, r.until);
        applied.insert(r.user, r.until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("lanrage-relay-key-{}", std::process::id()));
        let path = dir.join("sub/relay.key");
        let first = load_or_create_key(&path).expect("created");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.join("sub"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let again = load_or_create_key(&path).expect("read");
        assert_eq!(first.public_key(), again.public_key());
        // Loosened by someone: narrowed again on load.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        load_or_create_key(&path).expect("read");
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not a key").expect("write");
        assert!(load_or_create_key(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
