//! Batch-size buckets: the fixed batch sizes a batch is padded up to.
//!
//! TensorRT (and CUDA graphs) run fastest on shapes they have built for; padding every batch to
//! one of a few sizes (1, 2, 4, 8, 16, the largest) means engines and captured graphs are built
//! once per bucket, not once per size seen. On CPU, padding would only add work, so there are
//! no buckets and a batch runs at its own size.

use serde::Serialize;

/// The sizes batches are padded to; empty means no padding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchBuckets(Vec<usize>);

impl BatchBuckets {
    /// No padding: every batch runs at its own size.
    pub fn none() -> Self {
        BatchBuckets(Vec::new())
    }

    /// Powers of two up to `max_batch_size`, and `max_batch_size` itself.
    pub fn powers_of_two(max_batch_size: usize) -> Self {
        let max = max_batch_size.max(1);
        let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |s| s.checked_mul(2))
            .take_while(|&s| s < max)
            .collect();
        sizes.push(max);
        BatchBuckets(sizes)
    }

    /// Exactly these sizes (sorted, without repeats); sizes above `max_batch_size` are dropped
    /// and `max_batch_size` is always one, so every batch fits a bucket.
    pub fn from_sizes(sizes: &[usize], max_batch_size: usize) -> Self {
        let max = max_batch_size.max(1);
        let mut kept: Vec<usize> = sizes
            .iter()
            .copied()
            .filter(|&s| s >= 1 && s < max)
            .collect();
        kept.push(max);
        kept.sort_unstable();
        kept.dedup();
        BatchBuckets(kept)
    }

    /// The rows a batch of `requests` runs as: the smallest bucket that holds it, or its own
    /// size without buckets.
    pub fn rows_for(&self, requests: usize) -> usize {
        self.0
            .iter()
            .copied()
            .find(|&size| size >= requests)
            .unwrap_or(requests)
    }

    /// The bucket sizes, smallest first.
    pub fn sizes(&self) -> &[usize] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_runs_in_the_smallest_bucket_that_holds_it() {
        let buckets = BatchBuckets::powers_of_two(12);
        assert_eq!(buckets.sizes(), [1, 2, 4, 8, 12]);
        let rows: Vec<usize> = (1..=12).map(|n| buckets.rows_for(n)).collect();
        assert_eq!(rows, [1, 2, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12]);
    }

    #[test]
    fn without_buckets_a_batch_keeps_its_size() {
        assert_eq!(BatchBuckets::none().rows_for(5), 5);
    }

    #[test]
    fn given_sizes_always_end_at_the_largest_batch() {
        let buckets = BatchBuckets::from_sizes(&[8, 2, 2, 64], 16);
        assert_eq!(buckets.sizes(), [2, 8, 16]);
        assert_eq!(buckets.rows_for(1), 2);
    }
}
