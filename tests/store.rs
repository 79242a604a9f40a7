//! One test suite for the verdict store, run against every backend: SQLite in a temporary file,
//! the real PostgreSQL server (each test in a schema of its own), and the in-memory ring of
//! `--store none` (the cases that do not need durability).

mod store_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kensa::store::follow::{follow, wait_for};
use kensa::store::{
    Filters, Inserted, Pruned, RetentionPolicy, SharedStore, StoreError, StoredVerdict,
    VerdictQuery,
};
use store_support::{Fixture, record, simple, verdict};

/// Generates one `#[tokio::test]` per case for a backend.
macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::store_support::$backend().await;
                    super::$case(&fixture).await;
                }
            )*
        }
    };
}

suite!(sqlite:
    a_verdict_round_trips_with_its_metadata,
    a_second_insert_of_a_key_returns_the_first,
    concurrent_inserts_of_one_key_store_exactly_one,
    a_resuming_reader_misses_nothing_and_sees_nothing_twice,
    filters_select_station_line_lot_label_and_defects,
    images_are_kept_only_when_asked,
    retention_deletes_by_age_rows_and_image_bytes,
    a_lease_has_one_holder_until_it_expires,
    reopening_keeps_verdicts_and_continues_cursors,
    long_poll_wakes_on_a_commit_and_times_out_empty,
    follow_streams_what_is_stored_then_what_comes,
);

suite!(memory:
    a_verdict_round_trips_with_its_metadata,
    a_second_insert_of_a_key_returns_the_first,
    concurrent_inserts_of_one_key_store_exactly_one,
    a_resuming_reader_misses_nothing_and_sees_nothing_twice,
    filters_select_station_line_lot_label_and_defects,
    images_are_kept_only_when_asked,
    retention_deletes_by_age_rows_and_image_bytes,
    long_poll_wakes_on_a_commit_and_times_out_empty,
    follow_streams_what_is_stored_then_what_comes,
);

suite!(postgres:
    a_verdict_round_trips_with_its_metadata,
    a_second_insert_of_a_key_returns_the_first,
    concurrent_inserts_of_one_key_store_exactly_one,
    a_resuming_reader_misses_nothing_and_sees_nothing_twice,
    filters_select_station_line_lot_label_and_defects,
    images_are_kept_only_when_asked,
    retention_deletes_by_age_rows_and_image_bytes,
    a_lease_has_one_holder_until_it_expires,
    reopening_keeps_verdicts_and_continues_cursors,
    long_poll_wakes_on_a_commit_and_times_out_empty,
    follow_streams_what_is_stored_then_what_comes,
    another_replica_shares_keys_and_wakes_on_commits,
);

/// The stored verdict, whichever way it got there.
fn stored(inserted: Inserted) -> StoredVerdict {
    match inserted {
        Inserted::New(stored) | Inserted::Existing(stored) => stored,
    }
}

fn after(cursor: u64) -> VerdictQuery {
    VerdictQuery {
        after: cursor,
        limit: 1000,
        ..VerdictQuery::default()
    }
}

async fn a_verdict_round_trips_with_its_metadata(fx: &Fixture) {
    let metadata = [
        ("line", "L3"),
        ("lot_id", "LOT42"),
        ("strip_id", "S3"),
        ("unit_position", "U17"),
        ("recipe", "bga-v2"),
    ];
    let v = verdict("aoi-07", "LOT42-S3-U17", "void", &metadata);
    let new = record(&v, b"image bytes", false);
    let Inserted::New(stored) = fx.store.insert(new.clone()).await.unwrap() else {
        panic!("first insert is new");
    };
    assert!(stored.cursor > 0);
    assert_eq!(stored.verdict, v);
    assert_eq!(stored.note, "dia 59.1um");
    assert_eq!(
        stored.image_sha256,
        kensa::store::record::sha256_hex(b"image bytes")
    );
    assert!(!stored.image_retained);
    let got = fx.store.get("aoi-07", "LOT42-S3-U17").await.unwrap();
    assert_eq!(got.as_ref(), Some(&stored));
    assert_eq!(fx.store.get("aoi-07", "other").await.unwrap(), None);
    let listed = fx.store.list(&after(0)).await.unwrap();
    assert_eq!(listed, vec![stored.clone()]);
    let json = serde_json::to_value(&stored).unwrap();
    assert_eq!(json["cursor"], stored.cursor);
    assert_eq!(json["label"], "void");
    assert_eq!(json["metadata"]["lot_id"], "LOT42");
    let stats = fx.upkeep.stats().await.unwrap();
    assert_eq!(stats.rows, 1);
    assert!(stats.bytes > 100, "{stats:?}");
}

