//! The MQTT publisher against the real Mosquitto broker (`KENSA_TEST_MQTT`, default
//! 127.0.0.1:1883), with the SQLite store as its outbox.

mod proxy;
mod store_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kensa::metrics::Metrics;
use kensa::publish::mqtt::{self, MqttConfig, Publisher};
use kensa::store::{Inserted, Outcome, Review, StoredVerdict};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn broker() -> SocketAddr {
    std::env::var("KENSA_TEST_MQTT")
        .unwrap_or_else(|_| "127.0.0.1:1883".into())
        .parse()
        .expect("KENSA_TEST_MQTT is host:port")
}

/// A topic prefix no other test run uses.
fn prefix() -> String {
    format!("kensa-test-{}", uuid::Uuid::new_v4().simple())
}

/// A publisher over the fixture's store, counting into `metrics`.
fn publisher(fixture: &store_support::Fixture, metrics: &Arc<Metrics>) -> Publisher {
    Publisher {
        store: fixture.store.clone(),
        reviews: fixture.reviews.clone(),
        ledger: fixture.ledger().clone(),
        metrics: Arc::clone(metrics),
    }
}

fn config(port: u16, prefix: &str) -> MqttConfig {
    MqttConfig {
        host: broker().ip().to_string(),
        port,
        client_id: format!("kensa-{}", uuid::Uuid::new_v4().simple()),
        topic_prefix: prefix.into(),
        keep_alive: Duration::from_secs(5),
        tls: None,
        credentials: None,
        max_packet_bytes: mqtt::packet_limit(4096),
    }
}

/// Subscribes to everything under `prefix` but the publisher's status; yields (topic, JSON).
async fn subscribe(prefix: &str) -> mpsc::UnboundedReceiver<(String, serde_json::Value)> {
    subscribe_to(format!("{prefix}/#")).await
}

/// Subscribes to `filter` (skipping the publisher's status topic); yields (topic, JSON).
async fn subscribe_to(filter: String) -> mpsc::UnboundedReceiver<(String, serde_json::Value)> {
    let address = broker();
    let id = format!("sub-{}", uuid::Uuid::new_v4().simple());
    let mut options = MqttOptions::new(id, address.ip().to_string(), address.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut event_loop) = AsyncClient::new(options, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match event_loop.poll().await.expect("subscriber connection") {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    if publish.topic.contains("/status/") {
                        continue;
                    }
                    let payload = serde_json::from_slice(&publish.payload).expect("JSON payload");
                    if tx.send((publish.topic, payload)).is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("subscribed")
        .unwrap();
    rx
}

/// The next `count` messages, each read as a `T` (a stored verdict, a review).
async fn receive<T: serde::de::DeserializeOwned>(
    messages: &mut mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    count: usize,
) -> Vec<(String, T)> {
    let mut got = Vec::new();
    while got.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), messages.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} verdicts arrived", got.len()))
            .expect("subscriber alive");
        let (topic, json) = message;
        got.push((
            topic,
            serde_json::from_value(json).expect("a message of the expected kind"),
        ));
    }
    got
}

/// A verdict whose message is over the packet limit is a dead letter: counted, announced on
/// `<prefix>/dead-letter` in its place, and the next verdict is published. With the limit the
/// server sizes from the request limits, a 3,000-character Japanese note is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpublishable_verdict_is_a_dead_letter_and_the_stream_moves_on() {
    let fixture = store_support::sqlite().await;
    let prefix = prefix();
    let mut messages = subscribe(&prefix).await;
    let metrics = Arc::new(Metrics::new());
    let japanese = |id: &str| {
        let mut record = store_support::simple("aoi-07", id);
        record.note = "穴径".repeat(1500);
        record
    };
    fixture.store.insert(japanese("too-big")).await.unwrap();
    fixture
        .store
        .insert(store_support::simple("aoi-07", "after"))
        .await
        .unwrap();
    let mut small = config(broker().port(), &prefix);
    small.max_packet_bytes = 8 << 10;
    let cancel = CancellationToken::new();
    let client_id = small.client_id.clone();
    let task = mqtt::spawn(publisher(&fixture, &metrics), small, cancel.clone());
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            tokio::time::timeout(Duration::from_secs(20), messages.recv())
                .await
                .expect("the stream moves on")
                .unwrap(),
        );
    }
    assert_eq!(got[0].0, format!("{prefix}/dead-letter"));
    assert_eq!(got[0].1["cursor"], 1);
    assert_eq!(got[0].1["inspection_id"], "too-big");
    assert!(
        got[0].1["reason"]
            .as_str()
            .unwrap()
            .contains("packet limit")
    );
    assert_eq!(got[1].1["cursor"], 2, "the next verdict is published");
    assert_eq!(metrics.mqtt_dead_letters.get(), 1);
    cancel.cancel();
    task.await.unwrap();

    // A restart with the limit sized from the request limits publishes the same note.
    fixture.store.insert(japanese("fits")).await.unwrap();
    let cancel = CancellationToken::new();
    let mut sized = config(broker().port(), &prefix);
    sized.client_id = client_id;
    let task = mqtt::spawn(publisher(&fixture, &metrics), sized, cancel.clone());
    let (_, fits) = receive::<StoredVerdict>(&mut messages, 1).await.remove(0);
    assert_eq!(fits.verdict.inspection_id, "fits");
    assert_eq!(fits.note.chars().count(), 3000);
    assert_eq!(metrics.mqtt_dead_letters.get(), 1);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verdict_is_published_in_cursor_order_on_its_topic() {
    let fixture = store_support::sqlite().await;
    let prefix = prefix();
    let mut messages = subscribe(&prefix).await;
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let task = mqtt::spawn(
        publisher(&fixture, &metrics),
        config(broker().port(), &prefix),
        cancel.clone(),
    );
    for i in 0..25 {
        let line = if i % 2 == 0 { "L1" } else { "L/2" };
        let v = store_support::verdict("aoi-07", &format!("u{i}"), "void", &[("line", line)]);
        fixture
            .store
            .insert(store_support::record(&v, b"img", false))
            .await
            .unwrap();
    }
    let got = receive::<StoredVerdict>(&mut messages, 25).await;
    let cursors: Vec<u64> = got.iter().map(|(_, v)| v.cursor).collect();
    assert_eq!(cursors, (1..=25).collect::<Vec<_>>());
    assert_eq!(got[0].0, format!("{prefix}/L1/aoi-07/verdict"));
    assert_eq!(got[1].0, format!("{prefix}/L_2/aoi-07/verdict"));
    assert_eq!(got[3].1.verdict.inspection_id, "u3");
    wait_until(|| metrics.mqtt_published.get() == 25).await;
    assert_eq!(
        fixture
            .ledger()
            .consumer_cursor(mqtt::CONSUMER)
            .await
            .unwrap(),
        25
    );
    cancel.cancel();
    task.await.unwrap();
}

