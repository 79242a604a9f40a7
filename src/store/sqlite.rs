//! The embedded backend: one SQLite file in WAL mode.
//!
//! Threading: SQLite calls never run on the async runtime. Every write goes to one dedicated
//! writer thread that owns the only writing connection; it takes whatever jobs are waiting (up
//! to `GROUP`) and commits them in one transaction, so a burst costs one fsync, not one per
//! verdict (group commit). Each job runs in its own savepoint, so one failing job fails alone.
//! Reads run on the blocking pool with a small set of read-only connections; WAL lets them read
//! while the writer writes.
//!
//! Cursor: SQLite admits one writer at a time and `seq` is `AUTOINCREMENT`, so cursors are
//! assigned in commit order and never reused; a reader that saw cursor N has seen every
//! committed cursor below N.

mod activity;
mod reviews;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use tokio::sync::{mpsc, oneshot, watch};

use super::dialect::Dialect;
use super::migrations::{self, CREATE_TABLE};
use super::query::Param;
use super::record::{RawRow, decode, now_ms};
use super::retention::{Pruned, RetentionPolicy};
use super::sql::{self, for_sqlite};
use super::{
    ConsumerLedger, Inserted, NewVerdict, StoreError, StoreStats, StoreUpkeep, StoredVerdict,
    VerdictQuery, VerdictStore, advance, to_sql_int as to_i64,
};

/// Most jobs committed in one transaction.
const GROUP: usize = 256;
/// Jobs that may wait for the writer before callers wait to hand theirs over.
const QUEUE: usize = 4096;
/// Read connections kept open between reads.
const IDLE_READERS: usize = 4;
/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Called after the group's commit with its outcome; answers the job's caller.
type Deliver = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// One write: runs inside the group's transaction (or learns why there is none).
type Job = Box<dyn FnOnce(Result<&Connection, &StoreError>) -> Deliver + Send>;

/// The SQLite verdict store.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<Readers>,
    cursor: watch::Receiver<u64>,
}

