//! The control plane's SQL. Standard SQL only (`$n` placeholders, no SQLite-only syntax) so
//! the same statements can run on PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use lanrage_proto::{DeviceKey, PartyId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::error::ApiError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS devices (
    public_key TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS parties (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret TEXT NOT NULL,
    host TEXT NOT NULL,
    locked INTEGER NOT NULL,
    max_members INTEGER,
    network TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS addresses (
    party_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    host_offset INTEGER NOT NULL,
    PRIMARY KEY (party_id, public_key),
    UNIQUE (party_id, host_offset)
);
CREATE TABLE IF NOT EXISTS members (
    party_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    name TEXT NOT NULL,
    joined_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    away INTEGER NOT NULL,
    candidates TEXT NOT NULL,
    PRIMARY KEY (party_id, public_key),
    UNIQUE (party_id, name)
);
CREATE TABLE IF NOT EXISTS bans (
    party_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    PRIMARY KEY (party_id, public_key)
);
CREATE TABLE IF NOT EXISTS revocations (
    turn_user TEXT PRIMARY KEY,
    until_unix BIGINT NOT NULL
);
"#;

/// A party row.
#[derive(Debug, Clone)]
pub struct PartyRow {
    pub id: PartyId,
    pub name: String,
    pub secret: String,
    pub host: DeviceKey,
    pub locked: bool,
    pub max_members: Option<u32>,
    pub network: String,
    pub version: i64,
}

/// A member row joined with its reserved address.
#[derive(Debug, Clone)]
pub struct MemberRow {
    pub public_key: DeviceKey,
    pub name: String,
    pub joined_at: i64,
    pub away: bool,
    pub candidates: String,
    pub host_offset: u32,
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pub pool: SqlitePool,
}

impl Store {
    /// Opens the database at `url`, creating the file, its directory and the schema.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres") {
            anyhow::bail!("PostgreSQL is not supported yet; use a sqlite:// URL");
        }
        if !url.starts_with("sqlite:") {
            anyhow::bail!("unsupported database URL {url:?}; expected sqlite://PATH");
        }
        let memory = url.contains(":memory:");
        // The database's directory and files (with -wal and -shm), made private again
        // once SQLite has created them.
        let mut private = None;
        let mut options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if !memory {
            options = options.journal_mode(SqliteJournalMode::Wal);
            let path = options.get_filename().to_path_buf();
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."))
                .to_path_buf();
            crate::private_dir::secure(&dir, Some(&file))?;
            private = Some((dir, file));
        }
        // An in-memory database lives in its one connection, which must never be recycled.
        let pool = if memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(4)
        }
        .connect_with(options)
        .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        if let Some((dir, file)) = private {
            crate::private_dir::secure(&dir, Some(&file))?;
        }
        Ok(Self { pool })
    }
}