/// Reviews go to the sibling topic `<prefix>/<line>/<station>/review` after their own cursor,
/// which the publisher saves like the verdicts' cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_are_published_on_the_sibling_topic() {
    let fixture = store_support::sqlite().await;
    let prefix = prefix();
    let mut reviews = subscribe_to(format!("{prefix}/+/+/review")).await;
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let task = mqtt::spawn(
        publisher(&fixture, &metrics),
        config(broker().port(), &prefix),
        cancel.clone(),
    );
    let v = store_support::verdict("aoi-07", "u1", "void", &[("line", "L3")]);
    let Inserted::New(stored) = fixture
        .store
        .insert(store_support::record(&v, b"img", false))
        .await
        .unwrap()
    else {
        panic!("a new verdict");
    };
    for reviewer in ["aiko", "kenji"] {
        fixture
            .reviews
            .add_review(Review {
                cursor: 0,
                verdict_cursor: stored.cursor,
                station_id: "aoi-07".into(),
                inspection_id: "u1".into(),
                line: Some("L3".into()),
                model: "kensa-demo".into(),
                model_version: 1,
                model_label: "void".into(),
                label: "normal".into(),
                outcome: Outcome::Overridden,
                reviewer: reviewer.into(),
                comment: String::new(),
                reviewed_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
    }
    let got = receive::<Review>(&mut reviews, 2).await;
    assert_eq!(got[0].0, format!("{prefix}/L3/aoi-07/review"));
    let cursors: Vec<u64> = got.iter().map(|(_, r)| r.cursor).collect();
    assert_eq!(cursors, [1, 2]);
    assert_eq!(got[1].1.reviewer, "kenji");
    let ledger = fixture.ledger().clone();
    let started = Instant::now();
    while ledger
        .consumer_cursor(mqtt::REVIEWS_CONSUMER)
        .await
        .unwrap()
        != 2
    {
        assert!(started.elapsed() < Duration::from_secs(20), "cursor saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    task.await.unwrap();
}

/// The publisher reaches the broker through a proxy the test cuts: inspections (store writes)
/// stay fast during the outage, and every verdict arrives once the broker is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_neither_slows_writes_nor_loses_verdicts() {
    let fixture = store_support::sqlite().await;
    let prefix = prefix();
    let mut messages = subscribe(&prefix).await;
    let proxy = proxy::Proxy::start(broker()).await;
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let task = mqtt::spawn(
        publisher(&fixture, &metrics),
        config(proxy.port, &prefix),
        cancel.clone(),
    );
    fixture
        .store
        .insert(store_support::simple("aoi-1", "before"))
        .await
        .unwrap();
    assert_eq!(
        receive::<StoredVerdict>(&mut messages, 1).await[0].1.cursor,
        1
    );

    let proxy = proxy.cut().await;
    wait_until(|| metrics.mqtt_connected.get() == 0).await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        fixture
            .store
            .insert(store_support::simple("aoi-1", &format!("during-{i}")))
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a write took {slowest:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        messages.try_recv().is_err(),
        "nothing can pass during the outage"
    );

    let _proxy = proxy.restore().await;
    let got = receive::<StoredVerdict>(&mut messages, 20).await;
    let cursors: Vec<u64> = got.iter().map(|(_, v)| v.cursor).collect();
    assert_eq!(cursors, (2..=21).collect::<Vec<_>>());
    cancel.cancel();
    task.await.unwrap();
}

async fn wait_until(condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