impl SqliteStore {
    /// Opens (creating if needed) the file, migrates it and starts the writer thread.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        let opened = path.clone();
        let (conn, last) = tokio::task::spawn_blocking(move || open_writer(&opened))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening SQLite failed: {e}")))??;
        let (jobs, receiver) = mpsc::channel(QUEUE);
        let (cursor_tx, cursor) = watch::channel(last);
        std::thread::Builder::new()
            .name("kensa-sqlite-writer".into())
            .spawn(move || write_loop(conn, receiver, cursor_tx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(SqliteStore {
            jobs,
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            cursor,
        })
    }

    /// Runs `work` on the writer thread inside the next group commit; answers after the commit.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => in_savepoint(conn, work),
                Err(error) => Err(error.clone()),
            };
            Box::new(move |committed: Result<(), StoreError>| {
                // The caller may have gone; the write stands either way.
                let _ = answer.send(committed.and(result));
            })
        });
        self.jobs.send(job).await.map_err(|_| writer_gone())?;
        answered.await.map_err(|_| writer_gone())?
    }

    /// Runs `work` on the blocking pool with a read connection.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = work(&conn);
            readers.put(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("SQLite read task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl VerdictStore for SqliteStore {
    async fn insert(&self, verdict: NewVerdict) -> Result<Inserted, StoreError> {
        let json = verdict
            .verdict_json()
            .map_err(|e| StoreError::Corrupt(format!("verdict does not serialize: {e}")))?;
        self.write(move |conn| insert(conn, &verdict, json)).await
    }

    async fn get(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<StoredVerdict>, StoreError> {
        let key = (station_id.to_string(), inspection_id.to_string());
        self.read(move |conn| by_key(conn, &key.0, &key.1)).await
    }

    async fn list(&self, query: &VerdictQuery) -> Result<Vec<StoredVerdict>, StoreError> {
        let (text, params) = query.to_sql(Dialect::Sqlite);
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&text).map_err(unavailable)?;
            let rows = statement
                .query_map(params_from_iter(params), raw_row)
                .map_err(unavailable)?;
            rows.map(|row| row.map_err(unavailable).and_then(decode))
                .collect()
        })
        .await
    }

    async fn image(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = (station_id.to_string(), inspection_id.to_string());
        self.read(move |conn| {
            conn.query_row(
                &for_sqlite(sql::SELECT_IMAGE),
                params![key.0, key.1],
                |row| row.get(0),
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.cursor.clone()
    }
}

#[async_trait::async_trait]
impl StoreUpkeep for SqliteStore {
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(|conn| {
            let pair = |text: &str| {
                conn.query_row(text, [], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(unavailable)
            };
            let (rows, bytes) = pair(sql::VERDICT_STATS)?;
            let (images, image_bytes) = pair(sql::IMAGE_STATS)?;
            Ok(StoreStats {
                rows: rows.unsigned_abs(),
                bytes: (bytes + image_bytes).unsigned_abs(),
                images: images.unsigned_abs(),
                image_bytes: image_bytes.unsigned_abs(),
            })
        })
        .await
    }

    async fn prune(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<Pruned, StoreError> {
        let policy = *policy;
        self.write(move |conn| prune(conn, &policy, now_ms)).await
    }
}

#[async_trait::async_trait]
impl ConsumerLedger for SqliteStore {
    async fn consumer_cursor(&self, name: &str) -> Result<u64, StoreError> {
        let name = name.to_string();
        self.read(move |conn| {
            let cursor: Option<i64> = conn
                .query_row(
                    &for_sqlite(sql::SELECT_CONSUMER_CURSOR),
                    params![name],
                    |row| row.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            Ok(cursor.unwrap_or(0).unsigned_abs())
        })
        .await
    }

    async fn save_consumer_cursor(&self, name: &str, cursor: u64) -> Result<(), StoreError> {
        let name = name.to_string();
        let cursor = to_i64(cursor);
        self.write(move |conn| {
            conn.execute(
                &for_sqlite(sql::SAVE_CONSUMER_CURSOR),
                params![name, cursor],
            )
            .map(drop)
            .map_err(unavailable)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        let until = now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        self.write(move |conn| {
            conn.execute(
                &for_sqlite(sql::ACQUIRE_LEASE),
                params![name, holder, until, now_ms],
            )
            .map(|changed| changed == 1)
            .map_err(unavailable)
        })
        .await
    }
}

/// Opens the writing connection, sets WAL and durable commits, applies migrations; returns it
/// with the highest cursor stored.
fn open_writer(path: &Path) -> Result<(Connection, u64), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    let mut conn = Connection::open(path).map_err(|e| {
        StoreError::Unavailable(format!("cannot open SQLite file {}: {e}", path.display()))
    })?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(unavailable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "{} cannot use WAL mode (got {mode})",
            path.display()
        )));
    }
    // FULL: a commit survives power loss, not only a crash; group commit pays for it.
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(unavailable)?;
    migrate(&mut conn)?;
    let last: i64 = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM verdicts", [], |row| {
            row.get(0)
        })
        .map_err(unavailable)?;
    Ok((conn, last.unsigned_abs()))
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let schema = |e: rusqlite::Error| StoreError::Schema(e.to_string());
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(schema)?;
    tx.execute_batch(CREATE_TABLE).map_err(schema)?;
    let applied = {
        let mut statement = tx
            .prepare("SELECT version FROM schema_migrations")
            .map_err(schema)?;
        let versions = statement
            .query_map([], |row| row.get::<_, i64>(0))
            .map_err(schema)?;
        versions.collect::<Result<Vec<i64>, _>>().map_err(schema)?
    };
    for migration in migrations::pending(migrations::SQLITE, &applied)? {
        tx.execute_batch(migration.sql).map_err(|e| {
            StoreError::Schema(format!("migration {} failed: {e}", migration.version))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?1, ?2, ?3)",
            params![migration.version, migration.name, now_ms()],
        )
        .map_err(schema)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "SQLite store migrated"
        );
    }
    tx.commit().map_err(schema)
}

