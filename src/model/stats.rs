//! Per-version request statistics in the shape of the Open Inference Protocol's model
//! statistics (Triton's `ModelStatistics`): how many requests succeeded or failed and the
//! cumulative time they spent queued and computing, so `tritonclient` and `perf_analyzer`
//! read them as they read Triton's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Counters of one loaded version; lock-free, updated once per request.
#[derive(Debug, Default)]
pub struct ModelStats {
    success: Tally,
    fail: Tally,
    queue: Tally,
    compute: Tally,
    /// Milliseconds since the epoch of the last successful request.
    last_inference_ms: AtomicU64,
}

/// A count and the nanoseconds it took in all.
#[derive(Debug, Default)]
struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    fn add(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn read(&self) -> StatDuration {
        StatDuration {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// A count and its cumulative nanoseconds, as the protocol's `StatisticDuration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatDuration {
    /// How many.
    pub count: u64,
    /// Their time in all, in nanoseconds.
    pub ns: u64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Requests answered with a result, and their whole time.
    pub success: StatDuration,
    /// Requests that failed after reaching the model, and their time.
    pub fail: StatDuration,
    /// Time successful requests waited in the queue.
    pub queue: StatDuration,
    /// Time their batches took in the graphs.
    pub compute: StatDuration,
    /// When the last successful request finished (milliseconds since the epoch; 0 for never).
    pub last_inference_ms: u64,
}

impl ModelStats {
    /// Starts counting one request; it counts as failed unless [`RequestTally::succeeded`].
    pub fn begin(&self) -> RequestTally<'_> {
        RequestTally {
            stats: self,
            started: Instant::now(),
            done: false,
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            success: self.success.read(),
            fail: self.fail.read(),
            queue: self.queue.read(),
            compute: self.compute.read(),
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
        }
    }
}

/// One request being counted; dropping it unfinished counts a failure.
pub struct RequestTally<'a> {
    stats: &'a ModelStats,
    started: Instant,
    done: bool,
}

impl RequestTally<'_> {
    /// The request got its result after `queue` in the queue and `compute` in its batch.
    pub fn succeeded(mut self, queue: Duration, compute: Duration) {
        self.done = true;
        self.stats.success.add(self.started.elapsed());
        self.stats.queue.add(queue);
        self.stats.compute.add(compute);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.stats
            .last_inference_ms
            .store(now_ms, Ordering::Relaxed);
    }
}

impl Drop for RequestTally<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats.fail.add(self.started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_dropped_unfinished_counts_as_failed() {
        let stats = ModelStats::default();
        stats
            .begin()
            .succeeded(Duration::from_millis(2), Duration::from_millis(5));
        drop(stats.begin());
        let seen = stats.snapshot();
        assert_eq!((seen.success.count, seen.fail.count), (1, 1));
        assert_eq!(
            seen.queue,
            StatDuration {
                count: 1,
                ns: 2_000_000
            }
        );
        assert_eq!(seen.compute.ns, 5_000_000);
        assert!(seen.last_inference_ms > 0);
    }
}
