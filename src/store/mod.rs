//! The verdict store: every verdict is written here before its station gets an answer, so a
//! production line's MES sees each one exactly once, across retries, network drops and restarts.
//!
//! Two durable backends behave the same (one test suite runs against both): [`sqlite`]
//! (embedded, the default) and [`postgres`] (shared by several replicas). Both number verdicts
//! with a cursor that only grows *in commit order*, so a consumer that resumes from its last
//! cursor misses nothing and sees nothing twice (see each backend for how). `--store none`
//! gets [`memory`]: the same behaviour within a bounded ring, kept only while the process runs,
//! so every read path works the same way with or without a database.
//!
//! The backends' concerns are split into traits: [`VerdictStore`] (the request path and
//! readers), [`StoreUpkeep`] (stats and retention), [`ConsumerLedger`] (the MQTT publisher's
//! cursor and lease), [`ReviewStore`] (people's reviews beside the verdicts) and
//! [`StationActivity`] (the operator page's line overview).

pub mod activity;
pub mod dialect;
pub mod follow;
pub mod health;
pub mod memory;
pub mod migrations;
pub mod postgres;
pub mod query;
pub mod record;
pub mod retention;
pub mod reviews;
mod sql;
pub mod sqlite;
pub mod timed;
pub mod upkeep;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use activity::{ActivityCount, StationActivity};
pub use query::{Filters, VerdictQuery};
pub use record::{NewVerdict, StoredVerdict};
pub use retention::{Pruned, RetentionPolicy};
pub use reviews::{Agreement, Outcome, Review, ReviewInserted, ReviewStore};

/// Why the store could not answer; the request path turns it into a 503 (or a 500 for
/// corruption), never into a lost verdict.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the operation.
    #[error("verdict store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back (corrupt JSON, impossible value).
    #[error("verdict store holds an unreadable row: {0}")]
    Corrupt(String),
    /// The database schema is newer than this build, or a migration failed.
    #[error("verdict store schema: {0}")]
    Schema(String),
}

/// What [`VerdictStore::insert`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// The verdict is new and now stored under its cursor.
    New(StoredVerdict),
    /// A verdict with the same (station_id, inspection_id) was already stored; this is it,
    /// unchanged. The caller decides whether that is a retry or a conflict (see
    /// [`StoredVerdict::image_sha256`]).
    Existing(StoredVerdict),
}

/// Rows and bytes held, for the `kensa_store_*` gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Stored verdicts.
    pub rows: u64,
    /// Bytes of stored verdicts (JSON and note) and retained images.
    pub bytes: u64,
    /// Retained images.
    pub images: u64,
    /// Bytes of retained images.
    pub image_bytes: u64,
}

/// Verdicts keyed by (station_id, inspection_id) and numbered by a cursor that grows in commit
/// order: what the request path writes and every reader reads.
#[async_trait::async_trait]
pub trait VerdictStore: Send + Sync {
    /// Stores a verdict, or returns the one already stored under its key; returns only after
    /// the write is committed.
    async fn insert(&self, verdict: NewVerdict) -> Result<Inserted, StoreError>;

    /// The stored verdict of one inspection.
    async fn get(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<StoredVerdict>, StoreError>;

    /// Verdicts after `query.after` in cursor order, filtered, at most `query.limit`.
    async fn list(&self, query: &VerdictQuery) -> Result<Vec<StoredVerdict>, StoreError>;

    /// The retained image of one inspection, when image retention kept it.
    async fn image(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// The highest cursor known to be committed, updated on every write this process makes
    /// (and, for PostgreSQL, on other replicas' writes); a wake-up for waiting readers.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Checks that the store answers; backends whose commits can stall while reads still
    /// answer (PostgreSQL's cursor lock) check the commit path instead of a read.
    async fn probe(&self) -> Result<(), StoreError> {
        let query = VerdictQuery {
            after: *self.subscribe().borrow(),
            limit: 1,
            ..VerdictQuery::default()
        };
        self.list(&query).await.map(drop)
    }
}

/// The store's housekeeping: what it holds, and deleting what retention no longer keeps.
#[async_trait::async_trait]
pub trait StoreUpkeep: Send + Sync {
    /// Rows and bytes held.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Deletes what the policy no longer keeps; `now_ms` is the Unix time in milliseconds.
    async fn prune(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<Pruned, StoreError>;
}

/// Durable positions of internal consumers that read the store as an outbox (the MQTT
/// publisher), with a lease so one replica at a time runs each.
#[async_trait::async_trait]
pub trait ConsumerLedger: Send + Sync {
    /// The saved position of a named consumer; 0 if none.
    async fn consumer_cursor(&self, name: &str) -> Result<u64, StoreError>;

    /// Saves the position of a named consumer.
    async fn save_consumer_cursor(&self, name: &str, cursor: u64) -> Result<(), StoreError>;

    /// Takes or renews the lease of a named consumer for `holder`; true when `holder` holds it
    /// until `now_ms + ttl`.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
}

/// A shared handle to the verdicts of whichever backend is configured.
pub type SharedStore = Arc<dyn VerdictStore>;

/// An open store, seen through each of its concerns.
#[derive(Clone)]
pub struct Store {
    /// Verdict reads and writes.
    pub verdicts: SharedStore,
    /// Stats and retention.
    pub upkeep: Arc<dyn StoreUpkeep>,
    /// Consumer cursors and leases; None for the in-memory store, which cannot promise an
    /// outbox anything across a restart.
    pub consumers: Option<Arc<dyn ConsumerLedger>>,
    /// Reviews of stored verdicts.
    pub reviews: Arc<dyn ReviewStore>,
    /// Station activity for the line overview.
    pub activity: Arc<dyn StationActivity>,
}

impl Store {
    fn durable<B>(backend: B) -> Store
    where
        B: VerdictStore + StoreUpkeep + ConsumerLedger + ReviewStore + StationActivity + 'static,
    {
        let backend = Arc::new(backend);
        Store {
            verdicts: backend.clone(),
            upkeep: backend.clone(),
            reviews: backend.clone(),
            activity: backend.clone(),
            consumers: Some(backend),
        }
    }
}

/// Where the store lives, parsed from `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite file (WAL mode).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection URL (`postgres://user@host/db?options=-csearch_path%3Dkensa`).
    Postgres(String),
    /// No database (`--store none`): the newest verdicts in a bounded ring in memory, gone at
    /// exit.
    Memory {
        /// Verdicts kept (the newest).
        rows: usize,
        /// Bytes of retained images kept (the newest).
        image_bytes: u64,
    },
}

impl StoreLocation {
    /// `sqlite` (a file under `data_dir`), `sqlite:PATH`, or `postgres://...`/`postgresql://...`.
    /// (`none` is decided by the caller, which knows the memory store's bounds.)
    pub fn parse(value: &str, data_dir: &Path) -> Result<StoreLocation, String> {
        if value == "sqlite" {
            return Ok(StoreLocation::Sqlite(data_dir.join("verdicts.sqlite")));
        }
        if let Some(path) = value.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err(
                    "sqlite: needs a file path (sqlite:/var/lib/kensa/verdicts.sqlite)".into(),
                );
            }
            return Ok(StoreLocation::Sqlite(path.into()));
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            postgres::tls_settings(value)
                .0
                .parse::<tokio_postgres::Config>()
                .map_err(|e| format!("--store: bad PostgreSQL URL: {e}"))?;
            return Ok(StoreLocation::Postgres(value.to_string()));
        }
        Err(format!(
            "store must be sqlite, sqlite:PATH, a postgres:// URL or none, not {value:?}"
        ))
    }

