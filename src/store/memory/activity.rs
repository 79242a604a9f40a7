//! The in-memory [`StationActivity`]: the same counts as the SQL backends, from the ring.

use std::collections::{BTreeMap, HashMap};

use super::MemoryStore;
use crate::store::activity::{ActivityCount, StationActivity};
use crate::store::{StoreError, StoredVerdict};

#[async_trait::async_trait]
impl StationActivity for MemoryStore {
    async fn activity(
        &self,
        since_ms: i64,
        bucket_ms: i64,
        up_to: u64,
    ) -> Result<Vec<ActivityCount>, StoreError> {
        let ring = self.ring();
        let mut counts = BTreeMap::new();
        for entry in ring
            .entries
            .iter()
            .filter(|e| e.stored_at_ms >= since_ms && e.stored.cursor <= up_to)
        {
            let verdict = &entry.stored.verdict;
            let bucket = ((entry.stored_at_ms - since_ms) / bucket_ms.max(1)).unsigned_abs();
            let key = (
                verdict.station_id.clone(),
                bucket,
                verdict.disposition.map(|d| d.as_str()),
                verdict.is_defect,
            );
            *counts.entry(key).or_insert(0u64) += 1;
        }
        Ok(counts
            .into_iter()
            .map(
                |((station_id, bucket, disposition, is_defect), count)| ActivityCount {
                    station_id,
                    bucket,
                    disposition: disposition.and_then(|d| d.parse().ok()),
                    is_defect,
                    count,
                },
            )
            .collect())
    }

    async fn latest_per_station(&self, up_to: u64) -> Result<Vec<StoredVerdict>, StoreError> {
        let ring = self.ring();
        let mut latest: HashMap<&str, &StoredVerdict> = HashMap::new();
        for entry in ring.entries.iter().filter(|e| e.stored.cursor <= up_to) {
            latest.insert(&entry.stored.verdict.station_id, &entry.stored);
        }
        let mut found: Vec<StoredVerdict> = latest.into_values().cloned().collect();
        found.sort_by_key(|v| v.cursor);
        Ok(found)
    }
}
