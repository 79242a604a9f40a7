//! The ceiling: the same graphs in bare ONNX Runtime, inputs already preprocessed, in the
//! arrangement the service uses (as many session sets as it runs batches at once, each with
//! its threads, all running full batches at the same time), so "service / bare" compares like
//! with like.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use kensa::batching::{BatchInput, BatchRunner as _};
use kensa::config::ModelArgs;
use kensa::model::registry;
use kensa::model::runtime::Runtime;
use kensa::model::threading::ThreadingPlan;
use kensa::preprocess::image::{ImageLimits, prepare_image};

use crate::images::Sample;
use crate::stats::process_cpu_seconds;

/// What bare ONNX Runtime did at one batch size.
#[derive(Debug, Clone)]
pub struct Bare {
    /// The arrangement it ran in.
    pub threading: ThreadingPlan,
    /// Rows per batch.
    pub batch: usize,
    /// Images per second, all session sets together.
    pub images_per_second: f64,
    /// Milliseconds per batch on one session set.
    pub batch_ms: f64,
    /// CPU milliseconds per image.
    pub cpu_ms_per_image: f64,
}

/// Runs batches of `batch` rows of the real `samples` on every session set at once for
/// `duration`, with the model and runtime flags of `model` (the server's); `batch` is capped
/// by `--max-batch-size` and the manifest's largest batch (pass the cap the server chose, from
/// `/v1/models`, to run its arrangement).
pub async fn measure(
    model: &ModelArgs,
    samples: &Arc<Vec<Sample>>,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<Bare> {
    let runtime = Runtime::init(&model.runtime)?;
    let mut options = model.load_options();
    options.warmup_batches = 1;
    options.max_batch_size = Some(options.max_batch_size.map_or(batch, |cap| cap.min(batch)));
    let root = model.model_repository.clone();
    let samples = Arc::clone(samples);
    tokio::task::spawn_blocking(move || {
        let found = registry::discover(&root)?
            .into_iter()
            .next()
            .context("no model")?;
        let opened = registry::open_and_warm(runtime, &found, &options)?;
        let manifest = &found.manifest;
        let batch = opened.batch_cap.size;
        let limits = ImageLimits {
            max_bytes: usize::MAX,
            max_pixels: u64::MAX,
        };
        let mut images = Vec::new();
        let mut notes = Vec::new();
        for i in 0..batch {
            let sample = &samples[i % samples.len()];
            images.push(prepare_image(&sample.image, &manifest.image, &limits)?.pixels);
            notes.push(opened.tokenizer.encode(&sample.note)?);
        }
        let image_rows: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        let note_rows: Vec<&[i64]> = notes.iter().map(Vec::as_slice).collect();
        let mut input = BatchInput::default();
        input.refill(&image_rows, &note_rows, manifest.text.pad_id, batch);
        let input = &input;
        let pid = std::process::id();
        let cpu_before = process_cpu_seconds(pid).unwrap_or(0.0);
        let started = Instant::now();
        let batches: Vec<anyhow::Result<usize>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = opened
                .pool
                .into_iter()
                .map(|mut sessions| {
                    scope.spawn(move || -> anyhow::Result<usize> {
                        let mut done = 0;
                        while started.elapsed() < duration {
                            sessions.run(input)?;
                            done += 1;
                        }
                        Ok(done)
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|job| {
                    job.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a session thread panicked")))
                })
                .collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = process_cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
        let per_set: Vec<usize> = batches.into_iter().collect::<anyhow::Result<_>>()?;
        let total: usize = per_set.iter().sum();
        let images = (total * batch) as f64;
        Ok(Bare {
            threading: opened.threading,
            batch,
            images_per_second: images / elapsed,
            batch_ms: 1000.0 * elapsed * per_set.len() as f64 / total.max(1) as f64,
            cpu_ms_per_image: 1000.0 * cpu / images.max(1.0),
        })
    })
    .await?
}
