//! The LANrage control plane: devices, parties, membership, virtual-IP assignment and
//! signalling, served as HTTP+JSON under `/v1` with a WebSocket for live updates.
//!
//! Layers: `routes` (axum handlers, auth extraction, error mapping) → `parties` and `auth`
//! (domain rules) → `store` (SQL). `hub` pushes changes to connected members; `metrics`
//! gives every request an id and a span, counts it, and serves `GET /metrics`.

mod auth;
mod error;
mod hub;
mod limits;
mod metrics;
mod net;
mod parties;
pub mod private_dir;
mod relays;
mod routes;
mod server;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use lanrage_core::turn::RelayKey;
pub use limits::{Limits, Quota};
pub use net::PartyNetwork;
pub use relays::{IceConfig, LoadSource, RelayLoad};

/// Settings of one control-plane instance.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// e.g. `sqlite:///var/lib/lanrage/control.db`; the file is created if missing.
    pub database_url: String,
    /// The URL invite codes carry. `None`: derived from each request's `Host` header, which
    /// is the address the client used to reach this server.
    pub public_url: Option<String>,
    /// Network new parties get.
    pub network: PartyNetwork,
    /// Membership timing; the defaults are the product's (90 s away, 5 min removed).
    pub liveness: Liveness,
    /// Devices allowed to create parties; `None`: any signed-in device. A daemon in host
    /// mode lists only itself, so its open port is not a party service for strangers.
    pub creators: Option<Vec<lanrage_proto::DeviceKey>>,
    /// STUN and TURN servers handed to devices, and the secret shared with relays.
    pub ice: IceConfig,
    /// Serve `GET /metrics` (Prometheus, no authentication) on the HTTP port. On by
    /// default for a standalone control plane, whose operator firewalls it; an embedded one
    /// whose port faces the players may turn it off and use [`Control::metrics`] instead.
    pub metrics: bool,
    /// Timeouts, connection caps and per-client quotas.
    pub limits: Limits,
}

impl ControlConfig {
    /// Defaults for a database URL.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            public_url: None,
            network: PartyNetwork::default(),
            liveness: Liveness::default(),
            creators: None,
            ice: IceConfig {
                // Bound to a membership and revoked when it ends; daemons renew every
                // minute, so an hour only bounds what a revocation a relay missed allows.
                credential_ttl: Duration::from_secs(3600),
                ..IceConfig::default()
            },
            metrics: true,
            limits: Limits::default(),
        }
    }
}

/// When silent members are marked away and removed.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub away_after: Duration,
    pub remove_after: Duration,
    /// How often the sweeper looks.
    pub sweep_every: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            away_after: Duration::from_secs(90),
            remove_after: Duration::from_secs(300),
            sweep_every: Duration::from_secs(5),
        }
    }
}

/// A running control plane's shared state.
#[derive(Clone)]
pub struct Control {
    inner: Arc<parties::Service>,
}

impl Control {
    /// Opens (and creates or migrates) the database.
    pub async fn open(config: ControlConfig) -> anyhow::Result<Self> {
        let store = store::Store::open(&config.database_url)
            .await
            .with_context(|| format!("opening control database {}", config.database_url))?;
        let inner = Arc::new(parties::Service::new(store, config));
        inner
            .restore_revocations()
            .await
            .context("reading the revoked relay credentials")?;
        Ok(Self { inner })
    }

    /// The HTTP routes.
    pub fn router(&self) -> axum::Router {
        routes::router(Arc::clone(&self.inner))
    }

    /// This control plane's metrics in the Prometheus text format (what `GET /metrics`
    /// answers), for a host that serves them elsewhere.
    pub async fn metrics(&self) -> String {
        metrics::render(&self.inner).await
    }

    /// Applies the liveness rules as of `now_ms` (Unix milliseconds); the server calls this
    /// on a timer, tests call it with a chosen time.
    pub async fn sweep(&self, now_ms: i64) -> Result<(), ApiError> {
        self.inner.sweep(now_ms).await
    }

    /// Every TURN revocation from now on (a member left or was removed), for a relay in
    /// the same process; relays elsewhere learn them in their heartbeat's answer.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<lanrage_proto::api::Revocation> {
        self.inner.relays.subscribe()
    }

    /// Serves on `listener` until `shutdown` completes, sweeping members on the way.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let sweeper = {
            let control = self.clone();
            let every = control.inner.config.liveness.sweep_every;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = control.sweep(parties::now_ms()).await {
                        tracing::warn!(error = %e, "membership sweep failed");
                    }
                }
            })
        };
        let ice = &self.inner.config.ice;
        if ice.trusted_relays.is_empty() {
            tracing::info!(
                "no relay keys trusted: relay registrations will be refused (--trust-relay)"
            );
        } else {
            tracing::info!(trusted = ice.trusted_relays.len(), "relay keys trusted");
        }
        let app = self.router();
        server::serve(listener, app, self.inner.config.limits, shutdown).await;
        sweeper.abort();
        self.inner.hub.close_all();
        Ok(())
    }
}
