//! Reviews and station activity in the store, one suite run against every backend: SQLite in
//! a temporary file, the real PostgreSQL server (a schema per test) and the in-memory ring.

mod store_support;

use std::time::Duration;

use chrono::Utc;
use kensa::decision::Disposition;
use kensa::store::{
    Filters, Inserted, Outcome, RetentionPolicy, Review, ReviewInserted, StoredVerdict,
    VerdictQuery,
};
use store_support::{Fixture, record, verdict};

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
    a_review_is_stored_beside_its_verdict_which_stays_as_it_was,
    each_reviewer_reviews_a_unit_once_and_the_newest_review_shows,
    the_reviewed_filter_selects_the_review_queue,
    reviews_are_read_in_commit_order_and_counted_for_agreement,
    retention_deletes_reviews_with_their_verdict,
    activity_counts_each_station_up_to_a_cursor,
);

suite!(memory:
    a_review_is_stored_beside_its_verdict_which_stays_as_it_was,
    each_reviewer_reviews_a_unit_once_and_the_newest_review_shows,
    the_reviewed_filter_selects_the_review_queue,
    reviews_are_read_in_commit_order_and_counted_for_agreement,
    retention_deletes_reviews_with_their_verdict,
    activity_counts_each_station_up_to_a_cursor,
);

suite!(postgres:
    a_review_is_stored_beside_its_verdict_which_stays_as_it_was,
    each_reviewer_reviews_a_unit_once_and_the_newest_review_shows,
    the_reviewed_filter_selects_the_review_queue,
    reviews_are_read_in_commit_order_and_counted_for_agreement,
    retention_deletes_reviews_with_their_verdict,
    activity_counts_each_station_up_to_a_cursor,
);

/// Stores a verdict of `label` with `disposition` on `line`.
async fn store(
    fx: &Fixture,
    station: &str,
    inspection: &str,
    label: &str,
    disposition: Option<Disposition>,
) -> StoredVerdict {
    let mut v = verdict(station, inspection, label, &[("line", "L3")]);
    v.disposition = disposition;
    match fx
        .store
        .insert(record(&v, inspection.as_bytes(), false))
        .await
        .unwrap()
    {
        Inserted::New(stored) => stored,
        Inserted::Existing(_) => panic!("{inspection} was stored twice"),
    }
}

/// A review of `stored` by `reviewer` saying `label`, as the review service builds it.
fn review(stored: &StoredVerdict, reviewer: &str, label: &str) -> Review {
    let verdict = &stored.verdict;
    Review {
        cursor: 0,
        verdict_cursor: stored.cursor,
        station_id: verdict.station_id.clone(),
        inspection_id: verdict.inspection_id.clone(),
        line: verdict.metadata.get("line").cloned(),
        model: verdict.model.clone(),
        model_version: verdict.model_version,
        model_label: verdict.label.clone(),
        label: label.into(),
        outcome: Outcome::of(&verdict.label, label),
        reviewer: reviewer.into(),
        comment: format!("{reviewer} says {label}"),
        reviewed_at: Utc::now(),
    }
}

fn new(inserted: ReviewInserted) -> Review {
    match inserted {
        ReviewInserted::New(review) => review,
        ReviewInserted::Existing(review) => panic!("expected a new review, got {review:?}"),
    }
}

fn all() -> VerdictQuery {
    VerdictQuery {
        limit: 1000,
        ..VerdictQuery::default()
    }
}

async fn a_review_is_stored_beside_its_verdict_which_stays_as_it_was(fx: &Fixture) {
    let stored = store(fx, "aoi-7", "u1", "void", Some(Disposition::Review)).await;
    let given = new(fx
        .reviews
        .add_review(review(&stored, "aiko", "normal"))
        .await
        .unwrap());
    assert_eq!(given.cursor, 1);
    assert_eq!(given.outcome, Outcome::Overridden);
    let read = fx.store.get("aoi-7", "u1").await.unwrap().unwrap();
    assert_eq!(read.review.as_ref(), Some(&given));
    assert_eq!(
        read.verdict, stored.verdict,
        "the verdict is never rewritten"
    );
    assert_eq!(read.cursor, stored.cursor);
    let listed = fx.store.list(&all()).await.unwrap();
    assert_eq!(listed[0].review.as_ref(), Some(&given));
    let json = serde_json::to_value(&read).unwrap();
    assert_eq!(json["label"], "void");
    assert_eq!(json["review"]["label"], "normal");
    assert_eq!(json["review"]["comment"], "aiko says normal");
}

async fn each_reviewer_reviews_a_unit_once_and_the_newest_review_shows(fx: &Fixture) {
    let stored = store(fx, "aoi-7", "u1", "void", Some(Disposition::Review)).await;
    let first = new(fx
        .reviews
        .add_review(review(&stored, "aiko", "void"))
        .await
        .unwrap());
    let again = fx
        .reviews
        .add_review(review(&stored, "aiko", "normal"))
        .await
        .unwrap();
    assert_eq!(
        again,
        ReviewInserted::Existing(first.clone()),
        "the first review of a reviewer stands"
    );
    let second = new(fx
        .reviews
        .add_review(review(&stored, "kenji", "residue"))
        .await
        .unwrap());
    assert!(second.cursor > first.cursor);
    let read = fx.store.get("aoi-7", "u1").await.unwrap().unwrap();
    assert_eq!(read.review, Some(second));
}

