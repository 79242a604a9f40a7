//! Dynamic batching: requests from many stations wait in a bounded queue per model and leave it
//! in batches, which a worker runs on a pool of [`BatchRunner`]s.

pub mod batch;
pub mod buckets;
pub mod queue;
pub mod worker;

use std::sync::Arc;

pub use batch::{BatchInput, BatchOutput, BatchRunner, GraphTimes};
pub use buckets::BatchBuckets;
pub use queue::{Entry, Fill, Priority, Queue, QueueConfig, QueueMetrics};
pub use worker::Stacking;

use crate::metrics::{Metrics, ModelLabels};

/// Starts a model version's queue and the worker that runs its batches on `runners`; the
/// returned handle admits requests. Both run until the queue is closed ([`Queue::close`]) and
/// emptied.
pub fn start<R: BatchRunner>(
    config: QueueConfig,
    runners: Vec<R>,
    stacking: Stacking,
    metrics: Arc<Metrics>,
    labels: ModelLabels,
) -> Queue {
    let queue = Queue::spawn(
        config,
        QueueMetrics {
            depth: metrics.queue_depth.get_or_create(&labels).clone(),
            abandoned: metrics.abandoned.get_or_create(&labels).clone(),
        },
    );
    worker::spawn(queue.clone(), runners, stacking, metrics, labels);
    queue
}
