//! Shared helpers for the verdict store tests: verdicts to store, and a fresh store of each
//! backend (SQLite in a temporary folder; PostgreSQL in a schema of its own on the real server
//! at `KENSA_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`, dropped after).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use kensa::store::{
    self, ConsumerLedger, NewVerdict, ReviewStore, SharedStore, StationActivity, Store,
    StoreLocation, StoreUpkeep,
};
use kensa::verdict::{AttentionMap, Timings, Verdict};

/// The PostgreSQL server the tests use.
pub fn postgres_url() -> String {
    std::env::var("KENSA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A verdict as the inspector would produce it.
pub fn verdict(station: &str, inspection: &str, label: &str, metadata: &[(&str, &str)]) -> Verdict {
    let is_defect = label != "normal";
    Verdict {
        inspection_id: inspection.into(),
        station_id: station.into(),
        model: "kensa-demo".into(),
        model_version: 1,
        label: label.into(),
        display_label: label.to_uppercase(),
        is_defect,
        confidence: 0.9,
        probabilities: BTreeMap::from([(label.to_string(), 0.9), ("other".into(), 0.1)]),
        attention: AttentionMap {
            width: 2,
            height: 1,
            values: vec![0.25, 0.75],
        },
        timings: Timings::default(),
        batch_size: 1,
        received_at: Utc::now(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        disposition: None,
        decision: None,
        ocr: None,
        model_note: None,
    }
}

/// A record to insert: a verdict for `image`, the image kept when `retain`.
pub fn record(verdict: &Verdict, image: &[u8], retain: bool) -> NewVerdict {
    NewVerdict {
        verdict: verdict.clone(),
        note: "dia 59.1um".into(),
        image_sha256: store::record::sha256_hex(image),
        image: retain.then(|| Bytes::copy_from_slice(image)),
    }
}

/// The simplest record: a normal verdict of one station.
pub fn simple(station: &str, inspection: &str) -> NewVerdict {
    record(
        &verdict(station, inspection, "normal", &[]),
        inspection.as_bytes(),
        false,
    )
}

/// A store of one backend, removed when dropped.
pub struct Fixture {
    /// Verdict reads and writes.
    pub store: SharedStore,
    /// Stats and retention.
    pub upkeep: Arc<dyn StoreUpkeep>,
    /// Consumer cursors and leases (the durable backends only).
    pub ledger: Option<Arc<dyn ConsumerLedger>>,
    /// Reviews beside the verdicts.
    pub reviews: Arc<dyn ReviewStore>,
    /// Station activity for the line overview.
    pub activity: Arc<dyn StationActivity>,
    pub location: StoreLocation,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl Fixture {
    fn new(
        opened: Store,
        location: StoreLocation,
        dir: Option<tempfile::TempDir>,
        schema: Option<String>,
    ) -> Fixture {
        Fixture {
            store: opened.verdicts,
            upkeep: opened.upkeep,
            ledger: opened.consumers,
            reviews: opened.reviews,
            activity: opened.activity,
            location,
            _dir: dir,
            schema,
        }
    }

    /// Opens another handle on the same database (a restart, or a second replica).
    pub async fn reopen(&self) -> SharedStore {
        store::open(&self.location, &Default::default())
            .await
            .expect("store reopens")
            .verdicts
    }

    /// The consumer ledger of a durable backend.
    pub fn ledger(&self) -> &Arc<dyn ConsumerLedger> {
        self.ledger
            .as_ref()
            .expect("a durable backend has a ledger")
    }
}

/// A fresh SQLite store.
pub async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let location = StoreLocation::Sqlite(dir.path().join("verdicts.sqlite"));
    let opened = store::open(&location, &Default::default())
        .await
        .expect("SQLite store opens");
    Fixture::new(opened, location, Some(dir), None)
}

/// A fresh in-memory store (`--store none`), large enough never to evict in a test.
pub async fn memory() -> Fixture {
    let location = StoreLocation::Memory {
        rows: 10_000,
        image_bytes: 1 << 30,
    };
    let opened = store::open(&location, &Default::default())
        .await
        .expect("memory store opens");
    Fixture::new(opened, location, None, None)
}

/// A fresh PostgreSQL store in a schema of its own.
pub async fn postgres() -> Fixture {
    let schema = format!("kensa_test_{}", uuid::Uuid::new_v4().simple());
    admin(&format!("CREATE SCHEMA {schema}")).await;
    let base = postgres_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    let location =
        StoreLocation::Postgres(format!("{base}{separator}options=-csearch_path%3D{schema}"));
    let opened = store::open(&location, &Default::default())
        .await
        .expect("PostgreSQL store opens");
    Fixture::new(opened, location, None, Some(schema))
}

async fn admin(statement: &str) {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at KENSA_TEST_POSTGRES (default 127.0.0.1:5432, database test)");
    let driver = tokio::spawn(connection);
    client.batch_execute(statement).await.expect(statement);
    drop(client);
    let _ = driver.await;
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let Some(schema) = self.schema.take() else {
            return;
        };
        // Runs on its own thread and runtime: Drop cannot await, and the test's runtime may
        // be the one being torn down.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(admin(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")));
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("could not drop the test schema");
        }
    }
}
