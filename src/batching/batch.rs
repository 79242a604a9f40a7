//! What a batch is on its way into the graphs and out of them, and the seam between the batcher
//! and whatever runs a batch ([`BatchRunner`]: ONNX Runtime sessions today; a GPU session set or
//! a model being swapped in tomorrow).

use std::time::Duration;

use crate::error::Error;
use crate::preprocess::text::pad_batch_into;

/// A batch ready for the graphs: images stacked NCHW, notes padded to one length.
#[derive(Debug, Clone, Default)]
pub struct BatchInput {
    /// Number of rows in the tensors: the requests, plus padding rows when the batch is
    /// padded to a bucket size.
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

impl BatchInput {
    /// Stacks `images` (one model input each) and pads `notes` into this batch's buffers,
    /// reusing their memory, then repeats the last row until the batch has `rows` rows (a
    /// padding row is a real input, so it cannot disturb the graphs; its output is dropped).
    pub fn refill(&mut self, images: &[&[f32]], notes: &[&[i64]], pad_id: u32, rows: usize) {
        let real = images.len();
        let rows = rows.max(real);
        self.pixels.clear();
        for image in images {
            self.pixels.extend_from_slice(image);
        }
        let mut padded_notes = notes.to_vec();
        if let (Some(image), Some(note)) = (images.last(), notes.last()) {
            for _ in real..rows {
                self.pixels.extend_from_slice(image);
                padded_notes.push(note);
            }
        }
        self.tokens = pad_batch_into(
            &padded_notes,
            pad_id,
            &mut self.input_ids,
            &mut self.attention_mask,
        );
        self.size = rows;
    }
}

/// What the head says about each row of a batch.
#[derive(Debug, Clone, Default)]
pub struct BatchOutput {
    /// Rows the graphs ran (requests and padding).
    pub rows: usize,
    /// `rows * labels` raw class scores.
    pub logits: Vec<f32>,
    /// `rows * grid cells` attention over image patches.
    pub attention: Vec<f32>,
    /// How long each graph took.
    pub graph_times: GraphTimes,
}

/// Time spent in each of the three graphs on one batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct GraphTimes {
    /// The vision encoder.
    pub vision: Duration,
    /// The text encoder.
    pub text: Duration,
    /// The fusion head.
    pub head: Duration,
}

/// Runs one batch at a time; the worker owns several and gives each batch a free one.
/// Blocking: the worker calls it on a blocking thread.
pub trait BatchRunner: Send + 'static {
    /// Runs `batch` and returns one output row per input row, in order.
    fn run(&mut self, batch: &BatchInput) -> Result<BatchOutput, Error>;
}
