//! The state directory: the device key and local API token (files, mode 0600) and the
//! daemon's SQLite database (membership and settings).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gotatun::x25519::StaticSecret;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

const KEY_FILE: &str = "private.key";
const DB_FILE: &str = "daemon.db";

/// The party this daemon belongs to, kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub invite: String,
    pub player_name: String,
    /// The last party view seen, so the data plane can come back before the control plane
    /// answers.
    #[serde(default)]
    pub last_view: Option<lanrage_proto::api::PartyView>,
}

/// The state directory and its database.
#[derive(Clone)]
pub struct State {
    dir: PathBuf,
    pool: SqlitePool,
}

impl State {
    /// Opens (creating) the directory, mode 0700, and the database.
    pub async fn open(dir: &Path) -> anyhow::Result<Self> {
        if !dir.exists() {
            fs::create_dir_all(dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))?;
            // Only a directory we made is narrowed; an existing one keeps its mode, and the
            // secrets in it are 0600 either way.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", dir.display()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(dir.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a membership change survives `kill -9` and power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", dir.join(DB_FILE).display()))?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        Ok(Self {
            dir: dir.to_path_buf(),
            pool,
        })
    }

    /// Takes the state directory for this process: two daemons sharing one key and one
    /// database would fight over the same party seat. Held until the returned lock drops.
    pub fn lock(&self) -> anyhow::Result<StateLock> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.dir.join("daemon.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(StateLock(lock)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another LANrage daemon is using the state directory {}",
                self.dir.display()
            ),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// The device key, created on first start.
    pub fn device_key(&self) -> anyhow::Result<StaticSecret> {
        let bytes = read_or_create_secret(&self.dir.join(KEY_FILE), || {
            let mut k = [0u8; 32];
            rand::rng().fill_bytes(&mut k);
            STANDARD.encode(k)
        })?;
        let raw = STANDARD
            .decode(bytes.trim())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .with_context(|| {
                format!(
                    "{} is not a base64 X25519 key",
                    self.dir.join(KEY_FILE).display()
                )
            })?;
        Ok(StaticSecret::from(raw))
    }

    /// The local API token, created on first start.
    pub fn api_token(&self) -> anyhow::Result<String> {
        let token =
            read_or_create_secret(&self.dir.join(lanrage_proto::local::API_TOKEN_FILE), || {
                let mut k = [0u8; 24];
                rand::rng().fill_bytes(&mut k);
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k)
            })?;
        Ok(token.trim().to_owned())
    }

    /// The TURN secret of host mode's embedded relay and control plane, created on first
    /// start and kept, so credentials guests hold survive a restart of the host.
    pub fn host_turn_secret(&self) -> anyhow::Result<String> {
        let secret = read_or_create_secret(&self.dir.join("host-turn-secret"), || {
            let mut k = [0u8; 24];
            rand::rng().fill_bytes(&mut k);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k)
        })?;
        Ok(secret.trim().to_owned())
    }

    /// The saved membership, if any.
    pub async fn membership(&self) -> anyhow::Result<Option<Membership>> {
        self.setting(
            "membership",
            "the saved membership is unreadable; ignoring it",
        )
        .await
    }

    /// Saves or clears the membership.
    pub async fn set_membership(&self, m: Option<&Membership>) -> anyhow::Result<()> {
        match m {
            Some(m) => self.set_setting("membership", m).await,
            None => {
                sqlx::query("DELETE FROM settings WHERE key = 'membership'")
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    }

    /// The player's LAN emulation settings, if ever changed.
    pub async fn lan_settings(&self) -> anyhow::Result<Option<lanrage_proto::local::LanSettings>> {
        self.setting(
            "lan",
            "the saved LAN settings are unreadable; using defaults",
        )
        .await
    }

    /// Saves the LAN emulation settings (one statement: the old ones stay on failure).
    pub async fn set_lan_settings(
        &self,
        settings: &lanrage_proto::local::LanSettings,
    ) -> anyhow::Result<()> {
        self.set_setting("lan", settings).await
    }

    /// The player name saved in the settings, if ever set.
    pub async fn player_name(&self) -> anyhow::Result<Option<String>> {
        self.setting(
            "player_name",
            "the saved player name is unreadable; using the host name",
        )
        .await
    }

    /// Saves a settings change in one transaction: all of it or none.
    pub async fn save_settings(
        &self,
        player_name: Option<&str>,
        lan: Option<&lanrage_proto::local::LanSettings>,
    ) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let upsert = "INSERT INTO settings (key, value) VALUES ($1, $2) \
                      ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        if let Some(name) = player_name {
            sqlx::query(upsert)
                .bind("player_name")
                .bind(serde_json::to_string(name)?)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(lan) = lan {
            sqlx::query(upsert)
                .bind("lan")
                .bind(serde_json::to_string(lan)?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A JSON value from the settings table; an unreadable one is logged and ignored.
    async fn setting<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        unreadable: &'static str,
    ) -> anyhow::Result<Option<T>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let value: String = row.try_get(0)?;
        match serde_json::from_str(&value) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                tracing::warn!(error = %e, key, "{unreadable}");
                Ok(None)
            }
        }
    }

    async fn set_setting<T: Serialize>(&self, key: &str, value: &T) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(serde_json::to_string(value)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Path of the embedded control plane's database (host mode).
    pub fn control_db_url(&self) -> String {
        format!("sqlite://{}", self.dir.join("control.db").display())
    }
}

/// Exclusive use of a state directory, released on drop (or when the process dies).
pub struct StateLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

/// Reads a secret file, or creates it with mode 0600; an existing file with looser
/// permissions is tightened.
fn read_or_create_secret(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    match fs::read_to_string(path) {
        Ok(s) => {
            let mode = fs::metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
            }
            if s.trim().is_empty() {
                bail!("{} is empty; delete it to create a new one", path.display());
            }
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            let tmp = path.with_extension("tmp");
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(value.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            Ok(value)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn key_and_token_are_private_and_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(dir.path()).await.expect("open");
        let k1 = state.device_key().expect("key").to_bytes();
        let k2 = state.device_key().expect("key").to_bytes();
        assert_eq!(k1, k2);
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let t = state.api_token().expect("token");
        assert_eq!(t, state.api_token().expect("token"));
        let mode = fs::metadata(dir.path().join("api.token"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn membership_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Membership {
            invite: "lr1-abc".into(),
            player_name: "alice".into(),
            last_view: None,
        };
        {
            let state = State::open(dir.path()).await.expect("open");
            assert_eq!(state.membership().await.expect("read"), None);
            state.set_membership(Some(&m)).await.expect("write");
        }
        let state = State::open(dir.path()).await.expect("reopen");
        assert_eq!(state.membership().await.expect("read"), Some(m));
        state.set_membership(None).await.expect("clear");
        assert_eq!(state.membership().await.expect("read"), None);
    }

    #[tokio::test]
    async fn a_second_daemon_cannot_take_the_same_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State::open(dir.path()).await.expect("open");
        let held = state.lock().expect("first lock");
        let Err(e) = state.lock() else {
            panic!("a second lock on the same directory was granted");
        };
        assert!(e.to_string().contains("another LANrage daemon"), "{e}");
        drop(held);
        state
            .lock()
            .expect("free again after the first is released");
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(KEY_FILE), "not a key").expect("write");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let state = rt.block_on(State::open(dir.path())).expect("open");
        let Err(err) = state.device_key() else {
            panic!("a garbage key file was accepted");
        };
        assert!(format!("{err:#}").contains("not a base64 X25519 key"));
    }
}