async fn a_second_insert_of_a_key_returns_the_first(fx: &Fixture) {
    let first = fx.store.insert(simple("aoi-07", "u1")).await.unwrap();
    let Inserted::New(first) = first else {
        panic!("first insert is new");
    };
    let mut other = verdict("aoi-07", "u1", "crack", &[]);
    other.confidence = 0.5;
    let second = fx
        .store
        .insert(record(&other, b"another image", false))
        .await
        .unwrap();
    assert_eq!(second, Inserted::Existing(first.clone()));
    assert_eq!(fx.upkeep.stats().await.unwrap().rows, 1);
    let third = fx.store.insert(simple("aoi-08", "u1")).await.unwrap();
    assert!(matches!(third, Inserted::New(ref v) if v.cursor > first.cursor));
}

async fn concurrent_inserts_of_one_key_store_exactly_one(fx: &Fixture) {
    let labels = ["void", "crack", "normal", "bridge"];
    let results = futures::future::join_all((0..16).map(|i| {
        let store = Arc::clone(&fx.store);
        let v = verdict("aoi-07", "same", labels[i % labels.len()], &[]);
        tokio::spawn(async move { store.insert(record(&v, b"img", false)).await.unwrap() })
    }))
    .await;
    let results: Vec<Inserted> = results.into_iter().map(Result::unwrap).collect();
    let new = results
        .iter()
        .filter(|r| matches!(r, Inserted::New(_)))
        .count();
    assert_eq!(new, 1, "{results:?}");
    let winner = stored(results[0].clone());
    for result in results {
        assert_eq!(stored(result), winner);
    }
    assert_eq!(fx.upkeep.stats().await.unwrap().rows, 1);
}

