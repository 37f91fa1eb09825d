//! Write-behind for the daemon's database: changes are coalesced in memory and written in
//! one SQLite transaction at most every [`FLUSH_EVERY`], so a burst of membership and metric
//! changes costs a handful of transactions, not one each.
//!
//! - A setting (membership, player name, LAN settings) is keyed: ten changes to it between
//!   two flushes write only the last. [`WriteBehind::put`] returns once the value is
//!   committed (it is "committed" for the player from then on); [`WriteBehind::put_later`]
//!   does not wait. Reads see pending values first, so a caller reads its own writes.
//! - Metric buckets (finished minutes and hours) are keyed by series, resolution and start,
//!   and rows of departed peers' series are deleted in the same transaction.
//! - A failed transaction (disk full, I/O error) keeps its changes pending and is retried
//!   with back-off; waiters get the error at once. Nothing is dropped.
//!
//! Atomicity comes from SQLite: WAL with `synchronous = FULL`, one transaction per flush,
//! so `kill -9` at any moment leaves the last committed flush, never a torn one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lanrage_core::series::{Bucket, Resolution};
use sqlx::SqlitePool;
use tokio::sync::{Mutex, Notify, oneshot};
use tokio::task::JoinHandle;

/// The shortest time between two write transactions.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Back-off bounds after a failed transaction.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The schema the write-behind writes to (created by [`crate::state::State::open`]).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metric_points (
    series TEXT NOT NULL, res TEXT NOT NULL, start INTEGER NOT NULL,
    count INTEGER NOT NULL, sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    PRIMARY KEY (series, res, start)
) WITHOUT ROWID;
";

/// A handle on the writer; cheap to clone.
#[derive(Clone)]
pub struct WriteBehind {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    pending: Mutex<Pending>,
    wake: Notify,
    transactions: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct Pending {
    /// `None` deletes the key.
    settings: BTreeMap<String, Option<String>>,
    points: BTreeMap<(String, Resolution, u64), Bucket>,
    /// Series whose rows go.
    forget: BTreeSet<String>,
    /// Rows older than these (Unix seconds) go, per resolution.
    prune: BTreeMap<Resolution, u64>,
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    stop: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.settings.is_empty()
            && self.points.is_empty()
            && self.forget.is_empty()
            && self.prune.is_empty()
    }

    /// Puts a failed batch back under what arrived since (newer wins).
    fn restore(&mut self, old: Pending) {
        for (k, v) in old.settings {
            self.settings.entry(k).or_insert(v);
        }
        for (k, v) in old.points {
            self.points.entry(k).or_insert(v);
        }
        self.forget.extend(old.forget);
        for (k, v) in old.prune {
            self.prune.entry(k).or_insert(v);
        }
    }
}

impl WriteBehind {
    /// Starts the writer task on `pool`. It runs until [`WriteBehind::close`].
    pub fn start(pool: SqlitePool) -> (Self, JoinHandle<()>) {
        let inner = Arc::new(Inner {
            pool,
            pending: Mutex::default(),
            wake: Notify::new(),
            transactions: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let task = tokio::spawn(writer(Arc::clone(&inner)));
        (Self { inner }, task)
    }

    /// Sets (or with `None` deletes) settings, all in the same transaction, and waits
    /// until they are committed.
    pub async fn put(&self, changes: &[(&str, Option<String>)]) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.pending.lock().await;
            for (key, value) in changes {
                p.settings.insert((*key).to_owned(), value.clone());
            }
            p.waiters.push(tx);
        }
        self.inner.wake.notify_one();
        let what = changes
            .iter()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
            .join(", ");
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("saving {what}: {e}")),
            Err(_) => Err(anyhow::anyhow!(
                "saving {what}: the database writer stopped"
            )),
        }
    }

    /// Sets a setting without waiting for the write.
    #[cfg(test)]
    pub async fn put_later(&self, key: &str, value: Option<String>) {
        self.inner
            .pending
            .lock()
            .await
            .settings
            .insert(key.to_owned(), value);
        self.inner.wake.notify_one();
    }

    /// A value written but maybe not yet committed: `Some(None)` is a pending delete.
    pub async fn pending(&self, key: &str) -> Option<Option<String>> {
        self.inner.pending.lock().await.settings.get(key).cloned()
    }

    /// Queues finished metric buckets.
    pub async fn points(&self, series: &str, res: Resolution, buckets: &[Bucket]) {
        if buckets.is_empty() {
            return;
        }
        let mut p = self.inner.pending.lock().await;
        for b in buckets {
            p.points.insert((series.to_owned(), res, b.start), *b);
        }
        drop(p);
        self.inner.wake.notify_one();
    }

    /// Deletes every row of `series` (a departed peer's), and anything queued for it.
    pub async fn forget(&self, series: &str) {
        let mut p = self.inner.pending.lock().await;
        p.points.retain(|(s, _, _), _| s != series);
        p.forget.insert(series.to_owned());
        drop(p);
        self.inner.wake.notify_one();
    }

    /// Deletes buckets of `res` that started before `before` (past the retention).
    pub async fn prune(&self, res: Resolution, before: u64) {
        self.inner.pending.lock().await.prune.insert(res, before);
        self.inner.wake.notify_one();
    }

    /// Write transactions committed so far.
    pub fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Relaxed)
    }

    /// Write transactions that failed (and were retried).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Waits until everything queued so far is committed.
    #[cfg(test)]
    pub async fn flush(&self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().await.waiters.push(tx);
        self.inner.wake.notify_one();
        match rx.await {
            Ok(r) => r.map_err(|e| anyhow::anyhow!("saving the daemon's state: {e}")),
            Err(_) => Err(anyhow::anyhow!("the database writer stopped")),
        }
    }

    /// Writes what is pending and stops the writer.
    pub async fn close(&self, task: JoinHandle<()>) {
        self.inner.pending.lock().await.stop = true;
        self.inner.wake.notify_one();
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::error!(
                "the database writer did not finish in 5 s; recent changes may be lost"
            );
        }
    }
}

