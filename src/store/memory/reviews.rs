//! The in-memory [`ReviewStore`]: reviews live in their verdict's ring entry and leave the ring
//! with it, as retention deletes them with their verdict in a database.

use super::MemoryStore;
use crate::store::StoreError;
use crate::store::reviews::{Agreement, Outcome, Review, ReviewInserted, ReviewStore};

#[async_trait::async_trait]
impl ReviewStore for MemoryStore {
    async fn add_review(&self, review: Review) -> Result<ReviewInserted, StoreError> {
        let mut ring = self.ring();
        let cursor = ring.last_review + 1;
        let first = ring.first();
        let entry = review
            .verdict_cursor
            .checked_sub(first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| ring.entries.get_mut(i))
            .ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "verdict {} has left the in-memory ring (--store none keeps the newest only)",
                    review.verdict_cursor
                ))
            })?;
        if let Some(existing) = entry.reviews.iter().find(|r| r.reviewer == review.reviewer) {
            return Ok(ReviewInserted::Existing(existing.clone()));
        }
        let stored = Review { cursor, ..review };
        entry.reviews.push(stored.clone());
        entry.stored.review = Some(stored.clone());
        ring.last_review = cursor;
        Ok(ReviewInserted::New(stored))
    }

    async fn reviews_after(&self, after: u64, limit: usize) -> Result<Vec<Review>, StoreError> {
        let ring = self.ring();
        let mut reviews: Vec<Review> = ring
            .entries
            .iter()
            .flat_map(|e| e.reviews.iter())
            .filter(|r| r.cursor > after)
            .cloned()
            .collect();
        reviews.sort_by_key(|r| r.cursor);
        reviews.truncate(limit);
        Ok(reviews)
    }

    async fn agreement(&self) -> Result<Vec<Agreement>, StoreError> {
        let ring = self.ring();
        let mut by_model: std::collections::BTreeMap<(String, u64), (u64, u64)> =
            std::collections::BTreeMap::new();
        for review in ring.entries.iter().flat_map(|e| e.reviews.iter()) {
            let counts = by_model
                .entry((review.model.clone(), review.model_version))
                .or_default();
            counts.0 += 1;
            counts.1 += u64::from(review.outcome == Outcome::Confirmed);
        }
        Ok(by_model
            .into_iter()
            .map(|((model, model_version), (reviews, confirmed))| Agreement {
                model,
                model_version,
                reviews,
                confirmed,
            })
            .collect())
    }
}
