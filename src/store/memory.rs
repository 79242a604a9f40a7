//! The store of `--store none`: the newest verdicts in a bounded ring in memory.
//!
//! **Not durable**: everything is gone when the process exits, and the oldest verdicts leave
//! the ring as new ones arrive (a reader that falls further behind than the ring misses them,
//! as it would miss rows that retention deleted from a database). Within those bounds it
//! behaves like the database backends: cursors grow in commit order from 1, a retry of a key
//! still in the ring gets the stored verdict, and every read path (`/v1/verdicts`, long-poll,
//! Server-Sent Events, gRPC `GetVerdict`/`WatchVerdicts`) reads it the same way.

mod activity;
mod reviews;

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

use super::record::now_ms;
use super::{
    Inserted, NewVerdict, Pruned, RetentionPolicy, StoreError, StoreStats, StoreUpkeep,
    StoredVerdict, VerdictQuery, VerdictStore, advance,
};

/// The in-memory store.
pub struct MemoryStore {
    ring: Mutex<Ring>,
    cursor: watch::Sender<u64>,
}

/// Verdicts in cursor order; cursors are consecutive, so a verdict's place is its cursor minus
/// the first one's.
struct Ring {
    entries: VecDeque<Entry>,
    by_key: HashMap<(String, String), u64>,
    last: u64,
    max_rows: usize,
    max_image_bytes: u64,
    image_bytes: u64,
    /// Cursors of entries that hold an image, oldest first.
    with_images: VecDeque<u64>,
    /// The newest review cursor handed out.
    last_review: u64,
}

struct Entry {
    stored: StoredVerdict,
    image: Option<Bytes>,
    stored_at_ms: i64,
    /// The verdict's JSON and note, as a database would hold them.
    bytes: u64,
    /// Its reviews, oldest first (the newest is also in `stored.review`).
    reviews: Vec<crate::store::Review>,
}

impl MemoryStore {
    /// A ring of at most `rows` verdicts (at least one) and `image_bytes` of retained images.
    pub fn new(rows: usize, image_bytes: u64) -> MemoryStore {
        MemoryStore {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                by_key: HashMap::new(),
                last: 0,
                max_rows: rows.max(1),
                max_image_bytes: image_bytes,
                image_bytes: 0,
                with_images: VecDeque::new(),
                last_review: 0,
            }),
            cursor: watch::channel(0).0,
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Ring {
    fn first(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.last + 1, |e| e.stored.cursor)
    }

    fn entry(&self, cursor: u64) -> Option<&Entry> {
        let index = usize::try_from(cursor.checked_sub(self.first())?).ok()?;
        self.entries.get(index)
    }

    fn by_key(&self, station_id: &str, inspection_id: &str) -> Option<&Entry> {
        let key = (station_id.to_string(), inspection_id.to_string());
        self.entry(*self.by_key.get(&key)?)
    }

    /// Drops the oldest verdict (with its image).
    fn pop_oldest(&mut self) -> bool {
        let Some(oldest) = self.entries.pop_front() else {
            return false;
        };
        let verdict = &oldest.stored.verdict;
        self.by_key
            .remove(&(verdict.station_id.clone(), verdict.inspection_id.clone()));
        if let Some(image) = oldest.image {
            self.image_bytes -= image.len() as u64;
            self.with_images.pop_front();
        }
        true
    }

    /// Drops the oldest images until at most `limit` bytes remain; returns how many it dropped.
    fn trim_images(&mut self, limit: u64) -> u64 {
        let mut dropped = 0;
        while self.image_bytes > limit {
            let Some(cursor) = self.with_images.pop_front() else {
                break;
            };
            let first = self.first();
            let Some(entry) = cursor
                .checked_sub(first)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| self.entries.get_mut(i))
            else {
                continue;
            };
            if let Some(image) = entry.image.take() {
                self.image_bytes -= image.len() as u64;
                entry.stored.image_retained = false;
                dropped += 1;
            }
        }
        dropped
    }
}

#[async_trait::async_trait]
impl VerdictStore for MemoryStore {
    async fn insert(&self, verdict: NewVerdict) -> Result<Inserted, StoreError> {
        let json = serde_json::to_vec(&verdict.verdict)
            .map_err(|e| StoreError::Corrupt(format!("verdict does not serialize: {e}")))?;
        let bytes = (json.len() + verdict.note.len()) as u64;
        let mut ring = self.ring();
        let v = &verdict.verdict;
        if let Some(existing) = ring.by_key(&v.station_id, &v.inspection_id) {
            return Ok(Inserted::Existing(existing.stored.clone()));
        }
        let cursor = ring.last + 1;
        let stored_at_ms = now_ms();
        let stored = verdict.stored(cursor, stored_at_ms);
        ring.by_key
            .insert((v.station_id.clone(), v.inspection_id.clone()), cursor);
        if let Some(image) = &verdict.image {
            ring.image_bytes += image.len() as u64;
            ring.with_images.push_back(cursor);
        }
        ring.entries.push_back(Entry {
            stored: stored.clone(),
            image: verdict.image,
            stored_at_ms,
            bytes,
            reviews: Vec::new(),
        });
        ring.last = cursor;
        while ring.entries.len() > ring.max_rows && ring.pop_oldest() {}
        let limit = ring.max_image_bytes;
        ring.trim_images(limit);
        drop(ring);
        advance(&self.cursor, cursor);
        Ok(Inserted::New(stored))
    }

