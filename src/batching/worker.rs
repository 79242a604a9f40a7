//! The batch worker: takes batches from a queue, stacks them into tensors and runs them on a
//! pool of session sets.
//!
//! With a session free, the worker takes whatever the queue's delay rule releases. While every
//! session is busy it takes only a full batch, stacks and pads it (on a blocking thread) while
//! the others run, and hands it to the next session that frees up; a partial batch instead keeps
//! growing in the queue, so a busy server runs full batches. Each batch runs on a blocking
//! thread; the pool size bounds how many run at once.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::queue::{Entry, Fill, Queue};
use crate::error::Error;
use crate::metrics::{Metrics, ModelLabels};
use crate::model::pipeline::{BatchInput, ModelSessions};
use crate::preprocess::text::pad_batch;

/// Starts the worker for one model; it ends when the queue shuts down.
pub fn spawn(
    queue: Queue,
    pool: Vec<ModelSessions>,
    pad_id: u32,
    metrics: Arc<Metrics>,
    labels: ModelLabels,
) -> JoinHandle<()> {
    tokio::spawn(run(queue, pool, pad_id, metrics, labels))
}

async fn run(
    queue: Queue,
    pool: Vec<ModelSessions>,
    pad_id: u32,
    metrics: Arc<Metrics>,
    labels: ModelLabels,
) {
    let (free_sender, mut free) = mpsc::channel(pool.len().max(1));
    for sessions in pool {
        let _ = free_sender.try_send(sessions);
    }
    let mut idle: Option<ModelSessions> = None;
    loop {
        let fill = if idle.is_some() {
            Fill::SizeOrDelay
        } else {
            Fill::Full
        };
        let Some(mut ticket) = queue.ask(fill) else {
            break;
        };
        let batch = if idle.is_some() {
            ticket.await.ok()
        } else {
            tokio::select! {
                sessions = free.recv() => {
                    idle = sessions;
                    if idle.is_none() {
                        break;
                    }
                    queue.relax();
                    ticket.await.ok()
                }
                batch = &mut ticket => batch.ok(),
            }
        };
        let Some(entries) = batch else {
            break;
        };
        let prepared = tokio::task::spawn_blocking(move || assemble(entries, pad_id)).await;
        let Ok((entries, input)) = prepared else {
            tracing::error!("batch assembly panicked");
            continue;
        };
        let sessions = match idle.take() {
            Some(sessions) => Some(sessions),
            None => free.recv().await,
        };
        let Some(mut sessions) = sessions else {
            break;
        };
        let free_sender = free_sender.clone();
        let metrics = Arc::clone(&metrics);
        let labels = labels.clone();
        let queue = queue.clone();
        tokio::task::spawn_blocking(move || {
            run_batch(&mut sessions, entries, &input, &queue, &metrics, &labels);
            let _ = free_sender.blocking_send(sessions);
        });
    }
}

/// Stacks images and pads notes into one [`BatchInput`].
fn assemble(entries: Vec<Entry>, pad_id: u32) -> (Vec<Entry>, BatchInput) {
    let notes: Vec<&[i64]> = entries.iter().map(|e| e.input_ids.as_slice()).collect();
    let tokens = pad_batch(&notes, pad_id);
    let pixels = entries
        .iter()
        .flat_map(|e| e.pixels.iter().copied())
        .collect();
    let input = BatchInput {
        size: entries.len(),
        pixels,
        input_ids: tokens.ids,
        attention_mask: tokens.mask,
        tokens: tokens.tokens,
    };
    (entries, input)
}

fn run_batch(
    sessions: &mut ModelSessions,
    entries: Vec<Entry>,
    input: &BatchInput,
    queue: &Queue,
    metrics: &Metrics,
    labels: &ModelLabels,
) {
    if entries.iter().all(|e| e.respond.is_closed()) {
        return;
    }
    let started = Instant::now();
    let outcome = sessions.run(input);
    let took = started.elapsed();
    queue.stats().record_batch(took);
    metrics
        .inference_seconds
        .get_or_create(labels)
        .observe(took.as_secs_f64());
    metrics
        .batch_size
        .get_or_create(labels)
        .observe(entries.len() as f64);
    match outcome {
        Ok(output) => {
            let size = entries.len();
            for (row, entry) in entries.into_iter().enumerate() {
                let waited = started.saturating_duration_since(entry.queued_at);
                metrics
                    .queue_seconds
                    .get_or_create(labels)
                    .observe(waited.as_secs_f64());
                entry.answer(&output, row, size, started);
            }
        }
        Err(error) => {
            tracing::error!(%error, model = %labels.model, batch = entries.len(), "batch failed");
            let message = error.to_string();
            for entry in entries {
                entry.fail(Error::Inference(message.clone()));
            }
        }
    }
}
