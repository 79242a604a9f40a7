//! Publishes every stored verdict to an MQTT broker (QoS 1), for plants with a broker or a
//! unified namespace: topic `<prefix>/<line>/<station>/verdict`, payload the stored verdict's
//! JSON (the same record as `GET /v1/verdicts`, `cursor` included so subscribers can drop the
//! duplicates QoS 1 allows). Reviews go the same way to the sibling topic
//! `<prefix>/<line>/<station>/review` (the review's JSON, with its own `cursor`).
//!
//! The verdict store is the outbox: inspections only write the store, and this task reads it
//! after its own durable cursor, publishes a batch, waits for every PUBACK, then saves the
//! cursor. A broker outage therefore never slows or fails an inspection; when the broker comes
//! back the task resumes from its cursor and catches up, also across restarts. With several
//! replicas on one PostgreSQL store, a lease in the store lets one replica publish at a time.
//!
//! A verdict that cannot be published (its JSON larger than the packet limit, which is sized
//! from the request limits so a valid request always fits) is a dead letter: logged, counted in
//! `kensa_mqtt_dead_letters_total`, and replaced by a small notice on `<prefix>/dead-letter`
//! naming its cursor and key (readers fetch it from `/v1/verdicts`), so the stream moves on.
//! `<prefix>/status/<client id>` holds `online` (retained) while the publisher is connected and
//! `offline` after it (its last will, if the connection dies).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::record::now_ms;
use crate::store::{ConsumerLedger, Review, ReviewStore, SharedStore, StoredVerdict, VerdictQuery};

/// The publisher's cursor and lease name in the store.
pub const CONSUMER: &str = "mqtt";
/// The cursor of the reviews it has published (under the same lease).
pub const REVIEWS_CONSUMER: &str = "mqtt-reviews";
/// Verdicts published before waiting for their acknowledgements.
const BATCH: usize = 100;
/// Longest wait for the broker's CONNACK or for a batch's PUBACKs before reconnecting.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replica holds the publishing lease without renewing it.
const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often an idle publisher looks at the store (and renews its lease) without a wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(1);
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id; also the lease holder, so it must differ between replicas.
    pub client_id: String,
    /// First topic level(s), `kensa` by default.
    pub topic_prefix: String,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// TLS to the broker; the CA file inside, or the system's roots when it names none.
    pub tls: Option<Option<PathBuf>>,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// Largest packet sent or received; a verdict whose message would be larger is a dead
    /// letter. See [`packet_limit`].
    pub max_packet_bytes: usize,
}

/// The packet limit that fits any verdict a valid request can produce: a fixed allowance for
/// the record's numbers and names, plus every text field at its longest with each character
/// escaped as JSON's worst case (`\u00XX`, 6 bytes).
pub fn packet_limit(max_note_chars: usize) -> usize {
    use crate::inspector::{MAX_ID_CHARS, MAX_METADATA_FIELDS, MAX_METADATA_VALUE_CHARS};
    let text_chars = max_note_chars
        + 2 * MAX_ID_CHARS
        + MAX_METADATA_FIELDS * (MAX_ID_CHARS + MAX_METADATA_VALUE_CHARS);
    (64 << 10) + 6 * text_chars
}

/// What the publisher reads and writes: the verdicts, its own cursor and lease, its metrics
/// (`kensa_mqtt_published_total`, `kensa_mqtt_connected`).
#[derive(Clone)]
pub struct Publisher {
    /// The verdicts to publish.
    pub store: SharedStore,
    /// The reviews to publish.
    pub reviews: Arc<dyn ReviewStore>,
    /// Where the publisher keeps its cursor and lease.
    pub ledger: Arc<dyn ConsumerLedger>,
    /// Where it counts.
    pub metrics: Arc<Metrics>,
}

/// Starts the publisher; it runs until `cancel`.
pub fn spawn(
    publisher: Publisher,
    config: MqttConfig,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(publisher, config, cancel))
}

/// The topic of one verdict: `<prefix>/<line>/<station>/verdict`, `_` for a missing line.
pub fn topic(prefix: &str, stored: &StoredVerdict) -> String {
    let verdict = &stored.verdict;
    let line = verdict.metadata.get("line").map_or("_", String::as_str);
    format!(
        "{prefix}/{}/{}/verdict",
        topic_level(line),
        topic_level(&verdict.station_id)
    )
}

