//! The protobuf forms of reviews for `kensa.v1.InspectionService`: `ReviewVerdict` in and out,
//! and the review inside a `StoredVerdict`.

use super::proto::kensa_v1 as pb;
use crate::reviews::ReviewRequest;
use crate::store::Review;

/// The review a `ReviewVerdict` message asks to store.
pub fn request(message: &pb::ReviewVerdictRequest) -> ReviewRequest {
    ReviewRequest {
        label: message.label.clone(),
        reviewer: message.reviewer.clone(),
        comment: message.comment.clone(),
    }
}

/// The protobuf form of a stored review.
pub fn message(review: &Review) -> pb::Review {
    pb::Review {
        cursor: review.cursor.to_string(),
        verdict_cursor: review.verdict_cursor.to_string(),
        station_id: review.station_id.clone(),
        inspection_id: review.inspection_id.clone(),
        line: review.line.clone().unwrap_or_default(),
        model: review.model.clone(),
        model_version: review.model_version,
        model_label: review.model_label.clone(),
        label: review.label.clone(),
        outcome: review.outcome.as_str().to_string(),
        reviewer: review.reviewer.clone(),
        comment: review.comment.clone(),
        reviewed_at: Some(prost_types::Timestamp {
            seconds: review.reviewed_at.timestamp(),
            nanos: i32::try_from(review.reviewed_at.timestamp_subsec_nanos()).unwrap_or(0),
        }),
    }
}
