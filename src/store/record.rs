//! What one stored verdict holds: the verdict as the station received it plus the request's
//! metadata, the note and the image's hash, numbered by its cursor.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;
use super::reviews::{self, Review};
use crate::verdict::Verdict;

/// A verdict about to be stored.
#[derive(Debug, Clone)]
pub struct NewVerdict {
    /// The verdict as the station receives it.
    pub verdict: Verdict,
    /// The note sent with the image.
    pub note: String,
    /// Hex SHA-256 of the encoded image: tells a retry from a different unit under the same key.
    pub image_sha256: String,
    /// The encoded image, when the retention policy keeps it for review and retraining.
    pub image: Option<Bytes>,
}

impl NewVerdict {
    /// The verdict as JSON, the form every SQL backend stores.
    pub fn verdict_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.verdict)
    }

    /// A metadata field the store indexes (`line`, `lot_id`, ...), when the station sent it.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.verdict.metadata.get(key).map(String::as_str)
    }

    /// The panel or strip the unit sits on, under whichever name the station used.
    pub fn panel_id(&self) -> Option<&str> {
        panel_of(&self.verdict.metadata)
    }

    /// The record every read serves, once this verdict is stored under `cursor`.
    pub fn stored(&self, cursor: u64, stored_at_ms: i64) -> StoredVerdict {
        StoredVerdict {
            cursor,
            stored_at: from_ms(stored_at_ms),
            image_sha256: self.image_sha256.clone(),
            note: self.note.clone(),
            image_retained: self.image.is_some(),
            review: None,
            verdict: self.verdict.clone(),
        }
    }
}

/// One stored verdict as the MES API, the streams and MQTT carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVerdict {
    /// Position in the store's commit order; resume reading after it.
    pub cursor: u64,
    /// When the verdict was committed.
    pub stored_at: DateTime<Utc>,
    /// Hex SHA-256 of the inspected image.
    pub image_sha256: String,
    /// The note sent with the image.
    pub note: String,
    /// Whether the image itself was kept (image retention).
    pub image_retained: bool,
    /// The newest review of the unit, when a person reviewed it (beside the verdict, which
    /// stays as the model gave it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// The verdict as the station received it.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The panel or strip a unit sits on, from a station's metadata under whichever name it used.
pub fn panel_of(metadata: &BTreeMap<String, String>) -> Option<&str> {
    ["panel_id", "strip_id", "panel", "strip"]
        .iter()
        .find_map(|key| metadata.get(*key).map(String::as_str))
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Milliseconds since the Unix epoch, the time unit of every stored timestamp.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Reads a stored timestamp back.
pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A row as both backends select it ([`super::query::COLUMNS`]), before its JSON is parsed:
/// the verdict's columns, then its newest review's `seq` and JSON when it has one.
pub(crate) type RawRow = (
    i64,
    i64,
    String,
    String,
    String,
    bool,
    Option<i64>,
    Option<String>,
);

/// Turns a stored row into the record every API serves.
pub(crate) fn decode(row: RawRow) -> Result<StoredVerdict, StoreError> {
    let (seq, stored_at_ms, image_sha256, note, json, image_retained, review_seq, review) = row;
    let verdict = serde_json::from_str(&json)
        .map_err(|e| StoreError::Corrupt(format!("verdict {seq}: {e}")))?;
    let review = match (review_seq, review) {
        (Some(review_seq), Some(review)) => Some(reviews::decode(review_seq, &review)?),
        _ => None,
    };
    Ok(StoredVerdict {
        cursor: seq.unsigned_abs(),
        stored_at: from_ms(stored_at_ms),
        image_sha256,
        note,
        image_retained,
        review,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