async fn writer(inner: Arc<Inner>) {
    let mut last: Option<tokio::time::Instant> = None;
    let mut backoff = RETRY_MIN;
    loop {
        inner.wake.notified().await;
        // Coalesce: at most one transaction per FLUSH_EVERY.
        if let Some(t) = last {
            tokio::time::sleep_until(t + FLUSH_EVERY).await;
        }
        let (batch, stop) = {
            let mut p = inner.pending.lock().await;
            let stop = p.stop;
            (std::mem::take(&mut *p), stop)
        };
        if batch.is_empty() {
            for w in batch.waiters {
                let _ = w.send(Ok(()));
            }
            if stop {
                return;
            }
            continue;
        }
        last = Some(tokio::time::Instant::now());
        match write(&inner.pool, &batch).await {
            Ok(()) => {
                inner.transactions.fetch_add(1, Ordering::Relaxed);
                backoff = RETRY_MIN;
                for w in batch.waiters {
                    let _ = w.send(Ok(()));
                }
                if stop {
                    // Anything that raced in after `stop` was set is written too.
                    inner.wake.notify_one();
                    let p = inner.pending.lock().await;
                    if p.is_empty() {
                        return;
                    }
                }
            }
            Err(e) => {
                inner.failures.fetch_add(1, Ordering::Relaxed);
                let msg = format!("{e:#}");
                tracing::error!(error = %msg, retry_in_ms = backoff.as_millis() as u64, "cannot save the daemon's state; will retry");
                let mut batch = batch;
                for w in std::mem::take(&mut batch.waiters) {
                    let _ = w.send(Err(msg.clone()));
                }
                inner.pending.lock().await.restore(batch);
                if stop {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
                inner.wake.notify_one();
            }
        }
    }
}

async fn write(pool: &SqlitePool, b: &Pending) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for (key, value) in &b.settings {
        match value {
            Some(v) => {
                sqlx::query(
                    "INSERT INTO settings (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(key)
                .bind(v)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM settings WHERE key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    for series in &b.forget {
        sqlx::query("DELETE FROM metric_points WHERE series = $1")
            .bind(series)
            .execute(&mut *tx)
            .await?;
    }
    for ((series, res, start), p) in &b.points {
        sqlx::query(
            "INSERT INTO metric_points (series, res, start, count, sum, min, max) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (series, res, start) DO UPDATE SET count = excluded.count, \
             sum = excluded.sum, min = excluded.min, max = excluded.max",
        )
        .bind(series)
        .bind(res.as_str())
        .bind(i64::try_from(*start).unwrap_or(i64::MAX))
        .bind(i64::from(p.count))
        .bind(p.sum)
        .bind(p.min)
        .bind(p.max)
        .execute(&mut *tx)
        .await?;
    }
    for (res, before) in &b.prune {
        sqlx::query("DELETE FROM metric_points WHERE res = $1 AND start < $2")
            .bind(res.as_str())
            .bind(i64::try_from(*before).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Reads the persisted buckets of every series, by series and resolution.
pub async fn load_points(
    pool: &SqlitePool,
) -> anyhow::Result<BTreeMap<String, BTreeMap<Resolution, Vec<Bucket>>>> {
    use sqlx::Row as _;
    let rows = sqlx::query(
        "SELECT series, res, start, count, sum, min, max FROM metric_points \
         ORDER BY series, res, start",
    )
    .fetch_all(pool)
    .await?;
    let mut out: BTreeMap<String, BTreeMap<Resolution, Vec<Bucket>>> = BTreeMap::new();
    for row in rows {
        let series: String = row.try_get(0)?;
        let res: String = row.try_get(1)?;
        let Ok(res) = res.parse::<Resolution>() else {
            continue;
        };
        let start: i64 = row.try_get(2)?;
        let count: i64 = row.try_get(3)?;
        out.entry(series)
            .or_default()
            .entry(res)
            .or_default()
            .push(Bucket {
                start: u64::try_from(start).unwrap_or(0),
                count: u32::try_from(count).unwrap_or(u32::MAX),
                sum: row.try_get(4)?,
                min: row.try_get(5)?,
                max: row.try_get(6)?,
            });
    }
    Ok(out)
}