/// The topic of one review: `<prefix>/<line>/<station>/review`, beside its verdict's topic.
pub fn review_topic(prefix: &str, review: &Review) -> String {
    format!(
        "{prefix}/{}/{}/review",
        topic_level(review.line.as_deref().unwrap_or("_")),
        topic_level(&review.station_id)
    )
}

/// A topic level cannot hold `/`, the wildcards `+` and `#`, or NUL.
fn topic_level(value: &str) -> String {
    let level: String = value
        .chars()
        .map(|c| match c {
            '/' | '+' | '#' | '\0' => '_',
            c => c,
        })
        .collect();
    if level.is_empty() { "_".into() } else { level }
}

async fn run(publisher: Publisher, config: MqttConfig, cancel: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let ended = session(&publisher, &config, &cancel, &mut backoff).await;
        publisher.metrics.mqtt_connected.set(0);
        match ended {
            Ok(()) => return,
            Err(error) => tracing::warn!(
                %error,
                retry_in = ?backoff,
                broker = %format!("{}:{}", config.host, config.port),
                "MQTT publishing paused"
            ),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Events of the MQTT event loop, or why it stopped.
type Events = mpsc::UnboundedReceiver<Result<Event, String>>;

/// One broker connection: publish until cancelled (Ok) or until something fails (Err).
async fn session(
    publisher: &Publisher,
    config: &MqttConfig,
    cancel: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), String> {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options.set_keep_alive(config.keep_alive);
    options.set_clean_session(true);
    options.set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
    let status = status_topic(config);
    options.set_last_will(LastWill::new(&status, "offline", QoS::AtLeastOnce, true));
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user, password);
    }
    if let Some(ca) = &config.tls {
        options.set_transport(Transport::tls_with_config(tls_configuration(
            ca.as_deref(),
        )?));
    }
    let (client, mut event_loop) = AsyncClient::new(options, BATCH * 2);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            let event = event_loop.poll().await.map_err(|e| e.to_string());
            let failed = event.is_err();
            if events_tx.send(event).is_err() || failed {
                return;
            }
        }
    });
    let result = async {
        connected(&mut events).await?;
        client
            .publish(&status, QoS::AtLeastOnce, true, "online")
            .await
            .map_err(|e| e.to_string())?;
        acknowledged(&mut events, 1).await?;
        *backoff = Duration::from_secs(1);
        publisher.metrics.mqtt_connected.set(1);
        tracing::info!(broker = %format!("{}:{}", config.host, config.port), "MQTT connected");
        publish_loop(publisher, config, cancel, &client, &mut events).await
    }
    .await;
    if result.is_ok() {
        let _ = client
            .publish(&status, QoS::AtLeastOnce, true, "offline")
            .await;
        let _ = acknowledged(&mut events, 1).await;
        let _ = client.disconnect().await;
    }
    driver.abort();
    result
}

async fn connected(events: &mut Events) -> Result<(), String> {
    let deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        match next_event(events, deadline).await? {
            Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                return Ok(());
            }
            Event::Incoming(Packet::ConnAck(ack)) => {
                return Err(format!("broker refused the connection: {:?}", ack.code));
            }
            _ => {}
        }
    }
}

async fn publish_loop(
    publisher: &Publisher,
    config: &MqttConfig,
    cancel: &CancellationToken,
    client: &AsyncClient,
    events: &mut Events,
) -> Result<(), String> {
    let Publisher {
        store,
        ledger,
        metrics,
        ..
    } = publisher;
    let mut changes = store.subscribe();
    loop {
        changes.borrow_and_update();
        let leased = ledger
            .acquire_lease(CONSUMER, &config.client_id, now_ms(), LEASE_TTL)
            .await
            .map_err(|e| e.to_string())?;
        let batch = if leased {
            let after = ledger
                .consumer_cursor(CONSUMER)
                .await
                .map_err(|e| e.to_string())?;
            let query = VerdictQuery {
                after,
                limit: BATCH,
                ..VerdictQuery::default()
            };
            store.list(&query).await.map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        let reviews = if leased {
            publish_reviews(publisher, config, client, events).await?
        } else {
            0
        };
        if batch.is_empty() {
            if reviews == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(IDLE_RECHECK) => {}
                    event = events.recv() => {
                        event.ok_or("the MQTT event loop stopped")??;
                    }
                }
            }
            continue;
        }
        for stored in &batch {
            let (topic, payload) = message(config, stored, metrics);
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string())?;
        }
        acknowledged(events, batch.len()).await?;
        let last = batch.last().map_or(0, |v| v.cursor);
        ledger
            .save_consumer_cursor(CONSUMER, last)
            .await
            .map_err(|e| e.to_string())?;
        metrics.mqtt_published.inc_by(batch.len() as u64);
    }
}

