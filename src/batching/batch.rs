//! What a batch is on its way into the graphs and out of them, and the seam between the batcher
//! and whatever runs a batch ([`BatchRunner`]: ONNX Runtime sessions today; a GPU session set or
//! a model being swapped in tomorrow).

use crate::error::Error;

/// A batch ready for the graphs: images stacked NCHW, notes padded to one length.
#[derive(Debug, Clone)]
pub struct BatchInput {
    /// Number of requests in the batch.
    pub size: usize,
    /// `size * channels * height * width` normalized pixels.
    pub pixels: Vec<f32>,
    /// `size * tokens` token ids.
    pub input_ids: Vec<i64>,
    /// `size * tokens`, 1 for real tokens.
    pub attention_mask: Vec<i64>,
    /// Padded note length.
    pub tokens: usize,
}

/// What the head says about each request of a batch.
#[derive(Debug, Clone)]
pub struct BatchOutput {
    /// `size * labels` raw class scores.
    pub logits: Vec<f32>,
    /// `size * grid cells` attention over image patches.
    pub attention: Vec<f32>,
}

/// Runs one batch at a time; the worker owns several and gives each batch a free one.
/// Blocking: the worker calls it on a blocking thread.
pub trait BatchRunner: Send + 'static {
    /// Runs `batch` and returns one output row per request, in order.
    fn run(&mut self, batch: &BatchInput) -> Result<BatchOutput, Error>;
}
