//! Whether the store can commit: every store operation runs under a timeout ([`super::timed`])
//! and reports here, and a probe asks the store every second, so a database that stops
//! answering (down, or stalled with its connections open) turns readiness and `kensa_store_up`
//! to 0 within the timeout, and back once it answers again. The probe of PostgreSQL takes the
//! cursor lock every commit takes, so a store that reads but cannot commit stays down.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SharedStore;

/// How often the probe reads the store.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The store's health as its operations report it.
#[derive(Debug)]
pub struct StoreHealth {
    up: watch::Sender<bool>,
    last_failure: Mutex<Option<Instant>>,
    quiet: Duration,
}

impl StoreHealth {
    /// Up at start (the store just opened); a successful probe brings a failed store back up
    /// only after `quiet` without a failure, so a store that reads but cannot commit stays down.
    pub fn new(quiet: Duration) -> StoreHealth {
        StoreHealth {
            up: watch::Sender::new(true),
            last_failure: Mutex::new(None),
            quiet,
        }
    }

    /// An operation failed or timed out.
    pub fn failed(&self, error: &str) {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(Instant::now());
        }
        if self.up.send_replace(false) {
            tracing::error!(%error, "verdict store cannot commit; reporting not ready");
        }
    }

    /// A verdict was committed.
    pub fn committed(&self) {
        self.recovered();
    }

    /// The probe got an answer.
    pub fn probed(&self) {
        let quiet = self
            .last_failure
            .lock()
            .map(|last| last.is_none_or(|at| at.elapsed() >= self.quiet))
            .unwrap_or(true);
        if quiet {
            self.recovered();
        }
    }

    fn recovered(&self) {
        if !self.up.send_replace(true) {
            tracing::info!("verdict store answers again; ready");
        }
    }

    /// Follows the health: true while the store commits.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }
}

/// Probes the store every [`PROBE_EVERY`] through `store` (a timed store, which reports
/// failures and timeouts itself) until cancelled.
pub async fn probe(
    store: SharedStore,
    health: std::sync::Arc<StoreHealth>,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if store.probe().await.is_ok() {
            health.probed();
        }
    }
}
