//! Two kensa replicas sharing one PostgreSQL store (the real server, a schema of its own): a
//! retry that lands on the other replica gets the same verdict, and each replica's MES readers
//! see and are woken by the other's commits.

mod common;
mod store_support;

use std::time::{Duration, Instant};

use common::{TestServer, samples};
use kensa::store::{StoreLocation, StoredVerdict};
use serde_json::Value;

async fn post(server: &TestServer, id: &str, image: &[u8]) -> reqwest::Response {
    let fields = [("station_id", "aoi-07"), ("inspection_id", id)];
    server.post_unit("", image, &fields).await
}

async fn replicas() -> (store_support::Fixture, TestServer, TestServer) {
    let fixture = store_support::postgres().await;
    let StoreLocation::Postgres(url) = &fixture.location else {
        unreachable!()
    };
    let store = format!("--store={url}");
    let a = TestServer::start(&[&store]).await;
    let b = TestServer::start(&[&store]).await;
    (fixture, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_the_other_replica_returns_the_same_verdict() {
    let (_fixture, a, b) = replicas().await;
    let samples = samples();
    let first = post(&a, "LOT42-S3-U17", &samples[0].image).await;
    assert_eq!(first.status(), 200);
    let cursor = first.headers()["x-kensa-cursor"].clone();
    let first: Value = first.json().await.unwrap();

    let retry = post(&b, "LOT42-S3-U17", &samples[0].image).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["x-kensa-replayed"], "true");
    assert_eq!(retry.headers()["x-kensa-cursor"], cursor);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first);

    let conflict = post(&b, "LOT42-S3-U17", &samples[1].image).await;
    assert_eq!(conflict.status(), 409);

    let stored: StoredVerdict = b.get_json("/v1/verdicts/aoi-07/LOT42-S3-U17").await;
    assert_eq!(
        serde_json::to_value(&stored.verdict).unwrap()["label"],
        first["label"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_on_both_replicas_store_one_verdict() {
    let (_fixture, a, b) = replicas().await;
    let image = samples()[2].image.clone();
    let answers = futures::future::join_all((0..8).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        let image = image.clone();
        async move {
            let response = post(server, "race", &image).await;
            assert_eq!(response.status(), 200);
            let cursor = response.headers()["x-kensa-cursor"]
                .to_str()
                .unwrap()
                .to_string();
            (
                cursor,
                response.json::<Value>().await.unwrap()["received_at"].clone(),
            )
        }
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer, &answers[0], "one stored verdict for every caller");
    }
    let body: Value = a
        .client
        .get(a.url("/v1/verdicts?since=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["verdicts"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_replica_wakes_on_a_commit_on_the_other() {
    let (_fixture, a, b) = replicas().await;
    let image = samples()[0].image.clone();
    let started = Instant::now();
    let (polled, posted) = tokio::join!(
        async {
            b.client
                .get(b.url("/v1/verdicts?since=0&wait=20s"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        },
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            post(&a, "from-a", &image).await.status()
        }
    );
    assert_eq!(posted, 200);
    assert_eq!(polled["verdicts"][0]["inspection_id"], "from-a");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