    /// Whether verdicts survive a restart.
    pub fn is_durable(&self) -> bool {
        !matches!(self, StoreLocation::Memory { .. })
    }
}

/// Names the store in logs, built from the parsed configuration so no password shows,
/// whichever form it took in the URL (`user:pw@`, `?password=`).
impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreLocation::Memory { rows, .. } => {
                write!(f, "memory (the newest {rows} verdicts, not durable)")
            }
            StoreLocation::Postgres(url) => match postgres::tls_settings(url)
                .0
                .parse::<tokio_postgres::Config>()
            {
                Ok(config) => f.write_str(&postgres_display(&config)),
                Err(_) => f.write_str("postgres://(unparsable URL)"),
            },
        }
    }
}

/// `postgres://user@host:port,host:port/dbname`, with no password and no other options.
fn postgres_display(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let database = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{database}", hosts.join(","))
}

/// How a store is opened beyond its location.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The PostgreSQL password, kept out of the URL (from a file or the environment).
    pub password: Option<String>,
}

/// Opens the store and runs its pending migrations.
pub async fn open(location: &StoreLocation, options: &OpenOptions) -> Result<Store, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Store::durable(sqlite::SqliteStore::open(path).await?),
        StoreLocation::Postgres(url) => Store::durable(
            postgres::PostgresStore::connect(url, options.password.as_deref()).await?,
        ),
        StoreLocation::Memory { rows, image_bytes } => {
            let memory = Arc::new(memory::MemoryStore::new(*rows, *image_bytes));
            Store {
                verdicts: memory.clone(),
                upkeep: memory.clone(),
                reviews: memory.clone(),
                activity: memory,
                consumers: None,
            }
        }
    })
}

/// Raises the known committed cursor to `seq` (never lowers it) and wakes readers when it moved.
pub(crate) fn advance(cursor: &watch::Sender<u64>, seq: u64) {
    cursor.send_if_modified(|known| {
        let newer = seq > *known;
        if newer {
            *known = seq;
        }
        newer
    });
}

/// Cursors, sizes and versions are u64 in Rust and signed 64-bit in SQL.
pub(crate) fn to_sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_parse() {
        let data = Path::new("/srv/kensa");
        assert_eq!(
            StoreLocation::parse("sqlite", data).unwrap(),
            StoreLocation::Sqlite("/srv/kensa/verdicts.sqlite".into())
        );
        assert_eq!(
            StoreLocation::parse("sqlite:///tmp/v.db", data).unwrap(),
            StoreLocation::Sqlite("/tmp/v.db".into())
        );
        assert_eq!(
            StoreLocation::parse("postgres://u@h/db", data).unwrap(),
            StoreLocation::Postgres("postgres://u@h/db".into())
        );
        assert!(StoreLocation::parse("mysql://x", data).is_err());
        for secret in [
            "postgres://kensa:hunter2@db/test",
            "postgres://kensa@db/test?password=hunter2",
            "postgresql://kensa:hunter2@db:5433/test?password=hunter2&sslmode=disable",
        ] {
            let shown = StoreLocation::parse(secret, data).unwrap().to_string();
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.starts_with("postgres://kensa@db:"), "{shown}");
        }
        assert!(StoreLocation::parse("sqlite:", data).is_err());
    }
}
