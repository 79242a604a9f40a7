//! Background upkeep of the store: the retention sweep on its schedule, and the store's gauges
//! (rows, bytes, the committed cursor, the review agreement, and the MQTT backlog when the
//! publisher runs).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::record::now_ms;
use super::retention::RetentionPolicy;
use super::{ConsumerLedger, ReviewStore, Store};
use crate::metrics::{Metrics, ModelLabels, PrunedLabels};

/// How often the cursor gauge is refreshed.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// How often rows and bytes are counted (a full count, so not at every scrape).
const STATS_EVERY: Duration = Duration::from_secs(15);

/// What the upkeep task looks after.
pub struct Upkeep {
    /// The store.
    pub store: Store,
    /// What retention deletes.
    pub policy: RetentionPolicy,
    /// How often retention runs (the first sweep runs at start).
    pub prune_every: Duration,
    /// Where the gauges go.
    pub metrics: Arc<Metrics>,
    /// The MQTT publisher, when it runs: its backlog is a store gauge.
    pub mqtt: Option<OutboxConsumer>,
}

/// A consumer that reads the store as an outbox, named as in its ledger.
pub struct OutboxConsumer {
    /// Where it keeps its cursor.
    pub ledger: Arc<dyn ConsumerLedger>,
    /// Its name there.
    pub name: &'static str,
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
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = gauges.tick() => self.refresh_cursor(),
                _ = stats.tick() => self.count().await,
                _ = prune.tick() => {
                    self.sweep().await;
                    self.count().await;
                }
            }
        }
    }

    fn refresh_cursor(&self) {
        let cursor = *self.store.verdicts.subscribe().borrow();
        self.metrics
            .store_cursor
            .set(i64::try_from(cursor).unwrap_or(i64::MAX));
    }

    async fn count(&self) {
        match self.store.upkeep.stats().await {
            Ok(stats) => {
                let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                self.metrics.store_rows.set(gauge(stats.rows));
                self.metrics.store_bytes.set(gauge(stats.bytes));
                self.metrics.store_images.set(gauge(stats.images));
            }
            Err(error) => tracing::warn!(%error, "counting stored verdicts failed"),
        }
        refresh_agreement(self.store.reviews.as_ref(), &self.metrics).await;
        if let Some(consumer) = &self.mqtt {
            match consumer.ledger.consumer_cursor(consumer.name).await {
                Ok(done) => {
                    let cursor = *self.store.verdicts.subscribe().borrow();
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
        match self.store.upkeep.prune(&self.policy, now_ms()).await {
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

/// Sets `kensa_review_agreement_ratio` from every stored review (so it counts the reviews given
/// on every replica and survives restarts); after each sweep, and after each new review.
pub async fn refresh_agreement(reviews: &dyn ReviewStore, metrics: &Metrics) {
    match reviews.agreement().await {
        Ok(rows) => {
            for row in rows.iter().filter(|row| row.reviews > 0) {
                metrics
                    .review_agreement
                    .get_or_create(&ModelLabels {
                        model: row.model.clone(),
                        version: row.model_version.to_string(),
                    })
                    .set(row.confirmed as f64 / row.reviews as f64);
            }
        }
        Err(error) => tracing::warn!(%error, "reading the review agreement failed"),
    }
}