/// Writers commit concurrently while a reader pages through with small pages, resuming each
/// time from the last cursor it saw: it must get every verdict exactly once, in cursor order.
async fn a_resuming_reader_misses_nothing_and_sees_nothing_twice(fx: &Fixture) {
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&fx.store);
            tokio::spawn(async move {
                for i in 0..EACH {
                    store
                        .insert(simple(&format!("st-{w}"), &format!("u-{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor = 0;
    let started = Instant::now();
    while seen.len() < WRITERS * EACH {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "reader stalled"
        );
        let page = fx
            .store
            .list(&VerdictQuery {
                after: cursor,
                limit: 7,
                ..VerdictQuery::default()
            })
            .await
            .unwrap();
        for stored in &page {
            assert!(stored.cursor > cursor, "cursors only grow");
            cursor = stored.cursor;
            seen.push((
                stored.verdict.station_id.clone(),
                stored.verdict.inspection_id.clone(),
            ));
        }
        if page.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(fx.store.list(&after(cursor)).await.unwrap().is_empty());
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a verdict was seen twice");
    assert_eq!(seen.len(), WRITERS * EACH);
}

async fn filters_select_station_line_lot_label_and_defects(fx: &Fixture) {
    let rows = [
        ("aoi-1", "a", "void", "L1", "LOT1"),
        ("aoi-1", "b", "normal", "L1", "LOT1"),
        ("aoi-2", "c", "crack", "L2", "LOT1"),
        ("aoi-2", "d", "normal", "L2", "LOT2"),
        ("aoi-3", "e", "void", "L2", "LOT2"),
    ];
    for (station, id, label, line, lot) in rows {
        let v = verdict(station, id, label, &[("line", line), ("lot_id", lot)]);
        fx.store
            .insert(record(&v, id.as_bytes(), false))
            .await
            .unwrap();
    }
    let ids = |query: VerdictQuery| {
        let store = Arc::clone(&fx.store);
        async move {
            store
                .list(&query)
                .await
                .unwrap()
                .into_iter()
                .map(|v| v.verdict.inspection_id)
                .collect::<Vec<_>>()
        }
    };
    let base = after(0);
    let q = |f: fn(&mut Filters)| {
        let mut query = base.clone();
        f(&mut query.filters);
        query
    };
    assert_eq!(
        ids(q(|q| q.station = Some("aoi-2".into()))).await,
        ["c", "d"]
    );
    assert_eq!(
        ids(q(|q| q.line = Some("L2".into()))).await,
        ["c", "d", "e"]
    );
    assert_eq!(
        ids(q(|q| q.lot = Some("LOT1".into()))).await,
        ["a", "b", "c"]
    );
    assert_eq!(ids(q(|q| q.label = Some("void".into()))).await, ["a", "e"]);
    assert_eq!(ids(q(|q| q.defect_only = true)).await, ["a", "c", "e"]);
    assert_eq!(
        ids(q(|q| {
            q.line = Some("L2".into());
            q.defect_only = true;
        }))
        .await,
        ["c", "e"]
    );
    let two = VerdictQuery {
        limit: 2,
        ..base.clone()
    };
    assert_eq!(ids(two).await, ["a", "b"]);
}

async fn images_are_kept_only_when_asked(fx: &Fixture) {
    let kept = verdict("aoi-7", "kept", "void", &[]);
    let not = verdict("aoi-7", "not", "void", &[]);
    let stored = stored(
        fx.store
            .insert(record(&kept, b"png bytes", true))
            .await
            .unwrap(),
    );
    assert!(stored.image_retained);
    fx.store
        .insert(record(&not, b"other", false))
        .await
        .unwrap();
    assert_eq!(
        fx.store.image("aoi-7", "kept").await.unwrap(),
        Some(b"png bytes".to_vec())
    );
    assert_eq!(fx.store.image("aoi-7", "not").await.unwrap(), None);
    let listed = fx.store.list(&after(0)).await.unwrap();
    assert_eq!(
        listed.iter().map(|v| v.image_retained).collect::<Vec<_>>(),
        [true, false]
    );
    let stats = fx.upkeep.stats().await.unwrap();
    assert_eq!((stats.images, stats.image_bytes), (1, 9));
}

async fn retention_deletes_by_age_rows_and_image_bytes(fx: &Fixture) {
    for i in 0..10 {
        let v = verdict("aoi-1", &format!("u{i}"), "void", &[]);
        fx.store
            .insert(record(&v, &[7u8; 100], true))
            .await
            .unwrap();
    }
    let now = kensa::store::record::now_ms();
    let keep_all = RetentionPolicy {
        max_age: Some(Duration::from_secs(3600)),
        max_rows: Some(100),
        max_image_bytes: Some(10_000),
    };
    assert_eq!(
        fx.upkeep.prune(&keep_all, now).await.unwrap(),
        Pruned::default()
    );

    let rows = RetentionPolicy {
        max_rows: Some(6),
        max_image_bytes: Some(250),
        ..RetentionPolicy::default()
    };
    let pruned = fx.upkeep.prune(&rows, now).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            verdicts: 4,
            images: 4
        }
    );
    let left = fx.store.list(&after(0)).await.unwrap();
    let ids: Vec<_> = left
        .iter()
        .map(|v| v.verdict.inspection_id.as_str())
        .collect();
    assert_eq!(ids, ["u4", "u5", "u6", "u7", "u8", "u9"]);
    let with_image: Vec<_> = left
        .iter()
        .filter(|v| v.image_retained)
        .map(|v| v.verdict.inspection_id.as_str())
        .collect();
    assert_eq!(
        with_image,
        ["u8", "u9"],
        "the newest images within 250 bytes"
    );
    let stats = fx.upkeep.stats().await.unwrap();
    assert_eq!((stats.rows, stats.images, stats.image_bytes), (6, 2, 200));

    let by_age = RetentionPolicy {
        max_age: Some(Duration::from_secs(60)),
        ..RetentionPolicy::default()
    };
    let later = now + 61_000;
    assert_eq!(fx.upkeep.prune(&by_age, later).await.unwrap().verdicts, 6);
    assert_eq!(fx.upkeep.stats().await.unwrap().rows, 0);
    assert_eq!(fx.upkeep.stats().await.unwrap().bytes, 0);

    let next = stored(fx.store.insert(simple("aoi-1", "after")).await.unwrap());
    assert!(
        next.cursor > left.last().unwrap().cursor,
        "cursors are never reused"
    );
}

async fn a_lease_has_one_holder_until_it_expires(fx: &Fixture) {
    let ttl = Duration::from_secs(30);
    let now = 1_000_000;
    assert!(
        fx.ledger()
            .acquire_lease("mqtt", "a", now, ttl)
            .await
            .unwrap()
    );
    assert!(
        !fx.ledger()
            .acquire_lease("mqtt", "b", now + 1000, ttl)
            .await
            .unwrap()
    );
    assert!(
        fx.ledger()
            .acquire_lease("mqtt", "a", now + 1000, ttl)
            .await
            .unwrap()
    );
    assert!(
        fx.ledger()
            .acquire_lease("mqtt", "b", now + 32_000, ttl)
            .await
            .unwrap()
    );
    assert!(
        !fx.ledger()
            .acquire_lease("mqtt", "a", now + 33_000, ttl)
            .await
            .unwrap()
    );

    assert_eq!(fx.ledger().consumer_cursor("mqtt").await.unwrap(), 0);
    fx.ledger().save_consumer_cursor("mqtt", 42).await.unwrap();
    assert_eq!(fx.ledger().consumer_cursor("mqtt").await.unwrap(), 42);
    assert!(
        !fx.ledger()
            .acquire_lease("mqtt", "a", now + 34_000, ttl)
            .await
            .unwrap()
    );
    assert_eq!(
        fx.ledger().consumer_cursor("mqtt").await.unwrap(),
        42,
        "a lease keeps the cursor"
    );
    assert_eq!(fx.ledger().consumer_cursor("other").await.unwrap(), 0);
}

async fn reopening_keeps_verdicts_and_continues_cursors(fx: &Fixture) {
    let first = stored(fx.store.insert(simple("aoi-1", "a")).await.unwrap());
    let reopened = fx.reopen().await;
    assert_eq!(
        reopened.get("aoi-1", "a").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(*reopened.subscribe().borrow(), first.cursor);
    let second = stored(reopened.insert(simple("aoi-1", "b")).await.unwrap());
    assert!(second.cursor > first.cursor);
    assert_eq!(reopened.list(&after(0)).await.unwrap().len(), 2);
}

async fn long_poll_wakes_on_a_commit_and_times_out_empty(fx: &Fixture) {
    let started = Instant::now();
    let empty = wait_for(&fx.store, &after(0), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(empty.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));

    let store = Arc::clone(&fx.store);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store.insert(simple("aoi-1", "late")).await.unwrap();
    });
    let started = Instant::now();
    let rows = wait_for(&fx.store, &after(0), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "woken by the commit, not by the periodic recheck: {:?}",
        started.elapsed()
    );
    writer.await.unwrap();
}

async fn follow_streams_what_is_stored_then_what_comes(fx: &Fixture) {
    for i in 0..3 {
        fx.store
            .insert(simple("aoi-1", &format!("old-{i}")))
            .await
            .unwrap();
    }
    let stream = follow(Arc::clone(&fx.store), after(1));
    let store = Arc::clone(&fx.store);
    let writer = tokio::spawn(async move {
        for i in 0..3 {
            store
                .insert(simple("aoi-1", &format!("new-{i}")))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let got: Vec<_> =
        tokio::time::timeout(Duration::from_secs(10), stream.take(5).collect::<Vec<_>>())
            .await
            .expect("five verdicts arrive");
    let ids: Vec<_> = got
        .into_iter()
        .map(|r| r.unwrap().verdict.inspection_id)
        .collect();
    assert_eq!(ids, ["old-1", "old-2", "new-0", "new-1", "new-2"]);
    writer.await.unwrap();
}

/// Two replicas on one PostgreSQL: a key stored by one is a retry on the other, and the other
/// learns of the commit without polling.
async fn another_replica_shares_keys_and_wakes_on_commits(fx: &Fixture) {
    let other: SharedStore = fx.reopen().await;
    let mut changes = other.subscribe();
    changes.borrow_and_update();
    let stored = stored(fx.store.insert(simple("aoi-1", "k")).await.unwrap());
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("the other replica is notified")
        .unwrap();
    assert_eq!(*changes.borrow(), stored.cursor);
    let retry = other
        .insert(record(&verdict("aoi-1", "k", "crack", &[]), b"k", false))
        .await
        .unwrap();
    assert_eq!(retry, Inserted::Existing(stored));
}

/// A database written by a newer kensa is refused rather than written into.
#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let fixture = store_support::sqlite().await;
    let kensa::store::StoreLocation::Sqlite(path) = &fixture.location else {
        unreachable!()
    };
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (99, 'future', 0)",
        [],
    )
    .unwrap();
    let error = match kensa::store::open(&fixture.location, &Default::default()).await {
        Err(error) => error,
        Ok(_) => panic!("a newer schema must be refused"),
    };
    assert!(matches!(error, StoreError::Schema(_)), "{error}");
}
