//! Background upkeep of the store: the retention sweep on its schedule, and the store's and the
//! MQTT publisher's gauges.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SharedStore;
use super::record::now_ms;
use super::retention::RetentionPolicy;
use crate::metrics::{Metrics, PrunedLabels};
use crate::publish::mqtt::{self, PublisherStats};

/// How often the cursor and MQTT gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// How often rows and bytes are counted (a full count, so not at every scrape).
const STATS_EVERY: Duration = Duration::from_secs(15);

/// What the upkeep task looks after.
pub struct Upkeep {
    /// The store.
    pub store: SharedStore,
    /// What retention deletes.
    pub policy: RetentionPolicy,
    /// How often retention runs (the first sweep runs at start).
    pub prune_every: Duration,
    /// Where the gauges go.
    pub metrics: Arc<Metrics>,
    /// The MQTT publisher's progress, when it runs.
    pub mqtt: Option<Arc<PublisherStats>>,
}

impl Upkeep {
    /// Runs until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut gauges = tokio::time::interval(GAUGES_EVERY);
        let mut stats = tokio::time::interval(STATS_EVERY);
        let mut prune = tokio::time::interval(self.prune_every.max(Duration::from_secs(1)));
        for ticks in [&mut gauges, &mut stats, &mut prune] {
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut published = 0;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = gauges.tick() => self.refresh_gauges(&mut published),
                _ = stats.tick() => self.count().await,
                _ = prune.tick() => {
                    self.sweep().await;
                    self.count().await;
                }
            }
        }
    }

    fn refresh_gauges(&self, published: &mut u64) {
        let cursor = *self.store.subscribe().borrow();
        self.metrics
            .store_cursor
            .set(i64::try_from(cursor).unwrap_or(i64::MAX));
        if let Some(mqtt) = &self.mqtt {
            let now = mqtt.published.load(Ordering::Relaxed);
            self.metrics
                .mqtt_published
                .inc_by(now.saturating_sub(*published));
            *published = now;
            self.metrics
                .mqtt_connected
                .set(i64::from(mqtt.connected.load(Ordering::Relaxed)));
        }
    }

    async fn count(&self) {
        match self.store.stats().await {
            Ok(stats) => {
                let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                self.metrics.store_rows.set(gauge(stats.rows));
                self.metrics.store_bytes.set(gauge(stats.bytes));
                self.metrics.store_images.set(gauge(stats.images));
            }
            Err(error) => tracing::warn!(%error, "counting stored verdicts failed"),
        }
        if self.mqtt.is_some() {
            match self.store.consumer_cursor(mqtt::CONSUMER).await {
                Ok(done) => {
                    let cursor = *self.store.subscribe().borrow();
                    let backlog = cursor.saturating_sub(done);
                    self.metrics
                        .mqtt_backlog
                        .set(i64::try_from(backlog).unwrap_or(i64::MAX));
                }
                Err(error) => tracing::warn!(%error, "reading the MQTT cursor failed"),
            }
        }
    }

    async fn sweep(&self) {
        if self.policy.keeps_everything() {
            return;
        }
        match self.store.prune(&self.policy, now_ms()).await {
            Ok(pruned) => {
                for (kind, count) in [("verdicts", pruned.verdicts), ("images", pruned.images)] {
                    self.metrics
                        .store_pruned
                        .get_or_create(&PrunedLabels { kind: kind.into() })
                        .inc_by(count);
                }
                if pruned.verdicts + pruned.images > 0 {
                    tracing::info!(
                        verdicts = pruned.verdicts,
                        images = pruned.images,
                        "retention deleted old verdicts"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "retention sweep failed; retrying next interval"),
        }
    }
}