/// The writer thread: group commit until every sender is gone.
fn write_loop(conn: Connection, mut jobs: mpsc::Receiver<Job>, cursor: watch::Sender<u64>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let begun = conn.execute_batch("BEGIN IMMEDIATE").map_err(unavailable);
        let deliveries: Vec<Deliver> = group
            .into_iter()
            .map(|job| job(begun.as_ref().map(|()| &conn)))
            .collect();
        let committed = begun.and_then(|()| conn.execute_batch("COMMIT").map_err(unavailable));
        if let Err(error) = &committed {
            tracing::error!(%error, "SQLite commit failed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        } else if let Ok(last) =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM verdicts", [], |row| {
                row.get::<_, i64>(0)
            })
        {
            advance(&cursor, last.unsigned_abs());
        }
        for deliver in deliveries {
            deliver(committed.clone());
        }
    }
}

/// Runs one job in a savepoint so its failure undoes only its own writes.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT job").map_err(unavailable)?;
    let result = work(conn);
    let end = if result.is_ok() {
        "RELEASE job"
    } else {
        "ROLLBACK TO job; RELEASE job"
    };
    conn.execute_batch(end).map_err(unavailable)?;
    result
}

fn insert(conn: &Connection, verdict: &NewVerdict, json: String) -> Result<Inserted, StoreError> {
    let v = &verdict.verdict;
    let stored_at_ms = now_ms();
    let seq: Option<i64> = conn
        .prepare_cached(&sql::insert_verdict(Dialect::Sqlite, false))
        .and_then(|mut statement| {
            statement
                .query_row(
                    params_from_iter(sql::insert_params(verdict, &json, stored_at_ms)),
                    |row| row.get(0),
                )
                .optional()
        })
        .map_err(unavailable)?;
    let Some(seq) = seq else {
        let existing = by_key(conn, &v.station_id, &v.inspection_id)?;
        return existing.map(Inserted::Existing).ok_or_else(|| {
            StoreError::Corrupt("a conflicting verdict vanished during insert".into())
        });
    };
    if let Some(image) = &verdict.image {
        conn.execute(
            &for_sqlite(sql::INSERT_IMAGE),
            params![seq, image.as_ref(), to_i64(image.len() as u64)],
        )
        .map_err(unavailable)?;
    }
    Ok(Inserted::New(
        verdict.stored(seq.unsigned_abs(), stored_at_ms),
    ))
}

fn prune(conn: &Connection, policy: &RetentionPolicy, now_ms: i64) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    if let Some(cutoff) = policy.cutoff_ms(now_ms) {
        pruned.verdicts += run(conn, sql::PRUNE_BY_AGE, cutoff)?;
    }
    if let Some(rows) = policy.max_rows {
        pruned.verdicts += run(conn, sql::PRUNE_BY_ROWS, to_i64(rows))?;
    }
    conn.execute(sql::PRUNE_ORPHAN_IMAGES, [])
        .map_err(unavailable)?;
    conn.execute(super::reviews::PRUNE_ORPHANS, [])
        .map_err(unavailable)?;
    if let Some(bytes) = policy.max_image_bytes {
        pruned.images += run(conn, sql::PRUNE_IMAGES_BY_BYTES, to_i64(bytes))?;
    }
    Ok(pruned)
}

fn run(conn: &Connection, text: &str, value: i64) -> Result<u64, StoreError> {
    conn.execute(&for_sqlite(text), params![value])
        .map(|n| n as u64)
        .map_err(unavailable)
}

fn by_key(
    conn: &Connection,
    station_id: &str,
    inspection_id: &str,
) -> Result<Option<StoredVerdict>, StoreError> {
    conn.prepare_cached(&for_sqlite(&sql::select_by_key()))
        .and_then(|mut statement| {
            statement
                .query_row(params![station_id, inspection_id], raw_row)
                .optional()
        })
        .map_err(unavailable)?
        .map(decode)
        .transpose()
}

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
    ))
}

/// Read connections, opened on demand and kept for reuse.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.lock().pop() {
            return Ok(conn);
        }
        let conn = Connection::open(&self.path).map_err(unavailable)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        conn.execute_batch("PRAGMA query_only = ON")
            .map_err(unavailable)?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.lock();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("SQLite: {error}"))
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the SQLite writer thread stopped".into())
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Param::Int(i) => i.to_sql(),
            Param::Float(f) => f.to_sql(),
            Param::Bool(b) => b.to_sql(),
            Param::Text(text) => text.as_ref().to_sql(),
            Param::MaybeText(text) => text.to_sql(),
        }
    }
}
