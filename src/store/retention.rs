//! What the store keeps and for how long: verdicts by age and count, images by kind and size
//! (enforced by the periodic sweep in [`super::upkeep`]).

use std::time::Duration;

use crate::decision::Disposition;
use crate::verdict::Verdict;

/// What a sweep deletes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete verdicts stored longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many verdicts (the newest).
    pub max_rows: Option<u64>,
    /// Keep retained images up to this many bytes in all (the newest).
    pub max_image_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// True when a sweep would never delete anything.
    pub fn keeps_everything(&self) -> bool {
        self.max_age.is_none() && self.max_rows.is_none() && self.max_image_bytes.is_none()
    }

    /// The oldest `stored_at_ms` a verdict may have at `now_ms` (None: no age limit).
    pub fn cutoff_ms(&self, now_ms: i64) -> Option<i64> {
        self.max_age
            .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)))
    }
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Verdicts deleted (with their images).
    pub verdicts: u64,
    /// Images deleted on their own to respect the size cap.
    pub images: u64,
}

/// Which images to keep for review and retraining (off unless configured).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ImageRetention {
    /// Keep images at all.
    pub enabled: bool,
    /// Also keep normal verdicts whose confidence is below this.
    pub min_confidence: f32,
    /// Never keep a single image larger than this.
    pub max_image_bytes: usize,
}

impl ImageRetention {
    /// True for a defect, for a verdict the model was unsure of, and for a unit sent to a
    /// person (disposition `review`: the review page shows it, and its review makes it
    /// training data).
    pub fn keeps(&self, verdict: &Verdict, image_bytes: usize) -> bool {
        self.enabled
            && image_bytes <= self.max_image_bytes
            && (verdict.is_defect
                || verdict.confidence < self.min_confidence
                || verdict.disposition == Some(Disposition::Review))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_is_now_minus_age() {
        let policy = RetentionPolicy {
            max_age: Some(Duration::from_secs(86_400)),
            ..RetentionPolicy::default()
        };
        assert_eq!(
            policy.cutoff_ms(100_000_000),
            Some(100_000_000 - 86_400_000)
        );
        assert!(!policy.keeps_everything());
        assert!(RetentionPolicy::default().keeps_everything());
        assert_eq!(RetentionPolicy::default().cutoff_ms(5), None);
    }
}
