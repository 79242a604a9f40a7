//! Human review of stored verdicts: the one service behind `POST
//! /v1/verdicts/{station_id}/{inspection_id}/review` and gRPC `ReviewVerdict`.
//!
//! Units the model sends to `review` (and any unit an operator opens) get a person's label. The
//! review is stored beside the verdict, never in it: the model's verdict stays what the station
//! was answered, and the review is what a retraining uses ([`crate::export`]). One review per
//! (verdict, reviewer): repeating it is harmless, changing it is a conflict (a second opinion is
//! another reviewer's review).

use std::sync::Arc;

use chrono::Utc;

use crate::error::Error;
use crate::metrics::{Metrics, ReviewLabels};
use crate::store::upkeep::refresh_agreement;
use crate::store::{Outcome, Review, ReviewInserted, ReviewStore, SharedStore};

/// Longest reviewer name, in characters.
pub const MAX_REVIEWER_CHARS: usize = 100;
/// Longest comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 2000;

/// What a reviewer says about one unit.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ReviewRequest {
    /// The true label: one of the model's labels.
    pub label: String,
    /// Who reviews: the name the reviewer gives, replaced by the client's name when the request
    /// carried a token ([`ReviewRequest::by`]).
    pub reviewer: String,
    /// Why (optional).
    #[serde(default)]
    pub comment: String,
}

impl ReviewRequest {
    /// The request as made by `caller`: an identified client reviews under its own name.
    pub fn by(mut self, caller: &crate::access::Caller) -> ReviewRequest {
        if let Some(name) = caller.identified() {
            self.reviewer = name.to_string();
        }
        self
    }
}

/// A stored review and whether it was stored by an earlier, identical request.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// The review as stored.
    pub review: Review,
    /// True when this reviewer had already given exactly this review.
    pub replayed: bool,
}

/// The review service.
#[derive(Clone)]
pub struct Reviews {
    verdicts: SharedStore,
    reviews: Arc<dyn ReviewStore>,
    metrics: Arc<Metrics>,
}

impl Reviews {
    /// Reviews verdicts of `verdicts`, stored in `reviews`, counted in `metrics`.
    pub fn new(
        verdicts: SharedStore,
        reviews: Arc<dyn ReviewStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reviews {
            verdicts,
            reviews,
            metrics,
        }
    }

    /// Stores a review of the verdict of (`station_id`, `inspection_id`).
    pub async fn review(
        &self,
        station_id: &str,
        inspection_id: &str,
        request: ReviewRequest,
    ) -> Result<Reviewed, Error> {
        let request = validated(request)?;
        if station_id.is_empty() || inspection_id.is_empty() {
            return Err(Error::BadRequest(
                "station_id and inspection_id are both required".into(),
            ));
        }
        let stored = self
            .verdicts
            .get(station_id, inspection_id)
            .await?
            .ok_or_else(|| Error::VerdictNotFound {
                station_id: station_id.to_string(),
                inspection_id: inspection_id.to_string(),
            })?;
        let verdict = &stored.verdict;
        if !verdict.probabilities.contains_key(&request.label) {
            let labels: Vec<&str> = verdict.probabilities.keys().map(String::as_str).collect();
            return Err(Error::BadRequest(format!(
                "label {:?} is not one of the model's labels {labels:?}",
                request.label
            )));
        }
        let review = Review {
            cursor: 0,
            verdict_cursor: stored.cursor,
            station_id: verdict.station_id.clone(),
            inspection_id: verdict.inspection_id.clone(),
            line: verdict.metadata.get("line").cloned(),
            model: verdict.model.clone(),
            model_version: verdict.model_version,
            model_label: verdict.label.clone(),
            outcome: Outcome::of(&verdict.label, &request.label),
            label: request.label,
            reviewer: request.reviewer,
            comment: request.comment,
            reviewed_at: Utc::now(),
        };
        match self.reviews.add_review(review.clone()).await? {
            ReviewInserted::New(review) => {
                self.metrics
                    .reviews
                    .get_or_create(&ReviewLabels {
                        station: review.station_id.clone(),
                        outcome: review.outcome.as_str().into(),
                    })
                    .inc();
                refresh_agreement(self.reviews.as_ref(), &self.metrics).await;
                Ok(Reviewed {
                    review,
                    replayed: false,
                })
            }
            ReviewInserted::Existing(existing)
                if existing.label == review.label && existing.comment == review.comment =>
            {
                Ok(Reviewed {
                    review: existing,
                    replayed: true,
                })
            }
            ReviewInserted::Existing(existing) => Err(Error::Conflict(format!(
                "{} already reviewed this unit as {:?} at {}; a review is never changed (a second \
                 opinion is another reviewer's review)",
                existing.reviewer,
                existing.label,
                existing.reviewed_at.to_rfc3339()
            ))),
        }
    }
}

/// The request with its reviewer trimmed, or why it cannot be stored.
fn validated(mut request: ReviewRequest) -> Result<ReviewRequest, Error> {
    request.reviewer = request.reviewer.trim().to_string();
    request.label = request.label.trim().to_string();
    if request.label.is_empty() {
        return Err(Error::BadRequest("label is required".into()));
    }
    if request.reviewer.is_empty() {
        return Err(Error::BadRequest(
            "reviewer is required: the name of the person who reviews".into(),
        ));
    }
    if request.reviewer.chars().count() > MAX_REVIEWER_CHARS
        || request.reviewer.chars().any(char::is_control)
    {
        return Err(Error::BadRequest(format!(
            "reviewer must be at most {MAX_REVIEWER_CHARS} characters without control characters"
        )));
    }
    let comment_chars = request.comment.chars().count();
    if comment_chars > MAX_COMMENT_CHARS {
        return Err(Error::BadRequest(format!(
            "comment is {comment_chars} characters, over the limit of {MAX_COMMENT_CHARS}"
        )));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(label: &str, reviewer: &str, comment: &str) -> ReviewRequest {
        ReviewRequest {
            label: label.into(),
            reviewer: reviewer.into(),
            comment: comment.into(),
        }
    }

    #[test]
    fn requests_are_trimmed_and_bounded() {
        let ok = validated(request(" void ", "  Aiko  ", "")).unwrap();
        assert_eq!((ok.label.as_str(), ok.reviewer.as_str()), ("void", "Aiko"));
        assert!(validated(request("", "Aiko", "")).is_err());
        assert!(validated(request("void", " ", "")).is_err());
        assert!(validated(request("void", "a\nb", "")).is_err());
        assert!(validated(request("void", &"a".repeat(101), "")).is_err());
        assert!(validated(request("void", "Aiko", &"c".repeat(2001))).is_err());
    }
}
