//! SQLite's [`ReviewStore`]: reviews are written by the writer thread like verdicts, so their
//! `AUTOINCREMENT` cursor follows commit order.

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, unavailable};
use crate::store::dialect::Dialect;
use crate::store::reviews::{self, Agreement, Outcome, Review, ReviewInserted, ReviewStore};
use crate::store::sql::for_sqlite;
use crate::store::{StoreError, to_sql_int};

#[async_trait::async_trait]
impl ReviewStore for SqliteStore {
    async fn add_review(&self, review: Review) -> Result<ReviewInserted, StoreError> {
        let json = reviews::to_json(&review)?;
        self.write(move |conn| insert(conn, review, &json)).await
    }

    async fn reviews_after(&self, after: u64, limit: usize) -> Result<Vec<Review>, StoreError> {
        let (after, limit) = (to_sql_int(after), to_sql_int(limit as u64));
        self.read(move |conn| {
            let mut statement = conn
                .prepare_cached(&for_sqlite(reviews::SELECT_AFTER))
                .map_err(unavailable)?;
            let rows = statement
                .query_map(params![after, limit], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(unavailable)?;
            rows.map(|row| {
                let (seq, json) = row.map_err(unavailable)?;
                reviews::decode(seq, &json)
            })
            .collect()
        })
        .await
    }

    async fn agreement(&self) -> Result<Vec<Agreement>, StoreError> {
        self.read(|conn| {
            let mut statement = conn
                .prepare_cached(reviews::AGREEMENT)
                .map_err(unavailable)?;
            let rows = statement
                .query_map([], |row| {
                    Ok(Agreement {
                        model: row.get(0)?,
                        model_version: row.get::<_, i64>(1)?.unsigned_abs(),
                        reviews: row.get::<_, i64>(2)?.unsigned_abs(),
                        confirmed: row.get::<_, i64>(3)?.unsigned_abs(),
                    })
                })
                .map_err(unavailable)?;
            rows.map(|row| row.map_err(unavailable)).collect()
        })
        .await
    }
}

fn insert(conn: &Connection, review: Review, json: &str) -> Result<ReviewInserted, StoreError> {
    let verdict_seq = to_sql_int(review.verdict_cursor);
    let seq: Option<i64> = conn
        .prepare_cached(&reviews::insert_review(Dialect::Sqlite, false))
        .and_then(|mut statement| {
            statement
                .query_row(
                    params![
                        verdict_seq,
                        review.reviewer,
                        review.model,
                        to_sql_int(review.model_version),
                        review.outcome == Outcome::Confirmed,
                        review.reviewed_at.timestamp_millis(),
                        json,
                    ],
                    |row| row.get(0),
                )
                .optional()
        })
        .map_err(unavailable)?;
    if let Some(seq) = seq {
        return Ok(ReviewInserted::New(Review {
            cursor: seq.unsigned_abs(),
            ..review
        }));
    }
    let (seq, json): (i64, String) = conn
        .query_row(
            &for_sqlite(reviews::SELECT_BY_REVIEWER),
            params![verdict_seq, review.reviewer],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(unavailable)?;
    reviews::decode(seq, &json).map(ReviewInserted::Existing)
}
