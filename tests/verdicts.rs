//! The verdict store behind the real server (SQLite under the test's data folder): durable
//! verdicts, idempotent retries, the MES API (cursor reads, long-poll, Server-Sent Events),
//! asynchronous submission, retention, image retention, gRPC from a cursor and MQTT.

mod common;
mod store_support;

use std::time::{Duration, Instant};

use common::{TestServer, samples};
use futures::StreamExt as _;
use kensa::api::proto::kensa_v1 as pb;
use kensa::api::proto::kensa_v1::inspection_service_client::InspectionServiceClient;
use kensa::store::StoredVerdict;
use serde_json::Value;

/// Sends one multipart inspection of `image` under (station, id).
async fn post(
    server: &TestServer,
    station: &str,
    id: &str,
    image: &[u8],
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut fields = vec![
        ("note", "dia 59.1um"),
        ("station_id", station),
        ("inspection_id", id),
    ];
    fields.extend_from_slice(extra);
    server.post_unit("", image, &fields).await
}

/// Submits one unit of station slow-line with `mode=async`.
async fn submit_async(server: &TestServer, image: &[u8], id: &str) -> reqwest::Response {
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(image.to_vec()).file_name("u.png"),
        )
        .text("station_id", "slow-line")
        .text("inspection_id", id.to_string());
    server
        .client
        .post(server.url("/v1/inspections?mode=async"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Asks for the heat map PNG of one inspection under station aoi-07.
async fn heat_map(server: &TestServer, id: &str, image: &[u8]) -> reqwest::Response {
    let fields = [
        ("note", "dia 59.1um"),
        ("station_id", "aoi-07"),
        ("inspection_id", id),
    ];
    server.post_unit("?format=png", image, &fields).await
}

async fn read(server: &TestServer, query: &str) -> (Vec<StoredVerdict>, u64) {
    let response = server
        .client
        .get(server.url(&format!("/v1/verdicts?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{query}");
    let body: Value = response.json().await.unwrap();
    let verdicts = serde_json::from_value(body["verdicts"].clone()).unwrap();
    (verdicts, body["next_cursor"].as_u64().unwrap())
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server.get_text("/metrics").await;
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_the_stored_verdict_without_a_second_inference() {
    let server = TestServer::start(&[]).await;
    let image = &samples()[0].image;
    let first = post(&server, "aoi-07", "LOT42-S3-U17", image, &[("line", "L3")]).await;
    assert_eq!(first.status(), 200);
    let cursor = first.headers()["x-kensa-cursor"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(first.headers().get("x-kensa-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let retry = post(&server, "aoi-07", "LOT42-S3-U17", image, &[("line", "L3")]).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["x-kensa-replayed"], "true");
    assert_eq!(retry.headers()["x-kensa-cursor"].to_str().unwrap(), cursor);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first, "the stored verdict, timings and all");

    assert_eq!(
        metric(&server, "kensa_verdicts_total").await,
        1.0,
        "one inference"
    );
    assert_eq!(metric(&server, "kensa_idempotent_replays_total").await, 1.0);

    let fresh = heat_map(&server, "LOT42-S3-U18", image).await;
    assert!(fresh.headers().get("x-kensa-replayed").is_none());
    let fresh = fresh.bytes().await.unwrap();
    let replayed = heat_map(&server, "LOT42-S3-U18", image).await;
    assert_eq!(replayed.headers()["x-kensa-replayed"], "true");
    let replayed = replayed.bytes().await.unwrap();
    assert!(!replayed.is_empty(), "a replay renders the heat map again");
    assert_eq!(replayed, fresh);

    let (stored, _) = read(&server, "since=0").await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].verdict.metadata["line"], "L3");
    assert_eq!(stored[0].note, "dia 59.1um");
    assert_eq!(
        stored[0].image_sha256,
        kensa::store::record::sha256_hex(image)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_image_is_a_409() {
    let server = TestServer::start(&[]).await;
    let samples = samples();
    let ok = post(&server, "aoi-07", "U1", &samples[0].image, &[]).await;
    assert_eq!(ok.status(), 200);
    let conflict = post(&server, "aoi-07", "U1", &samples[1].image, &[]).await;
    assert_eq!(conflict.status(), 409);
    let body: Value = conflict.json().await.unwrap();
    assert_eq!(body["code"], "conflict");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("different image"), "{message}");
    let other_station = post(&server, "aoi-08", "U1", &samples[1].image, &[]).await;
    assert_eq!(other_station.status(), 200, "keys are per station");

    // The note is part of the unit's record: the same image with another note is not a retry.
    let fields = [("station_id", "aoi-07"), ("inspection_id", "U1")];
    let other_note = server
        .post_unit(
            "",
            &samples[0].image,
            &[fields[0], fields[1], ("note", "dia 61.0um")],
        )
        .await;
    assert_eq!(other_note.status(), 409);
    let body: Value = other_note.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("different note"),
        "{body}"
    );
    let retry = post(&server, "aoi-07", "U1", &samples[0].image, &[]).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["x-kensa-replayed"], "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_async_submission_with_another_image_under_one_key_is_a_409() {
    let server = TestServer::start(&[]).await;
    let samples = samples();
    let submit = |image| submit_async(&server, image, "K1");
    assert_eq!(submit(&samples[0].image).await.status(), 202);
    let second = submit(&samples[1].image).await;
    assert_eq!(
        second.status(),
        409,
        "running or stored, the key holds another image"
    );
    let again = submit(&samples[0].image).await.status();
    assert!(
        [200, 202].contains(&again.as_u16()),
        "the same unit again is no conflict: {again}"
    );
    let (stored, _) = read(&server, "station=slow-line&wait=20s").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].image_sha256,
        kensa::store::record::sha256_hex(&samples[0].image),
        "the first submission's image is the one stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_get_one_verdict() {
    let server = TestServer::start(&["--max-queue-delay=20ms"]).await;
    let image = samples()[2].image.clone();
    let answers = futures::future::join_all((0..8).map(|_| async {
        let response = post(&server, "aoi-07", "race", &image, &[]).await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()
    }))
    .await;
    for answer in &answers {
        assert_eq!(
            answer, &answers[0],
            "every caller gets the one stored verdict"
        );
    }
    let (stored, _) = read(&server, "since=0").await;
    assert_eq!(stored.len(), 1);
    let answered: kensa::verdict::Verdict = serde_json::from_value(answers[0].clone()).unwrap();
    assert_eq!(stored[0].verdict, answered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mes_api_pages_by_cursor_with_filters() {
    let server = TestServer::start(&[]).await;
    let samples = samples();
    let units = [
        ("aoi-1", "L1", "LOT-A"),
        ("aoi-1", "L1", "LOT-B"),
        ("aoi-2", "L2", "LOT-A"),
        ("aoi-2", "L2", "LOT-B"),
        ("aoi-2", "L2", "LOT-B"),
    ];
    for (i, (station, line, lot)) in units.iter().enumerate() {
        let image = &samples[i % samples.len()].image;
        let response = post(
            &server,
            station,
            &format!("u{i}"),
            image,
            &[("line", line), ("lot_id", lot)],
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let (page, next) = read(&server, "since=0&limit=3").await;
    assert_eq!(page.len(), 3);
    assert_eq!(next, page[2].cursor);
    let (rest, last) = read(&server, &format!("since={next}&limit=3")).await;
    assert_eq!(rest.len(), 2);
    let (empty, same) = read(&server, &format!("since={last}")).await;
    assert!(empty.is_empty());
    assert_eq!(same, last, "an empty page keeps the cursor");
    let ids = |v: &[StoredVerdict]| {
        v.iter()
            .map(|s| s.verdict.inspection_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&read(&server, "station=aoi-1").await.0), ["u0", "u1"]);
    assert_eq!(
        ids(&read(&server, "line=L2&lot=LOT-B").await.0),
        ["u3", "u4"]
    );
    let all = read(&server, "since=0").await.0;
    let defects: Vec<_> = all
        .iter()
        .filter(|v| v.verdict.is_defect)
        .map(|v| v.verdict.inspection_id.clone())
        .collect();
    assert_eq!(ids(&read(&server, "defect_only=true").await.0), defects);
    let label = all[0].verdict.label.clone();
    let labelled: Vec<_> = all
        .iter()
        .filter(|v| v.verdict.label == label)
        .map(|v| v.verdict.inspection_id.clone())
        .collect();
    assert_eq!(
        ids(&read(&server, &format!("label={label}")).await.0),
        labelled
    );

    let one: StoredVerdict = server
        .client
        .get(server.url("/v1/verdicts/aoi-2/u3"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one, all[3]);
    let missing = server
        .client
        .get(server.url("/v1/verdicts/aoi-2/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "verdict_not_found");
    let bad = server
        .client
        .get(server.url("/v1/verdicts?since=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_when_a_verdict_is_committed() {
    let server = TestServer::start(&[]).await;
    let started = Instant::now();
    let (empty, next) = read(&server, "since=0&wait=300ms").await;
    assert!(empty.is_empty());
    assert_eq!(next, 0);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let image = samples()[0].image.clone();
    let started = Instant::now();
    let (polled, posted) = tokio::join!(read(&server, "since=0&wait=20s"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        post(&server, "aoi-07", "late", &image, &[]).await.status()
    });
    assert_eq!(posted, 200);
    assert_eq!(polled.0.len(), 1);
    assert_eq!(polled.0[0].verdict.inspection_id, "late");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Reads Server-Sent Events: (id, event, data) triples.
struct Events {
    body: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(server: &TestServer, query: &str, last_event_id: Option<&str>) -> Events {
        let mut request = server
            .client
            .get(server.url(&format!("/v1/verdicts/stream?{query}")));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            body: response,
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> (String, String, StoredVerdict) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                };
                let Some(data) = field("data:") else {
                    continue; // a keep-alive comment
                };
                return (
                    field("id:").unwrap_or_default(),
                    field("event:").unwrap_or_default(),
                    serde_json::from_str(&data).expect("verdict JSON"),
                );
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.body.chunk())
                .await
                .expect("an event in time")
                .unwrap()
                .expect("stream open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_from_a_cursor_and_resume_by_last_event_id() {
    let server = TestServer::start(&[]).await;
    let samples = samples();
    for (i, sample) in samples.iter().enumerate().take(2) {
        post(&server, "aoi-07", &format!("u{i}"), &sample.image, &[]).await;
    }
    let mut events = Events::open(&server, "since=0", None).await;
    let (first_id, kind, first) = events.next().await;
    assert_eq!(kind, "verdict");
    assert_eq!(first_id, first.cursor.to_string());
    assert_eq!(first.verdict.inspection_id, "u0");
    let (second_id, _, second) = events.next().await;
    assert_eq!(second.verdict.inspection_id, "u1");
    post(&server, "aoi-07", "u2", &samples[2].image, &[]).await;
    let (_, _, third) = events.next().await;
    assert_eq!(third.verdict.inspection_id, "u2");
    drop(events);

    let mut resumed = Events::open(&server, "since=0", Some(&first_id)).await;
    let (id, _, again) = resumed.next().await;
    assert_eq!(id, second_id, "Last-Event-ID wins over since");
    assert_eq!(again, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_submission_answers_202_and_the_verdict_lands_in_the_store() {
    let server = TestServer::start(&[]).await;
    let sample = &samples()[1];
    let submit = || submit_async(&server, &sample.image, "A/1");
    let accepted = submit().await;
    assert_eq!(accepted.status(), 202);
    assert_eq!(
        accepted.headers()["location"],
        "/v1/verdicts/slow-line/A%2F1"
    );
    let body: Value = accepted.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["inspection_id"], "A/1");

    let (stored, _) = read(&server, "station=slow-line&wait=20s").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].verdict.inspection_id, "A/1");
    let by_key = server
        .client
        .get(server.url("/v1/verdicts/slow-line/A%2F1"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), 200);

    let again = submit().await;
    assert_eq!(again.status(), 200, "a retry of a stored key");
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["status"], "stored");
    assert_eq!(body["cursor"], stored[0].cursor);
    assert_eq!(read(&server, "since=0").await.0.len(), 1);

    let bad = server
        .client
        .post(server.url("/v1/inspections?mode=async"))
        .json(&serde_json::json!({"station_id": "s", "image": "aGVsbG8="}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        bad.status(),
        202,
        "decoding happens later, in the background"
    );
    let missing_station = server
        .client
        .post(server.url("/v1/inspections?mode=async"))
        .json(&serde_json::json!({"image": "aGVsbG8="}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing_station.status(),
        400,
        "what can be checked at once is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_rows_and_the_metrics_count_them() {
    let server = TestServer::start(&["--retention-max-rows=2", "--retention-interval=1s"]).await;
    let samples = samples();
    for (i, sample) in samples.iter().enumerate().take(4) {
        let response = post(&server, "aoi-07", &format!("u{i}"), &sample.image, &[]).await;
        assert_eq!(response.status(), 200);
    }
    let started = Instant::now();
    loop {
        let (left, _) = read(&server, "since=0").await;
        if left.len() == 2 {
            let ids: Vec<_> = left
                .iter()
                .map(|v| v.verdict.inspection_id.as_str())
                .collect();
            assert_eq!(ids, ["u2", "u3"]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "retention never ran"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    while metric(&server, "kensa_store_rows").await != 2.0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "rows gauge never updated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&server, "kensa_store_bytes").await > 0.0);
    assert_eq!(
        metric(&server, "kensa_store_pruned_total{kind=\"verdicts\"}").await,
        2.0
    );
    let started = Instant::now();
    while metric(&server, "kensa_store_cursor").await < 4.0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "cursor gauge never updated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&server, "kensa_store_write_duration_seconds_count").await >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_retained_only_when_configured() {
    let keeping =
        TestServer::start(&["--retain-images", "--retain-images-below-confidence=1.0"]).await;
    let image = &samples()[3].image;
    post(&keeping, "aoi-07", "kept", image, &[]).await;
    let response = keeping
        .client
        .get(keeping.url("/v1/verdicts/aoi-07/kept/image"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.bytes().await.unwrap().to_vec(), *image);

    let default = TestServer::start(&[]).await;
    post(&default, "aoi-07", "not-kept", image, &[]).await;
    let response = default
        .client
        .get(default.url("/v1/verdicts/aoi-07/not-kept/image"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "image_not_retained");
}

/// `--store none` keeps the newest verdicts in memory behind the same store trait: retries are
/// replayed, and every read path (HTTP and gRPC, with their filters) reads the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_the_memory_store_serves_every_read_path() {
    let server = TestServer::start(&["--store=none", "--retention-max-rows=3"]).await;
    let image = &samples()[0].image;
    for replayed in [false, true] {
        let response = post(&server, "aoi-07", "same", image, &[("line", "L1")]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-kensa-cursor"], "1");
        assert_eq!(
            response.headers().get("x-kensa-replayed").is_some(),
            replayed
        );
    }
    assert_eq!(metric(&server, "kensa_verdicts_total").await, 1.0);
    for (id, line) in [("u2", "L2"), ("u3", "L1"), ("u4", "L2")] {
        let response = post(&server, "aoi-08", id, image, &[("line", line)]).await;
        assert_eq!(response.status(), 200);
    }
    let (all, next) = read(&server, "since=0").await;
    let cursors: Vec<u64> = all.iter().map(|v| v.cursor).collect();
    assert_eq!(cursors, [2, 3, 4], "the ring keeps the newest 3");
    assert_eq!(next, 4);
    let (line, _) = read(&server, "line=L2").await;
    assert_eq!(line.len(), 2);

    let mut grpc = InspectionServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let mut watch = grpc
        .watch_verdicts(pb::WatchVerdictsRequest {
            cursor: "0".into(),
            line: "L2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for expected in ["u2", "u4"] {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            event.verdict.unwrap().inspection_id,
            expected,
            "line filter"
        );
    }
    post(&server, "aoi-08", "u5", image, &[("line", "L1")]).await;
    post(&server, "aoi-08", "u6", image, &[("line", "L2")]).await;
    let live = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        live.verdict.unwrap().inspection_id,
        "u6",
        "L1 was filtered out"
    );
    let stored = grpc
        .get_verdict(pb::GetVerdictRequest {
            station_id: "aoi-08".into(),
            inspection_id: "u6".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.cursor, live.cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_watch_resumes_from_a_cursor_and_get_verdict_reads_the_store() {
    let server = TestServer::start(&[]).await;
    let samples = samples();
    for (i, sample) in samples.iter().enumerate().take(3) {
        post(&server, "aoi-07", &format!("u{i}"), &sample.image, &[]).await;
    }
    let mut grpc = InspectionServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let watch = |cursor: &str| pb::WatchVerdictsRequest {
        cursor: cursor.into(),
        station_id: "aoi-07".into(),
        ..Default::default()
    };
    let mut all = grpc.watch_verdicts(watch("0")).await.unwrap().into_inner();
    let mut events = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        events.push(event);
    }
    let ids: Vec<_> = events
        .iter()
        .map(|e| e.verdict.as_ref().unwrap().inspection_id.clone())
        .collect();
    assert_eq!(ids, ["u0", "u1", "u2"]);
    assert!(!events[0].image_sha256.is_empty());
    post(&server, "aoi-07", "u3", &samples[3].image, &[]).await;
    let live = tokio::time::timeout(Duration::from_secs(10), all.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(live.verdict.unwrap().inspection_id, "u3");

    let mut resumed = grpc
        .watch_verdicts(watch(&events[0].cursor))
        .await
        .unwrap()
        .into_inner();
    let next = resumed.next().await.unwrap().unwrap();
    assert_eq!(next.cursor, events[1].cursor);

    let stored = grpc
        .get_verdict(pb::GetVerdictRequest {
            station_id: "aoi-07".into(),
            inspection_id: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.verdict.as_ref().unwrap().inspection_id, "u1");
    assert_eq!(
        stored, events[1],
        "GetVerdict answers the record WatchVerdicts streams"
    );
    let http: StoredVerdict = server.get_json("/v1/verdicts/aoi-07/u1").await;
    assert_eq!(stored.cursor, http.cursor.to_string());
    assert_eq!(stored.note, http.note);
    assert_eq!(stored.image_sha256, http.image_sha256);
    let stored_at = stored.stored_at.unwrap();
    assert_eq!(
        (stored_at.seconds, stored_at.nanos as u32),
        (
            http.stored_at.timestamp(),
            http.stored_at.timestamp_subsec_nanos()
        ),
        "the same record on both protocols"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_publishing_is_switched_on_by_configuration() {
    let prefix = format!("kensa-test-{}", uuid::Uuid::new_v4().simple());
    let broker = std::env::var("KENSA_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let (host, port) = broker.rsplit_once(':').unwrap();
    let mut options = rumqttc::MqttOptions::new(
        format!("sub-{}", uuid::Uuid::new_v4().simple()),
        host,
        port.parse().unwrap(),
    );
    // Nothing polls this client while the server below starts and warms up (seconds under
    // load), so its keep-alive must outlast that or the broker drops it.
    options.set_keep_alive(Duration::from_secs(120));
    let (subscriber, mut event_loop) = rumqttc::AsyncClient::new(options, 16);
    subscriber
        .subscribe(format!("{prefix}/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) =
            event_loop.poll().await.unwrap()
        {
            break;
        }
    }
    let mqtt = format!("--mqtt={broker}");
    let topic_prefix = format!("--mqtt-topic-prefix={prefix}");
    let server = TestServer::start(&[&mqtt, &topic_prefix]).await;
    post(
        &server,
        "aoi-07",
        "u1",
        &samples()[0].image,
        &[("line", "L3")],
    )
    .await;
    let (statuses, publish) = tokio::time::timeout(Duration::from_secs(20), async {
        let mut statuses = Vec::new();
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                event_loop.poll().await.unwrap()
            {
                if !p.topic.starts_with(&format!("{prefix}/status/")) {
                    return (statuses, p);
                }
                statuses.push(p.payload);
            }
        }
    })
    .await
    .expect("the verdict is published");
    assert_eq!(statuses, ["online"], "the publisher announces itself first");
    assert_eq!(publish.topic, format!("{prefix}/L3/aoi-07/verdict"));
    assert_eq!(publish.qos, rumqttc::QoS::AtLeastOnce);
    let stored: StoredVerdict = serde_json::from_slice(&publish.payload).unwrap();
    assert_eq!(stored.verdict.inspection_id, "u1");
    assert_eq!(stored.cursor, 1);
}
