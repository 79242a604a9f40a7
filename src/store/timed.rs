//! Every store operation under a timeout, reported to [`StoreHealth`]: a database that stalls
//! (connections open, nothing moving) fails requests after the timeout with 503, instead of
//! holding them until the client gives up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::health::StoreHealth;
use super::{
    Inserted, NewVerdict, SharedStore, StoreError, StoredVerdict, VerdictQuery, VerdictStore,
};

/// A store whose operations time out.
pub struct TimedStore {
    inner: SharedStore,
    timeout: Duration,
    health: Arc<StoreHealth>,
}

impl TimedStore {
    /// Wraps `inner`; failures and timeouts are reported to `health`.
    pub fn new(inner: SharedStore, timeout: Duration, health: Arc<StoreHealth>) -> TimedStore {
        TimedStore {
            inner,
            timeout,
            health,
        }
    }

    async fn timed<T>(
        &self,
        what: &str,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let outcome = match tokio::time::timeout(self.timeout, operation).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the store did not {what} within {}",
                humantime::format_duration(self.timeout)
            ))),
        };
        if let Err(StoreError::Unavailable(error)) = &outcome {
            self.health.failed(error);
        }
        outcome
    }
}

#[async_trait::async_trait]
impl VerdictStore for TimedStore {
    /// A timed-out insert may still commit later; the station's retry with the same key then
    /// gets that verdict, so nothing is acknowledged twice or lost.
    async fn insert(&self, verdict: NewVerdict) -> Result<Inserted, StoreError> {
        let inserted = self.timed("commit", self.inner.insert(verdict)).await?;
        self.health.committed();
        Ok(inserted)
    }

    async fn get(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<StoredVerdict>, StoreError> {
        self.timed("answer", self.inner.get(station_id, inspection_id))
            .await
    }

    async fn list(&self, query: &VerdictQuery) -> Result<Vec<StoredVerdict>, StoreError> {
        self.timed("answer", self.inner.list(query)).await
    }

    async fn image(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.timed("answer", self.inner.image(station_id, inspection_id))
            .await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.subscribe()
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.timed("answer its probe", self.inner.probe()).await
    }
}