/// The topic and payload of one stored verdict, or of its dead-letter notice when the verdict
/// cannot be published.
fn message(config: &MqttConfig, stored: &StoredVerdict, metrics: &Metrics) -> (String, Vec<u8>) {
    let topic = topic(&config.topic_prefix, stored);
    let reason = match serde_json::to_vec(stored) {
        // Fixed header, topic length and packet id around the topic and payload.
        Ok(payload) if payload.len() + topic.len() + 16 <= config.max_packet_bytes => {
            return (topic, payload);
        }
        Ok(payload) => format!(
            "its message is {} bytes, over the packet limit of {}",
            payload.len() + topic.len(),
            config.max_packet_bytes
        ),
        Err(error) => format!("it does not serialize: {error}"),
    };
    let verdict = &stored.verdict;
    metrics.mqtt_dead_letters.inc();
    tracing::error!(
        cursor = stored.cursor,
        station_id = %verdict.station_id,
        inspection_id = %verdict.inspection_id,
        %reason,
        "verdict not published over MQTT (dead letter); read it from /v1/verdicts"
    );
    let notice = serde_json::json!({
        "cursor": stored.cursor,
        "station_id": verdict.station_id,
        "inspection_id": verdict.inspection_id,
        "reason": reason,
    });
    (
        format!("{}/dead-letter", config.topic_prefix),
        notice.to_string().into_bytes(),
    )
}

/// `<prefix>/status/<client id>`: `online` while connected, `offline` after.
fn status_topic(config: &MqttConfig) -> String {
    format!(
        "{}/status/{}",
        config.topic_prefix,
        topic_level(&config.client_id)
    )
}

/// rustls for the broker connection, verifying it against `ca` or the system's roots.
fn tls_configuration(ca: Option<&std::path::Path>) -> Result<TlsConfiguration, String> {
    let config = crate::transport::tls::client_config(ca).map_err(|e| format!("{e:#}"))?;
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// Publishes one batch of the reviews after the review cursor (QoS 1, the review's JSON) and
/// saves the cursor once the broker acknowledged them all; returns how many it published.
async fn publish_reviews(
    publisher: &Publisher,
    config: &MqttConfig,
    client: &AsyncClient,
    events: &mut Events,
) -> Result<usize, String> {
    let after = publisher
        .ledger
        .consumer_cursor(REVIEWS_CONSUMER)
        .await
        .map_err(|e| e.to_string())?;
    let reviews = publisher
        .reviews
        .reviews_after(after, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let Some(last) = reviews.last().map(|r| r.cursor) else {
        return Ok(0);
    };
    for review in &reviews {
        let payload = serde_json::to_vec(review).map_err(|e| e.to_string())?;
        client
            .publish(
                review_topic(&config.topic_prefix, review),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    acknowledged(events, reviews.len()).await?;
    publisher
        .ledger
        .save_consumer_cursor(REVIEWS_CONSUMER, last)
        .await
        .map_err(|e| e.to_string())?;
    Ok(reviews.len())
}

/// Waits until `count` publishes went out and the broker acknowledged each.
async fn acknowledged(events: &mut Events, count: usize) -> Result<(), String> {
    let deadline = Instant::now() + ACK_TIMEOUT;
    let mut sent = 0;
    let mut waiting = HashSet::new();
    while sent < count || !waiting.is_empty() {
        match next_event(events, deadline).await? {
            Event::Outgoing(Outgoing::Publish(id)) => {
                sent += 1;
                waiting.insert(id);
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                waiting.remove(&ack.pkid);
            }
            _ => {}
        }
    }
    Ok(())
}

async fn next_event(events: &mut Events, deadline: Instant) -> Result<Event, String> {
    match tokio::time::timeout_at(deadline, events.recv()).await {
        Err(_) => Err(format!(
            "the broker did not answer within {}s",
            ACK_TIMEOUT.as_secs()
        )),
        Ok(None) => Err("the MQTT event loop stopped".into()),
        Ok(Some(event)) => event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_levels_never_contain_wildcards_or_separators() {
        assert_eq!(topic_level("aoi/07+#"), "aoi_07__");
        assert_eq!(topic_level(""), "_");
        assert_eq!(topic_level("L3"), "L3");
    }
}
