//! The largest batch a model version forms, measured on this machine at warm-up.
//!
//! A bigger batch is not always cheaper per image. On a CPU, once a batch's activations no
//! longer fit the caches it costs more per image than a smaller one (the model-v2 demo on two
//! cores, both session sets at once: 47-53 images/s at batches of 1-2, 42-45 at 16), while a
//! tiny model or a GPU gains up to its largest batch. Which holds depends on the model, the
//! cores and their caches, so unless
//! the operator gives `--max-batch-size`, kensa times every candidate size with all session sets
//! running at once (as they do at saturation) and keeps the largest size whose throughput is
//! within [`TOLERANCE`] of the best. Largest, because what the timing leaves out favours
//! batches: the service pays per batch (hand-overs, stacking, three graph calls) and runs
//! decoding between batches, so it leaves a size only when a smaller one is measurably faster.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::batching::{BatchInput, BatchRunner};
use crate::error::Error;

/// Sizes whose throughput is within this share of the best count as equally fast.
pub const TOLERANCE: f64 = 0.05;

/// Timed passes over the candidate sizes, after one untimed pass: the fastest of two already
/// sets aside most of a busy moment, and each pass costs a start every size once.
pub const TIMED_ROUNDS: usize = 2;

/// One candidate size's throughput with every session set running it at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeasuredRate {
    /// Rows per batch.
    pub batch: usize,
    /// Images per second of all session sets together (the fastest timed round).
    pub images_per_s: f64,
}

/// The batch cap a version runs with and where it came from, reported at start, by
/// `/v1/models` and by `kensa check`, so an operator sees what was chosen and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchCap {
    /// The largest batch the queue forms.
    pub size: usize,
    /// The largest size considered: the manifest's `max_batch_size`, or the operator's cap.
    pub upper_bound: usize,
    /// True when `size` was chosen from `measured`; false when `--max-batch-size` gave it or
    /// nothing was timed (`--warmup-batches 0`), and the upper bound is used.
    pub automatic: bool,
    /// What was timed, one entry per candidate size; empty when nothing was.
    pub measured: Vec<MeasuredRate>,
}

impl BatchCap {
    /// A cap used as given, without timing.
    pub fn fixed(size: usize) -> BatchCap {
        let size = size.max(1);
        BatchCap {
            size,
            upper_bound: size,
            automatic: false,
            measured: Vec::new(),
        }
    }

    /// The cap chosen from `measured` (the upper bound when it is empty).
    pub fn chosen(upper_bound: usize, measured: Vec<MeasuredRate>) -> BatchCap {
        let upper_bound = upper_bound.max(1);
        BatchCap {
            size: choose(&measured).unwrap_or(upper_bound),
            upper_bound,
            automatic: !measured.is_empty(),
            measured,
        }
    }
}

/// The sizes worth timing: powers of two below `upper_bound`, and `upper_bound` itself.
pub fn candidates(upper_bound: usize) -> Vec<usize> {
    let upper_bound = upper_bound.max(1);
    let mut sizes: Vec<usize> = std::iter::successors(Some(1_usize), |n| n.checked_mul(2))
        .take_while(|&n| n < upper_bound)
        .collect();
    sizes.push(upper_bound);
    sizes
}

/// The largest measured size within [`TOLERANCE`] of the best throughput; `None` when nothing
/// usable was measured.
pub fn choose(measured: &[MeasuredRate]) -> Option<usize> {
    let best = measured
        .iter()
        .map(|rate| rate.images_per_s)
        .filter(|rate| rate.is_finite())
        .fold(0.0_f64, f64::max);
    if best <= 0.0 {
        return None;
    }
    measured
        .iter()
        .filter(|rate| rate.images_per_s >= best * (1.0 - TOLERANCE))
        .map(|rate| rate.batch)
        .max()
}

/// Times each size in `sizes` with every runner in `pool` running a batch of it at once, on a
/// thread each: one untimed pass over the sizes to warm each shape, then `rounds` timed passes,
/// interleaved so that a busy moment on the machine falls on all sizes alike; each size's
/// fastest round counts (the one least disturbed by the rest of the machine).
///
/// Blocking: call from a blocking thread.
pub fn measure<R: BatchRunner>(
    pool: &mut [R],
    sizes: &[usize],
    rounds: usize,
    batch_of: impl Fn(usize) -> BatchInput,
) -> Result<Vec<MeasuredRate>, Error> {
    let batches: Vec<BatchInput> = sizes.iter().map(|&size| batch_of(size)).collect();
    for batch in &batches {
        run_round(pool, batch)?;
    }
    let mut fastest = vec![Duration::MAX; batches.len()];
    for _ in 0..rounds.max(1) {
        for (batch, best) in batches.iter().zip(&mut fastest) {
            *best = (*best).min(run_round(pool, batch)?);
        }
    }
    Ok(sizes
        .iter()
        .zip(fastest)
        .map(|(&size, time)| MeasuredRate {
            batch: size,
            images_per_s: (pool.len() * size) as f64 / time.as_secs_f64().max(f64::MIN_POSITIVE),
        })
        .collect())
}

/// Runs `batch` on every runner at once and returns the wall time until the last finished.
fn run_round<R: BatchRunner>(pool: &mut [R], batch: &BatchInput) -> Result<Duration, Error> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let running: Vec<_> = pool
            .iter_mut()
            .map(|runner| scope.spawn(move || runner.run(batch).map(drop)))
            .collect();
        running.into_iter().try_for_each(|handle| {
            handle
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("a warm-up batch panicked".into())))
        })
    })?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(pairs: &[(usize, f64)]) -> Vec<MeasuredRate> {
        pairs
            .iter()
            .map(|&(batch, images_per_s)| MeasuredRate {
                batch,
                images_per_s,
            })
            .collect()
    }

    #[test]
    fn candidates_are_powers_of_two_up_to_the_bound() {
        assert_eq!(candidates(16), vec![1, 2, 4, 8, 16]);
        assert_eq!(candidates(12), vec![1, 2, 4, 8, 12]);
        assert_eq!(candidates(1), vec![1]);
        assert_eq!(candidates(0), vec![1]);
    }

    #[test]
    fn the_fastest_size_wins_even_when_it_is_not_the_largest() {
        let measured = rates(&[(1, 19.0), (2, 22.0), (4, 25.0), (8, 28.4), (16, 22.2)]);
        assert_eq!(choose(&measured), Some(8));
        let measured = rates(&[(1, 100.0), (4, 300.0), (16, 900.0)]);
        assert_eq!(
            choose(&measured),
            Some(16),
            "a small model gains up to the largest"
        );
    }

    #[test]
    fn a_larger_size_within_the_tolerance_of_the_best_is_preferred() {
        let measured = rates(&[(4, 600.0), (8, 580.0), (16, 500.0)]);
        assert_eq!(choose(&measured), Some(8));
        let measured = rates(&[(4, 600.0), (8, 560.0), (16, 500.0)]);
        assert_eq!(choose(&measured), Some(4), "7% slower is not equally fast");
    }

    #[test]
    fn nothing_usable_measured_falls_back_to_the_upper_bound() {
        assert_eq!(choose(&[]), None);
        assert_eq!(choose(&rates(&[(8, 0.0), (16, f64::NAN)])), None);
        let cap = BatchCap::chosen(16, Vec::new());
        assert_eq!((cap.size, cap.automatic), (16, false));
        let cap = BatchCap::chosen(16, rates(&[(8, 30.0), (16, 20.0)]));
        assert_eq!((cap.size, cap.upper_bound, cap.automatic), (8, 16, true));
    }
}
