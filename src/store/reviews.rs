//! Reviews: a person's judgement of a stored verdict (the true label, who said it, why), kept
//! beside the verdict and never in it, so the model's verdict is never rewritten.
//!
//! Reviews are numbered by their own cursor in commit order (the MQTT publisher reads them as
//! an outbox, like verdicts) and are unique per (verdict, reviewer): a repeated review by the
//! same person returns the stored one, and a second opinion comes from another reviewer. A
//! stored verdict carries its newest review (see [`super::StoredVerdict::review`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::dialect::Dialect;

/// Whether the reviewer agreed with the model's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The reviewer gave the model's label.
    Confirmed,
    /// The reviewer gave another label.
    Overridden,
}

impl Outcome {
    /// The outcome of a review that gives `label` to a unit the model called `model_label`.
    pub fn of(model_label: &str, label: &str) -> Outcome {
        if model_label == label {
            Outcome::Confirmed
        } else {
            Outcome::Overridden
        }
    }

    /// The lowercase name used in JSON, metrics and gRPC.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Overridden => "overridden",
        }
    }
}

/// One review as stored and served (HTTP, gRPC, MQTT, and inside the stored verdict).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    /// Position in the reviews' commit order (0 until stored); MQTT subscribers drop repeats
    /// by it.
    #[serde(default)]
    pub cursor: u64,
    /// The cursor of the verdict reviewed.
    pub verdict_cursor: u64,
    /// The station of the verdict reviewed.
    pub station_id: String,
    /// The inspection reviewed.
    pub inspection_id: String,
    /// The unit's line (its `line` metadata field), when the station sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// The model that gave the verdict.
    pub model: String,
    /// Its version.
    pub model_version: u64,
    /// What the model said.
    pub model_label: String,
    /// What the reviewer says the unit is: the label a retraining uses.
    pub label: String,
    /// Whether that agrees with the model.
    pub outcome: Outcome,
    /// Who reviewed.
    pub reviewer: String,
    /// Why, in the reviewer's words (may be empty); shown escaped wherever it is shown.
    #[serde(default)]
    pub comment: String,
    /// When the review was given.
    pub reviewed_at: DateTime<Utc>,
}

/// What [`ReviewStore::add_review`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReviewInserted {
    /// The review is new and stored under its cursor.
    New(Review),
    /// This reviewer had already reviewed that verdict; this is their review, unchanged.
    Existing(Review),
}

/// Reviews of one model version and how many confirmed the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// Model name.
    pub model: String,
    /// Model version.
    pub model_version: u64,
    /// Reviews of its verdicts.
    pub reviews: u64,
    /// Those that confirmed its label.
    pub confirmed: u64,
}

/// Reviews of stored verdicts: written by the review service, read by the MQTT publisher and
/// the agreement metric (stored verdicts carry theirs through [`super::VerdictStore`]).
#[async_trait::async_trait]
pub trait ReviewStore: Send + Sync {
    /// Stores `review` under a new cursor, unless its reviewer already reviewed that verdict;
    /// then returns their stored review. Returns only after the write is committed.
    async fn add_review(&self, review: Review) -> Result<ReviewInserted, StoreError>;

    /// Reviews after cursor `after`, in commit order, at most `limit`.
    async fn reviews_after(&self, after: u64, limit: usize) -> Result<Vec<Review>, StoreError>;

    /// Reviews and confirmations per model version, over every stored review.
    async fn agreement(&self) -> Result<Vec<Agreement>, StoreError>;
}

/// A review as JSON, the form both SQL backends store (its cursor is the row's `seq`).
pub(crate) fn to_json(review: &Review) -> Result<String, StoreError> {
    serde_json::to_string(review)
        .map_err(|e| StoreError::Corrupt(format!("review does not serialize: {e}")))
}

/// A stored review row (`seq`, JSON) read back.
pub(crate) fn decode(seq: i64, json: &str) -> Result<Review, StoreError> {
    let mut review: Review = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("review {seq}: {e}")))?;
    review.cursor = seq.unsigned_abs();
    Ok(review)
}

/// Inserts a review unless (verdict, reviewer) has one; returns `seq` only when it inserted.
/// SQLite assigns `seq` itself; PostgreSQL passes it (`with_seq`), numbered under a row lock
/// like verdicts, so review cursors follow commit order there too.
pub(crate) fn insert_review(dialect: Dialect, with_seq: bool) -> String {
    let mut columns = vec![
        "verdict_seq",
        "reviewer",
        "model",
        "model_version",
        "confirmed",
        "reviewed_at_ms",
        "review",
    ];
    if with_seq {
        columns.push("seq");
    }
    let marks: Vec<String> = (1..=columns.len()).map(|n| dialect.mark(n)).collect();
    format!(
        "INSERT INTO reviews ({}) VALUES ({}) \
         ON CONFLICT (verdict_seq, reviewer) DO NOTHING RETURNING seq",
        columns.join(", "),
        marks.join(", ")
    )
}

/// One reviewer's review of one verdict.
pub(crate) const SELECT_BY_REVIEWER: &str =
    "SELECT seq, review FROM reviews WHERE verdict_seq = $1 AND reviewer = $2";

/// Reviews after a cursor.
pub(crate) const SELECT_AFTER: &str =
    "SELECT seq, review FROM reviews WHERE seq > $1 ORDER BY seq LIMIT $2";

/// Reviews and confirmations per model version.
pub(crate) const AGREEMENT: &str = "SELECT model, model_version, COUNT(*), \
     CAST(COALESCE(SUM(CASE WHEN confirmed THEN 1 ELSE 0 END), 0) AS BIGINT) \
     FROM reviews GROUP BY model, model_version ORDER BY model, model_version";

/// Deletes reviews whose verdict retention deleted.
pub(crate) const PRUNE_ORPHANS: &str =
    "DELETE FROM reviews WHERE verdict_seq NOT IN (SELECT seq FROM verdicts)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_compare_the_labels() {
        assert_eq!(Outcome::of("void", "void"), Outcome::Confirmed);
        assert_eq!(Outcome::of("void", "normal").as_str(), "overridden");
        let sql = insert_review(Dialect::Postgres, true);
        assert!(sql.contains("review, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"));
        assert!(insert_review(Dialect::Sqlite, false).contains("?7)"));
    }
}
