//! Dynamic batching: requests from many stations wait in a bounded queue per model and leave it
//! in batches, which a worker runs on a pool of sessions.

pub mod queue;
pub mod worker;

pub use queue::{Entry, Fill, Priority, Queue, QueueConfig};