async fn the_reviewed_filter_selects_the_review_queue(fx: &Fixture) {
    let a = store(fx, "aoi-7", "a", "void", Some(Disposition::Review)).await;
    store(fx, "aoi-7", "b", "normal", Some(Disposition::Review)).await;
    store(fx, "aoi-7", "c", "void", Some(Disposition::Fail)).await;
    fx.reviews
        .add_review(review(&a, "aiko", "void"))
        .await
        .unwrap();
    let ids = |rows: Vec<StoredVerdict>| -> Vec<String> {
        rows.into_iter().map(|v| v.verdict.inspection_id).collect()
    };
    let waiting = Filters {
        disposition: Some(Disposition::Review),
        reviewed: Some(false),
        ..Filters::default()
    }
    .after(0, Some(100));
    assert_eq!(ids(fx.store.list(&waiting).await.unwrap()), ["b"]);
    let done = Filters {
        reviewed: Some(true),
        ..Filters::default()
    }
    .after(0, Some(100));
    assert_eq!(ids(fx.store.list(&done).await.unwrap()), ["a"]);
}

async fn reviews_are_read_in_commit_order_and_counted_for_agreement(fx: &Fixture) {
    let mut given = Vec::new();
    for (i, (label, said)) in [("void", "void"), ("void", "normal"), ("normal", "normal")]
        .into_iter()
        .enumerate()
    {
        let stored = store(fx, "aoi-7", &format!("u{i}"), label, None).await;
        given.push(new(fx
            .reviews
            .add_review(review(&stored, "aiko", said))
            .await
            .unwrap()));
    }
    let cursors: Vec<u64> = given.iter().map(|r| r.cursor).collect();
    assert_eq!(fx.reviews.reviews_after(0, 10).await.unwrap(), given);
    assert_eq!(
        fx.reviews.reviews_after(cursors[0], 1).await.unwrap(),
        given[1..2]
    );
    let agreement = fx.reviews.agreement().await.unwrap();
    assert_eq!(agreement.len(), 1);
    assert_eq!(
        (
            agreement[0].model.as_str(),
            agreement[0].model_version,
            agreement[0].reviews,
            agreement[0].confirmed
        ),
        ("kensa-demo", 1, 3, 2)
    );
}

async fn retention_deletes_reviews_with_their_verdict(fx: &Fixture) {
    let old = store(fx, "aoi-7", "old", "void", None).await;
    let kept = store(fx, "aoi-7", "kept", "void", None).await;
    for stored in [&old, &kept] {
        fx.reviews
            .add_review(review(stored, "aiko", "void"))
            .await
            .unwrap();
    }
    let policy = RetentionPolicy {
        max_rows: Some(1),
        ..RetentionPolicy::default()
    };
    fx.upkeep
        .prune(&policy, kensa::store::record::now_ms())
        .await
        .unwrap();
    let left = fx.reviews.reviews_after(0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].inspection_id, "kept");
    assert_eq!(fx.reviews.agreement().await.unwrap()[0].reviews, 1);
}

async fn activity_counts_each_station_up_to_a_cursor(fx: &Fixture) {
    store(fx, "aoi-1", "a1", "normal", Some(Disposition::Pass)).await;
    store(fx, "aoi-1", "a2", "void", Some(Disposition::Fail)).await;
    store(fx, "aoi-2", "b1", "void", Some(Disposition::Review)).await;
    let cut = store(fx, "aoi-1", "a3", "void", Some(Disposition::Review)).await;
    store(fx, "aoi-2", "b2", "normal", None).await;
    // The window ends just after now, so now falls in its newest bucket.
    let since = kensa::store::record::now_ms() + 1 - 3_600_000;
    let bucket = i64::try_from(Duration::from_secs(300).as_millis()).unwrap();
    let counts = fx
        .activity
        .activity(since, bucket, cut.cursor)
        .await
        .unwrap();
    let total = |station: &str, disposition: Option<Disposition>| -> u64 {
        counts
            .iter()
            .filter(|c| c.station_id == station && c.disposition == disposition)
            .map(|c| c.count)
            .sum()
    };
    assert_eq!(total("aoi-1", Some(Disposition::Pass)), 1);
    assert_eq!(total("aoi-1", Some(Disposition::Fail)), 1);
    assert_eq!(total("aoi-1", Some(Disposition::Review)), 1);
    assert_eq!(total("aoi-2", Some(Disposition::Review)), 1);
    assert_eq!(total("aoi-2", None), 0, "after the cursor");
    assert!(
        counts.iter().all(|c| c.bucket == 11),
        "everything is in the newest of 12 buckets: {counts:?}"
    );
    let defects: u64 = counts.iter().filter(|c| c.is_defect).map(|c| c.count).sum();
    assert_eq!(defects, 3);

    let latest = fx.activity.latest_per_station(cut.cursor).await.unwrap();
    let ids: Vec<&str> = latest
        .iter()
        .map(|v| v.verdict.inspection_id.as_str())
        .collect();
    assert_eq!(ids, ["b1", "a3"]);
    let everything = fx.activity.latest_per_station(u64::MAX >> 1).await.unwrap();
    let ids: Vec<&str> = everything
        .iter()
        .map(|v| v.verdict.inspection_id.as_str())
        .collect();
    assert_eq!(ids, ["a3", "b2"]);
}