    async fn get(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<StoredVerdict>, StoreError> {
        Ok(self
            .ring()
            .by_key(station_id, inspection_id)
            .map(|e| e.stored.clone()))
    }

    async fn list(&self, query: &VerdictQuery) -> Result<Vec<StoredVerdict>, StoreError> {
        let ring = self.ring();
        let skip =
            usize::try_from((query.after + 1).saturating_sub(ring.first())).unwrap_or(usize::MAX);
        Ok(ring
            .entries
            .iter()
            .skip(skip)
            .filter(|e| query.matches(&e.stored))
            .take(query.effective_limit())
            .map(|e| e.stored.clone())
            .collect())
    }

    async fn image(
        &self,
        station_id: &str,
        inspection_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .ring()
            .by_key(station_id, inspection_id)
            .and_then(|e| e.image.as_ref().map(|i| i.to_vec())))
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.cursor.subscribe()
    }
}

#[async_trait::async_trait]
impl StoreUpkeep for MemoryStore {
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let ring = self.ring();
        let records: u64 = ring.entries.iter().map(|e| e.bytes).sum();
        Ok(StoreStats {
            rows: ring.entries.len() as u64,
            bytes: records + ring.image_bytes,
            images: ring.with_images.len() as u64,
            image_bytes: ring.image_bytes,
        })
    }

    async fn prune(&self, policy: &RetentionPolicy, now_ms: i64) -> Result<Pruned, StoreError> {
        let mut ring = self.ring();
        let mut pruned = Pruned::default();
        if let Some(cutoff) = policy.cutoff_ms(now_ms) {
            while ring
                .entries
                .front()
                .is_some_and(|e| e.stored_at_ms < cutoff)
                && ring.pop_oldest()
            {
                pruned.verdicts += 1;
            }
        }
        if let Some(rows) = policy.max_rows {
            while ring.entries.len() as u64 > rows && ring.pop_oldest() {
                pruned.verdicts += 1;
            }
        }
        if let Some(bytes) = policy.max_image_bytes {
            pruned.images += ring.trim_images(bytes);
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::verdict::{AttentionMap, Timings, Verdict};

    fn record(station: &str, id: &str, line: &str, image: Option<&'static [u8]>) -> NewVerdict {
        NewVerdict {
            verdict: Verdict {
                inspection_id: id.into(),
                station_id: station.into(),
                model: "m".into(),
                model_version: 1,
                label: "void".into(),
                display_label: "Void".into(),
                is_defect: true,
                confidence: 0.9,
                probabilities: BTreeMap::new(),
                attention: AttentionMap {
                    width: 1,
                    height: 1,
                    values: vec![1.0],
                },
                timings: Timings::default(),
                batch_size: 1,
                received_at: chrono::Utc::now(),
                metadata: BTreeMap::from([("line".to_string(), line.to_string())]),
                disposition: None,
                decision: None,
                ocr: None,
                model_note: None,
            },
            note: String::new(),
            image_sha256: id.into(),
            image: image.map(Bytes::from_static),
        }
    }

    #[tokio::test]
    async fn the_ring_keeps_the_newest_rows_and_forgets_the_keys_of_the_rest() {
        let store = MemoryStore::new(3, 1 << 20);
        for i in 1..=5 {
            let inserted = store
                .insert(record("s", &format!("u{i}"), "L1", None))
                .await;
            assert!(matches!(inserted, Ok(Inserted::New(ref v)) if v.cursor == i));
        }
        let all = store
            .list(&VerdictQuery {
                limit: 10,
                ..VerdictQuery::default()
            })
            .await;
        let cursors: Vec<u64> = all.unwrap().iter().map(|v| v.cursor).collect();
        assert_eq!(cursors, vec![3, 4, 5]);
        assert!(store.get("s", "u1").await.unwrap().is_none());
        assert_eq!(store.get("s", "u4").await.unwrap().unwrap().cursor, 4);
        let again = store.insert(record("s", "u4", "L1", None)).await.unwrap();
        assert!(matches!(again, Inserted::Existing(v) if v.cursor == 4));
        assert_eq!(*store.subscribe().borrow(), 5);
        let after = VerdictQuery {
            after: 4,
            limit: 10,
            ..VerdictQuery::default()
        };
        assert_eq!(store.list(&after).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn filters_and_image_bytes_are_honoured() {
        let store = MemoryStore::new(10, 5);
        store
            .insert(record("a", "1", "L1", Some(b"abc")))
            .await
            .unwrap();
        store
            .insert(record("b", "2", "L2", Some(b"def")))
            .await
            .unwrap();
        let line = crate::store::Filters {
            line: Some("L2".into()),
            ..Default::default()
        }
        .after(0, Some(10));
        let found = store.list(&line).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].verdict.station_id, "b");
        assert_eq!(
            store.image("a", "1").await.unwrap(),
            None,
            "pushed out by the byte cap"
        );
        assert_eq!(store.image("b", "2").await.unwrap().unwrap(), b"def");
        assert!(!store.get("a", "1").await.unwrap().unwrap().image_retained);
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.rows, stats.images, stats.image_bytes), (2, 1, 3));
    }
}
