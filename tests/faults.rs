//! Store faults as a line would meet them: a PostgreSQL whose commits stall (its connections
//! open, nothing moving) must fail requests within the store timeout instead of holding them,
//! report not ready, and recover when the database moves again, losing nothing.

mod common;
mod store_support;

use std::time::{Duration, Instant};

use common::{TestServer, samples};
use kensa::store::StoreLocation;
use serde_json::Value;

async fn wait_for_readyz(server: &TestServer, status: u16) -> Duration {
    let started = Instant::now();
    loop {
        let response = server
            .client
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap();
        if response.status() == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/readyz never became {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_postgres_fails_requests_fast_and_turns_readiness_off_until_it_moves() {
    let fixture = store_support::postgres().await;
    let StoreLocation::Postgres(url) = &fixture.location else {
        unreachable!()
    };
    let server = TestServer::start(&[&format!("--store={url}"), "--store-timeout=1s"]).await;
    let sample = &samples()[0];
    assert_eq!(
        server
            .inspect(sample, &[("inspection_id", "before")])
            .await
            .status(),
        200
    );

    // Another session takes the table every commit locks, and keeps it.
    let (locker, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE verdict_cursor IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let started = Instant::now();
    let stalled = server
        .inspect(sample, &[("inspection_id", "stalled")])
        .await;
    let waited = started.elapsed();
    let body: Value = stalled.json().await.unwrap();
    assert_eq!(body["code"], "store_unavailable", "{body}");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    let unready_after = wait_for_readyz(&server, 503).await;
    let metrics = server.get_text("/metrics").await;
    assert!(metrics.contains("kensa_store_up 0"), "{metrics}");
    let refused = server
        .inspect(sample, &[("inspection_id", "while-down")])
        .await;
    assert_eq!(
        refused.status(),
        503,
        "no verdict is acknowledged while the store is down"
    );

    locker.batch_execute("ROLLBACK").await.unwrap();
    let ready_after = wait_for_readyz(&server, 200).await;
    assert!(
        server
            .get_text("/metrics")
            .await
            .contains("kensa_store_up 1")
    );
    // The stalled commit may have landed once the lock went: the retry is answered either way,
    // and the key holds one verdict.
    for id in ["stalled", "while-down"] {
        assert_eq!(
            server
                .inspect(sample, &[("inspection_id", id)])
                .await
                .status(),
            200,
            "{id}"
        );
    }
    let page: Value = server.get_json("/v1/verdicts?limit=100").await;
    let ids: Vec<&str> = page["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["inspection_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    eprintln!(
        "stalled commit answered 503 after {waited:?}; not ready {unready_after:?} later; ready {ready_after:?} after the lock went"
    );
}
