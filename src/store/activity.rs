//! What each station has been doing, for the operator page's line overview: verdict counts per
//! station and time bucket (by disposition and defect flag), and each station's newest verdict.
//!
//! Both are read up to one cursor, so a page that counts what the store held at that cursor
//! and then follows the verdict stream after it counts every verdict exactly once.

use super::query::COLUMNS;
use super::{StoreError, StoredVerdict};
use crate::decision::Disposition;

/// Verdicts of one station in one time bucket with one disposition and defect flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityCount {
    /// The station.
    pub station_id: String,
    /// Which bucket: `(stored_at - since) / bucket`, from 0.
    pub bucket: u64,
    /// Their disposition (None for a model without a decision rule).
    pub disposition: Option<Disposition>,
    /// Whether the model called them defects.
    pub is_defect: bool,
    /// How many.
    pub count: u64,
}

/// The store's view of station activity.
#[async_trait::async_trait]
pub trait StationActivity: Send + Sync {
    /// Counts of the verdicts stored since `since_ms` (Unix milliseconds) with a cursor up to
    /// `up_to`, per station, `bucket_ms` bucket, disposition and defect flag.
    async fn activity(
        &self,
        since_ms: i64,
        bucket_ms: i64,
        up_to: u64,
    ) -> Result<Vec<ActivityCount>, StoreError>;

    /// The newest verdict of every station the store holds, up to cursor `up_to`.
    async fn latest_per_station(&self, up_to: u64) -> Result<Vec<StoredVerdict>, StoreError>;
}

/// Counts per station, bucket, disposition and defect flag.
pub(crate) const ACTIVITY: &str = "SELECT station_id, (stored_at_ms - $1) / $2, disposition, \
     is_defect, COUNT(*) FROM verdicts WHERE stored_at_ms >= $1 AND seq <= $3 \
     GROUP BY 1, 2, 3, 4";

/// The newest verdict of each station, found by skipping from station to station along the
/// `(station_id, seq)` index (a loose index scan: one index seek per station, however many
/// verdicts each has).
pub(crate) fn latest_per_station() -> String {
    format!(
        "WITH RECURSIVE stations(station) AS (\
           SELECT MIN(station_id) FROM verdicts \
           UNION ALL \
           SELECT (SELECT MIN(station_id) FROM verdicts WHERE station_id > stations.station) \
           FROM stations WHERE stations.station IS NOT NULL) \
         SELECT {COLUMNS} FROM verdicts v WHERE v.seq IN (\
           SELECT (SELECT MAX(seq) FROM verdicts WHERE station_id = stations.station \
                   AND seq <= $1) \
           FROM stations WHERE stations.station IS NOT NULL) \
         ORDER BY v.seq"
    )
}

/// A disposition column read back.
pub(crate) fn disposition(value: Option<&str>) -> Result<Option<Disposition>, StoreError> {
    value
        .map(|name| name.parse().map_err(StoreError::Corrupt))
        .transpose()
}