impl Store {
    /// A write transaction that takes SQLite's write lock up front (`BEGIN IMMEDIATE`), so
    /// it never fails half-way with SQLITE_BUSY when another writer committed after it read.
    pub async fn write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

fn device(s: &str) -> Result<DeviceKey, sqlx::Error> {
    s.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn party_id(s: &str) -> Result<PartyId, sqlx::Error> {
    s.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

pub async fn upsert_device(
    c: &mut SqliteConnection,
    key: &DeviceKey,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO devices (public_key, created_at) VALUES ($1, $2) ON CONFLICT (public_key) DO NOTHING",
    )
    .bind(key.to_string())
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn insert_token(
    c: &mut SqliteConnection,
    hash: &str,
    key: &DeviceKey,
    expires_at: i64,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO tokens (token_hash, public_key, expires_at) VALUES ($1, $2, $3)")
        .bind(hash)
        .bind(key.to_string())
        .bind(expires_at)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn delete_token(c: &mut SqliteConnection, hash: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM tokens WHERE token_hash = $1")
        .bind(hash)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn token_owner(
    c: &mut SqliteConnection,
    hash: &str,
    now: i64,
) -> sqlx::Result<Option<DeviceKey>> {
    let row =
        sqlx::query("SELECT public_key FROM tokens WHERE token_hash = $1 AND expires_at > $2")
            .bind(hash)
            .bind(now)
            .fetch_optional(c)
            .await?;
    row.map(|r| device(r.try_get::<&str, _>(0)?)).transpose()
}

pub async fn purge_tokens(c: &mut SqliteConnection, now: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM tokens WHERE expires_at <= $1")
        .bind(now)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn insert_party(c: &mut SqliteConnection, p: &PartyRow, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO parties (id, name, secret, host, locked, max_members, network, version, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(p.id.to_string())
    .bind(&p.name)
    .bind(&p.secret)
    .bind(p.host.to_string())
    .bind(i64::from(p.locked))
    .bind(p.max_members.map(i64::from))
    .bind(&p.network)
    .bind(p.version)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn get_party(c: &mut SqliteConnection, id: &PartyId) -> sqlx::Result<Option<PartyRow>> {
    let row = sqlx::query(
        "SELECT id, name, secret, host, locked, max_members, network, version FROM parties WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(c)
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(PartyRow {
        id: party_id(r.try_get::<&str, _>(0)?)?,
        name: r.try_get(1)?,
        secret: r.try_get(2)?,
        host: device(r.try_get::<&str, _>(3)?)?,
        locked: r.try_get::<i64, _>(4)? != 0,
        max_members: r
            .try_get::<Option<i64>, _>(5)?
            .and_then(|m| u32::try_from(m).ok()),
        network: r.try_get(6)?,
        version: r.try_get(7)?,
    }))
}

/// Writes the mutable party fields and bumps its version; returns the new version. The
/// update only applies to the version that was read, so a concurrent writer (another
/// instance) makes it fail with a conflict instead of being silently overwritten.
pub async fn update_party(c: &mut SqliteConnection, p: &PartyRow) -> Result<i64, ApiError> {
    let version = p.version + 1;
    let done = sqlx::query(
        "UPDATE parties SET host = $1, locked = $2, version = $3 WHERE id = $4 AND version = $5",
    )
    .bind(p.host.to_string())
    .bind(i64::from(p.locked))
    .bind(version)
    .bind(p.id.to_string())
    .bind(p.version)
    .execute(c)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "version_conflict",
            "the party changed at the same moment; try again",
        ));
    }
    Ok(version)
}

pub async fn delete_party(c: &mut SqliteConnection, id: &PartyId) -> sqlx::Result<()> {
    for sql in [
        "DELETE FROM members WHERE party_id = $1",
        "DELETE FROM addresses WHERE party_id = $1",
        "DELETE FROM bans WHERE party_id = $1",
        "DELETE FROM parties WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(id.to_string())
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

pub async fn members(c: &mut SqliteConnection, id: &PartyId) -> sqlx::Result<Vec<MemberRow>> {
    let rows = sqlx::query(
        "SELECT m.public_key, m.name, m.joined_at, m.away, m.candidates, a.host_offset \
         FROM members m JOIN addresses a ON a.party_id = m.party_id AND a.public_key = m.public_key \
         WHERE m.party_id = $1 ORDER BY a.host_offset",
    )
    .bind(id.to_string())
    .fetch_all(c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(MemberRow {
                public_key: device(r.try_get::<&str, _>(0)?)?,
                name: r.try_get(1)?,
                joined_at: r.try_get(2)?,
                away: r.try_get::<i64, _>(3)? != 0,
                candidates: r.try_get(4)?,
                host_offset: u32::try_from(r.try_get::<i64, _>(5)?).unwrap_or(0),
            })
        })
        .collect()
}

pub async fn insert_member(
    c: &mut SqliteConnection,
    id: &PartyId,
    key: &DeviceKey,
    name: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO members (party_id, public_key, name, joined_at, last_seen, away, candidates) \
         VALUES ($1, $2, $3, $4, $4, 0, '[]')",
    )
    .bind(id.to_string())
    .bind(key.to_string())
    .bind(name)
    .bind(now)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn delete_member(
    c: &mut SqliteConnection,
    id: &PartyId,
    key: &DeviceKey,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM members WHERE party_id = $1 AND public_key = $2")
        .bind(id.to_string())
        .bind(key.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn touch_member(
    c: &mut SqliteConnection,
    id: &PartyId,
    key: &DeviceKey,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE members SET last_seen = $1, away = 0 WHERE party_id = $2 AND public_key = $3",
    )
    .bind(now)
    .bind(id.to_string())
    .bind(key.to_string())
    .execute(c)
    .await?;
    Ok(())
}

pub async fn set_away(c: &mut SqliteConnection, id: &PartyId, key: &DeviceKey) -> sqlx::Result<()> {
    sqlx::query("UPDATE members SET away = 1 WHERE party_id = $1 AND public_key = $2")
        .bind(id.to_string())
        .bind(key.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn set_candidates(
    c: &mut SqliteConnection,
    id: &PartyId,
    key: &DeviceKey,
    candidates: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE members SET candidates = $1 WHERE party_id = $2 AND public_key = $3")
        .bind(candidates)
        .bind(id.to_string())
        .bind(key.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn reservation(
    c: &mut SqliteConnection,
    id: &PartyId,
    key: &DeviceKey,
) -> sqlx::Result<Option<u32>> {
    let row =
        sqlx::query("SELECT host_offset FROM addresses WHERE party_id = $1 AND public_key = $2")
            .bind(id.to_string())
            .bind(key.to_string())
            .fetch_optional(c)
            .await?;
    row.map(|r| Ok(u32::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0)))
        .transpose()
}

pub async fn reserved_offsets(c: &mut SqliteConnection, id: &PartyId) -> sqlx::Result<Vec<u32>> {
    let rows =
        sqlx::query("SELECT host_offset FROM addresses WHERE party_id = $1 ORDER BY host_offset")
            .bind(id.to_string())
            .fetch_all(c)
            .await?;
    rows.iter()
        .map(|r| Ok(u32::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0)))
        .collect()
}

pub async fn reserve(
    c: &mut SqliteConnection,
    id: &PartyId,
    key: &DeviceKey,
    offset: u32,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO addresses (party_id, public_key, host_offset) VALUES ($1, $2, $3)")
        .bind(id.to_string())
        .bind(key.to_string())
        .bind(i64::from(offset))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn is_banned(
    c: &mut SqliteConnection,
    id: &PartyId,
    key: &DeviceKey,
) -> sqlx::Result<bool> {
    let row = sqlx::query("SELECT 1 FROM bans WHERE party_id = $1 AND public_key = $2")
        .bind(id.to_string())
        .bind(key.to_string())
        .fetch_optional(c)
        .await?;
    Ok(row.is_some())
}

pub async fn ban(c: &mut SqliteConnection, id: &PartyId, key: &DeviceKey) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO bans (party_id, public_key) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(id.to_string())
        .bind(key.to_string())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn parties_of(c: &mut SqliteConnection, key: &DeviceKey) -> sqlx::Result<Vec<PartyId>> {
    let rows = sqlx::query("SELECT party_id FROM members WHERE public_key = $1 ORDER BY party_id")
        .bind(key.to_string())
        .fetch_all(c)
        .await?;
    rows.iter()
        .map(|r| party_id(r.try_get::<&str, _>(0)?))
        .collect()
}

/// How many parties there are, and how many members are online and away (for metrics).
pub async fn census(c: &mut SqliteConnection) -> sqlx::Result<Census> {
    let parties: i64 = sqlx::query("SELECT COUNT(*) FROM parties")
        .fetch_one(&mut *c)
        .await?
        .try_get(0)?;
    let rows = sqlx::query("SELECT away, COUNT(*) FROM members GROUP BY away")
        .fetch_all(&mut *c)
        .await?;
    let mut census = Census {
        parties: u64::try_from(parties).unwrap_or(0),
        ..Census::default()
    };
    for r in &rows {
        let n = u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0);
        if r.try_get::<i64, _>(0)? != 0 {
            census.away += n;
        } else {
            census.online += n;
        }
    }
    Ok(census)
}

/// Counts of [`census`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Census {
    pub parties: u64,
    pub online: u64,
    pub away: u64,
}

/// Members whose last heartbeat is older than `before`: (party, device, away).
pub async fn silent_members(
    c: &mut SqliteConnection,
    before: i64,
) -> sqlx::Result<Vec<(PartyId, DeviceKey, bool)>> {
    let rows = sqlx::query(
        "SELECT party_id, public_key, away FROM members WHERE last_seen < $1 ORDER BY party_id, public_key",
    )
    .bind(before)
    .fetch_all(c)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                party_id(r.try_get::<&str, _>(0)?)?,
                device(r.try_get::<&str, _>(1)?)?,
                r.try_get::<i64, _>(2)? != 0,
            ))
        })
        .collect()
}

/// The party `key` joined most recently, if it is in any.
pub async fn latest_party_of(
    c: &mut SqliteConnection,
    key: &DeviceKey,
) -> sqlx::Result<Option<PartyId>> {
    let row = sqlx::query(
        "SELECT party_id FROM members WHERE public_key = $1 \
         ORDER BY joined_at DESC, party_id LIMIT 1",
    )
    .bind(key.to_string())
    .fetch_optional(c)
    .await?;
    row.map(|r| party_id(r.try_get::<&str, _>(0)?)).transpose()
}

/// Remembers that a TURN user id's credentials issued before `until` are revoked, so relays
/// still hear of it after a restart, and forgets revocations that ended by `now`.
pub async fn put_revocation(
    c: &mut SqliteConnection,
    user: &str,
    until: i64,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM revocations WHERE until_unix <= $1")
        .bind(now)
        .execute(&mut *c)
        .await?;
    sqlx::query(
        "INSERT INTO revocations (turn_user, until_unix) VALUES ($1, $2) \
         ON CONFLICT (turn_user) DO UPDATE SET until_unix = MAX(until_unix, excluded.until_unix)",
    )
    .bind(user)
    .bind(until)
    .execute(c)
    .await?;
    Ok(())
}

/// Revocations still in force at `now`.
pub async fn revocations(c: &mut SqliteConnection, now: i64) -> sqlx::Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT turn_user, until_unix FROM revocations WHERE until_unix > $1")
        .bind(now)
        .fetch_all(c)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
        .collect()
}
