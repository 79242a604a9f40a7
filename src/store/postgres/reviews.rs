//! PostgreSQL's [`ReviewStore`]: each review is numbered under the one-row `review_cursor` lock
//! held until its transaction commits, so review cursors follow commit order across replicas
//! (as verdict cursors do); reviews are rare, so they need no group commit.

use super::{PostgresStore, corrupt, unavailable};
use crate::store::dialect::Dialect;
use crate::store::reviews::{self, Agreement, Outcome, Review, ReviewInserted, ReviewStore};
use crate::store::{StoreError, to_sql_int};

#[async_trait::async_trait]
impl ReviewStore for PostgresStore {
    async fn add_review(&self, review: Review) -> Result<ReviewInserted, StoreError> {
        let json = reviews::to_json(&review)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let last: i64 = tx
            .query_one("SELECT last FROM review_cursor FOR UPDATE", &[])
            .await
            .map_err(unavailable)?
            .try_get(0)
            .map_err(corrupt)?;
        let verdict_seq = to_sql_int(review.verdict_cursor);
        if let Some(row) = tx
            .query_opt(
                reviews::SELECT_BY_REVIEWER,
                &[&verdict_seq, &review.reviewer],
            )
            .await
            .map_err(unavailable)?
        {
            let seq: i64 = row.try_get(0).map_err(corrupt)?;
            let stored: String = row.try_get(1).map_err(corrupt)?;
            return reviews::decode(seq, &stored).map(ReviewInserted::Existing);
        }
        let seq = last + 1;
        tx.execute(
            &reviews::insert_review(Dialect::Postgres, true),
            &[
                &verdict_seq,
                &review.reviewer,
                &review.model,
                &to_sql_int(review.model_version),
                &(review.outcome == Outcome::Confirmed),
                &review.reviewed_at.timestamp_millis(),
                &json,
                &seq,
            ],
        )
        .await
        .map_err(unavailable)?;
        tx.execute("UPDATE review_cursor SET last = $1", &[&seq])
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(ReviewInserted::New(Review {
            cursor: seq.unsigned_abs(),
            ..review
        }))
    }

    async fn reviews_after(&self, after: u64, limit: usize) -> Result<Vec<Review>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                reviews::SELECT_AFTER,
                &[&to_sql_int(after), &to_sql_int(limit as u64)],
            )
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(0).map_err(corrupt)?;
                let json: String = row.try_get(1).map_err(corrupt)?;
                reviews::decode(seq, &json)
            })
            .collect()
    }

    async fn agreement(&self) -> Result<Vec<Agreement>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(reviews::AGREEMENT, &[])
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let count = |i: usize| row.try_get::<_, i64>(i).map_err(corrupt);
                Ok(Agreement {
                    model: row.try_get(0).map_err(corrupt)?,
                    model_version: count(1)?.unsigned_abs(),
                    reviews: count(2)?.unsigned_abs(),
                    confirmed: count(3)?.unsigned_abs(),
                })
            })
            .collect()
    }
}
