//! The durable verdict store: every verdict is written here before its station gets an answer, so
//! a production line's MES sees each one exactly once, across retries, network drops and restarts.
//!
//! Two backends behave the same (one test suite runs against both): [`sqlite`] (embedded, the
//! default) and [`postgres`] (shared by several replicas). Both number verdicts with a cursor
//! that only grows *in commit order*, so a consumer that resumes from its last cursor misses
//! nothing and sees nothing twice (see each backend for how).

pub mod follow;
pub mod migrations;
pub mod postgres;
pub mod query;
pub mod record;
pub mod retention;
mod sql;
pub mod sqlite;
pub mod upkeep;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use query::VerdictQuery;
pub use record::{NewVerdict, StoredVerdict};
pub use retention::{Pruned, RetentionPolicy};

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

impl Inserted {
    /// The stored verdict, whichever way it got there.
    pub fn into_stored(self) -> StoredVerdict {
        match self {
            Inserted::New(stored) | Inserted::Existing(stored) => stored,
        }
    }
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

/// A durable, cursor-ordered store of verdicts keyed by (station_id, inspection_id).
#[async_trait::async_trait]
pub trait VerdictStore: Send + Sync {
    /// Stores a verdict durably, or returns the one already stored under its key; returns only
    /// after the write is committed.
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

    /// Rows and bytes held.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Deletes what the policy no longer keeps; `now_ms` is the Unix time in milliseconds.
    async fn prune(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<Pruned, StoreError>;

    /// The saved position of a named internal consumer (the MQTT publisher); 0 if none.
    async fn consumer_cursor(&self, name: &str) -> Result<u64, StoreError>;

    /// Saves the position of a named internal consumer.
    async fn save_consumer_cursor(&self, name: &str, cursor: u64) -> Result<(), StoreError>;

    /// Takes or renews the lease of a named consumer for `holder`, so only one replica runs
    /// it at a time; true when `holder` holds it until `now_ms + ttl`.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// The highest cursor known to be committed, updated on every write this process makes
    /// (and, for PostgreSQL, on other replicas' writes); a wake-up for waiting consumers.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

/// A shared handle to whichever backend is configured.
pub type SharedStore = Arc<dyn VerdictStore>;

/// Where the store lives, parsed from `--store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite file (WAL mode).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection URL (`postgres://user@host/db?options=-csearch_path%3Dkensa`).
    Postgres(String),
}

impl StoreLocation {
    /// `sqlite` (a file under `data_dir`), `sqlite:PATH`, or `postgres://...`/`postgresql://...`.
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
            return Ok(StoreLocation::Postgres(value.to_string()));
        }
        Err(format!(
            "store must be sqlite, sqlite:PATH or a postgres:// URL, not {value:?}"
        ))
    }
}

/// Names the store in logs without its password.
impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreLocation::Postgres(url) => {
                let masked = match (url.find("://"), url.rfind('@')) {
                    (Some(scheme), Some(at)) if scheme + 3 < at => {
                        let user_info = &url[scheme + 3..at];
                        match user_info.split_once(':') {
                            Some((user, _)) => {
                                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
                            }
                            None => url.clone(),
                        }
                    }
                    _ => url.clone(),
                };
                f.write_str(&masked)
            }
        }
    }
}

/// Opens the store and runs its pending migrations.
pub async fn open(location: &StoreLocation) -> Result<SharedStore, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path).await?),
        StoreLocation::Postgres(url) => Arc::new(postgres::PostgresStore::connect(url).await?),
    })
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
        let secret = StoreLocation::Postgres("postgres://kensa:hunter2@db/test".into());
        assert_eq!(secret.to_string(), "postgres://kensa:***@db/test");
        assert!(StoreLocation::parse("sqlite:", data).is_err());
    }
}
