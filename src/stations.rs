//! The line overview behind the operator page (`GET /v1/stations`): for every station the store
//! holds, its newest verdict and what it did over a recent window (verdicts, defects, the
//! disposition mix, and the same per time bucket for a sparkline).
//!
//! Everything is read up to one cursor, returned with the overview: a page that then follows
//! `GET /v1/verdicts/stream?since=<cursor>` counts every later verdict exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::decision::Disposition;
use crate::error::Error;
use crate::store::{ActivityCount, SharedStore, StationActivity, StoredVerdict};

/// Buckets of the sparkline, oldest first.
pub const BUCKETS: u32 = 12;
/// The window when the caller names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// The longest window.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Verdicts counted by what they were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// All verdicts.
    pub total: u64,
    /// Those the model called defects.
    pub defects: u64,
    /// Those with disposition `pass`.
    pub pass: u64,
    /// Those with disposition `fail`.
    pub fail: u64,
    /// Those with disposition `review`.
    pub review: u64,
}

impl Counts {
    fn add(&mut self, count: &ActivityCount) {
        self.total += count.count;
        if count.is_defect {
            self.defects += count.count;
        }
        match count.disposition {
            Some(Disposition::Pass) => self.pass += count.count,
            Some(Disposition::Fail) => self.fail += count.count,
            Some(Disposition::Review) => self.review += count.count,
            None => {}
        }
    }
}

/// One station's tile.
#[derive(Debug, Clone, Serialize)]
pub struct StationSummary {
    /// The station.
    pub station_id: String,
    /// Its line (the newest verdict's `line` metadata field), when it sends one.
    pub line: Option<String>,
    /// Its newest verdict (when it was stored says whether the station has gone silent).
    pub latest: StoredVerdict,
    /// Its verdicts within the window.
    pub window: Counts,
    /// The same per bucket, oldest first ([`BUCKETS`] of them).
    pub buckets: Vec<Counts>,
}

/// The overview of every station.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Everything here is read up to this cursor; follow the stream after it.
    pub cursor: u64,
    /// When the overview was read.
    pub now: DateTime<Utc>,
    /// Start of the window (the first bucket's start).
    pub since: DateTime<Utc>,
    /// Length of one bucket in milliseconds.
    pub bucket_ms: u64,
    /// How many buckets each station has ([`BUCKETS`]).
    pub bucket_count: u32,
    /// Every station the store holds, by line, then station.
    pub stations: Vec<StationSummary>,
}

/// The overview service.
#[derive(Clone)]
pub struct Stations {
    verdicts: SharedStore,
    activity: Arc<dyn StationActivity>,
}

impl Stations {
    /// Reads station activity from `activity`, up to the committed cursor of `verdicts`.
    pub fn new(verdicts: SharedStore, activity: Arc<dyn StationActivity>) -> Self {
        Stations { verdicts, activity }
    }

    /// Every station with its newest verdict and its counts over the last `window` (at most
    /// [`MAX_WINDOW`]), in [`BUCKETS`] buckets.
    pub async fn overview(&self, window: Duration) -> Result<Overview, Error> {
        if window.is_zero() || window > MAX_WINDOW {
            return Err(Error::BadRequest(format!(
                "window must be more than 0 and at most {}",
                humantime::format_duration(MAX_WINDOW)
            )));
        }
        let cursor = *self.verdicts.subscribe().borrow();
        let now = Utc::now();
        let bucket_ms = i64::try_from(window.as_millis() / u128::from(BUCKETS))
            .unwrap_or(1)
            .max(1);
        let since_ms = now.timestamp_millis() - bucket_ms * i64::from(BUCKETS);
        let counts = self.activity.activity(since_ms, bucket_ms, cursor).await?;
        let latest = self.activity.latest_per_station(cursor).await?;
        let mut by_station: BTreeMap<&str, (Counts, Vec<Counts>)> = BTreeMap::new();
        for count in &counts {
            let (total, buckets) = by_station
                .entry(count.station_id.as_str())
                .or_insert_with(|| (Counts::default(), vec![Counts::default(); BUCKETS as usize]));
            total.add(count);
            let index = usize::try_from(count.bucket).unwrap_or(usize::MAX);
            if let Some(bucket) = buckets.get_mut(index.min(BUCKETS as usize - 1)) {
                bucket.add(count);
            }
        }
        let mut stations: Vec<StationSummary> = latest
            .into_iter()
            .map(|latest| {
                let station_id = latest.verdict.station_id.clone();
                let (window, buckets) =
                    by_station.remove(station_id.as_str()).unwrap_or_else(|| {
                        (Counts::default(), vec![Counts::default(); BUCKETS as usize])
                    });
                StationSummary {
                    line: latest.verdict.metadata.get("line").cloned(),
                    station_id,
                    latest,
                    window,
                    buckets,
                }
            })
            .collect();
        stations.sort_by(|a, b| (&a.line, &a.station_id).cmp(&(&b.line, &b.station_id)));
        Ok(Overview {
            cursor,
            now,
            since: DateTime::from_timestamp_millis(since_ms).unwrap_or(now),
            bucket_ms: bucket_ms.unsigned_abs(),
            bucket_count: BUCKETS,
            stations,
        })
    }
}
