//! The batch worker: takes batches from a queue and runs them on a pool of [`BatchRunner`]s.
//!
//! With a runner free, the worker takes whatever the queue's delay rule releases (by default
//! what is there: a lone request does not wait for company while a runner idles). While every
//! runner is busy it asks only for a full batch, so requests that arrive meanwhile keep growing
//! the next batch instead of closing it early; when a runner frees first, that ask is relaxed to
//! the delay rule. Each batch is stacked into its runner's own buffers (kept from batch to
//! batch), padded to a bucket size when buckets are set, and run on a blocking thread; the pool
//! size bounds how many run at once.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::batch::{BatchInput, BatchOutput, BatchRunner};
use super::buckets::BatchBuckets;
use super::queue::{Entry, Fill, Queue};
use crate::error::Error;
use crate::metrics::{Metrics, ModelLabels};

/// How the worker stacks a batch for the graphs.
#[derive(Debug, Clone, Default)]
pub struct Stacking {
    /// Token id that pads notes to the batch's longest.
    pub pad_id: u32,
    /// Batch sizes to pad to (none on CPU).
    pub buckets: BatchBuckets,
}

/// Starts the worker for one model; it ends when the queue shuts down.
pub fn spawn<R: BatchRunner>(
    queue: Queue,
    pool: Vec<R>,
    stacking: Stacking,
    metrics: Arc<Metrics>,
    labels: ModelLabels,
) -> JoinHandle<()> {
    tokio::spawn(run(queue, pool, stacking, metrics, labels))
}

/// A runner with the buffers its batches are stacked into.
struct Slot<R> {
    runner: R,
    input: BatchInput,
}

async fn run<R: BatchRunner>(
    queue: Queue,
    pool: Vec<R>,
    stacking: Stacking,
    metrics: Arc<Metrics>,
    labels: ModelLabels,
) {
    let (free_sender, mut free) = mpsc::channel(pool.len().max(1));
    for runner in pool {
        let _ = free_sender.try_send(Slot {
            runner,
            input: BatchInput::default(),
        });
    }
    let stacking = Arc::new(stacking);
    let mut idle: Option<Slot<R>> = None;
    loop {
        if idle.is_none() {
            idle = free.try_recv().ok();
        }
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
                slot = free.recv() => {
                    idle = slot;
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
        let slot = match idle.take() {
            Some(slot) => Some(slot),
            None => free.recv().await,
        };
        let Some(mut slot) = slot else {
            break;
        };
        let free_sender = free_sender.clone();
        let metrics = Arc::clone(&metrics);
        let labels = labels.clone();
        let queue = queue.clone();
        let stacking = Arc::clone(&stacking);
        tokio::task::spawn_blocking(move || {
            run_batch(&mut slot, entries, &stacking, &queue, &metrics, &labels);
            let _ = free_sender.blocking_send(slot);
        });
    }
}

fn run_batch(
    slot: &mut Slot<impl BatchRunner>,
    entries: Vec<Entry>,
    stacking: &Stacking,
    queue: &Queue,
    metrics: &Metrics,
    labels: &ModelLabels,
) {
    let abandoned = entries.iter().filter(|e| e.respond.is_closed()).count();
    queue.count_abandoned(abandoned);
    if abandoned == entries.len() {
        return;
    }
    let batch_span = tracing::info_span!(
        "batch",
        model = %labels.model,
        version = %labels.version,
        size = entries.len(),
    );
    for entry in &entries {
        batch_span.follows_from(entry.span.id());
    }
    let _in_batch = batch_span.enter();
    let started = Instant::now();
    let images: Vec<&[f32]> = entries.iter().map(|e| e.pixels.as_slice()).collect();
    let notes: Vec<&[i64]> = entries.iter().map(|e| e.input_ids.as_slice()).collect();
    let rows = stacking.buckets.rows_for(entries.len());
    slot.input.refill(&images, &notes, stacking.pad_id, rows);
    let outcome = slot.runner.run(&slot.input);
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
            record_graph_times(metrics, labels, &output);
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

fn record_graph_times(metrics: &Metrics, labels: &ModelLabels, output: &BatchOutput) {
    let times = output.graph_times;
    for (stage, took) in [
        ("vision", times.vision),
        ("text", times.text),
        ("head", times.head),
    ] {
        metrics.observe_stage(labels, stage, took);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::batching::queue::{EntryResult, Priority, QueueConfig, QueueMetrics};

    /// Token id that makes the fake runner fail the whole batch.
    const POISON: i64 = -1;

    /// Records each batch's first token ids, waits for a go signal per batch when gated, and
    /// fails batches that hold [`POISON`].
    struct FakeRunner {
        batches: Arc<Mutex<Vec<Vec<i64>>>>,
        gate: Option<Arc<Mutex<std_mpsc::Receiver<()>>>>,
    }

    impl BatchRunner for FakeRunner {
        fn run(&mut self, batch: &BatchInput) -> Result<BatchOutput, Error> {
            let firsts: Vec<i64> = batch
                .input_ids
                .chunks(batch.tokens.max(1))
                .map(|row| row[0])
                .collect();
            self.batches.lock().unwrap().push(firsts.clone());
            if let Some(gate) = &self.gate {
                gate.lock().unwrap().recv().unwrap();
            }
            if firsts.contains(&POISON) {
                return Err(Error::Inference("poisoned batch".into()));
            }
            // Each row answers with its note's first token id and, as attention, three cells
            // holding its row number.
            Ok(BatchOutput {
                rows: batch.size,
                logits: firsts.iter().map(|&id| id as f32).collect(),
                attention: (0..batch.size).flat_map(|row| [row as f32; 3]).collect(),
                ..BatchOutput::default()
            })
        }
    }

    struct Harness {
        queue: Queue,
        batches: Arc<Mutex<Vec<Vec<i64>>>>,
        go: std_mpsc::Sender<()>,
        worker: JoinHandle<()>,
    }

    /// One gated runner, batches of `max`, a long delay so only size or a free runner close a
    /// batch early.
    fn harness(max: usize, max_delay: Duration) -> Harness {
        harness_with(max, max_delay, BatchBuckets::none())
    }

    fn harness_with(max: usize, max_delay: Duration, buckets: BatchBuckets) -> Harness {
        let queue = Queue::spawn(
            QueueConfig {
                capacity: 64,
                max_batch_size: max,
                max_delay,
            },
            QueueMetrics::default(),
        );
        let batches = Arc::default();
        let (go, gate) = std_mpsc::channel();
        let runner = FakeRunner {
            batches: Arc::clone(&batches),
            gate: Some(Arc::new(Mutex::new(gate))),
        };
        let labels = ModelLabels {
            model: "fake".into(),
            version: "1".into(),
        };
        let stacking = Stacking { pad_id: 0, buckets };
        let worker = spawn(
            queue.clone(),
            vec![runner],
            stacking,
            Arc::new(Metrics::new()),
            labels,
        );
        Harness {
            queue,
            batches,
            go,
            worker,
        }
    }

    type Answer = oneshot::Receiver<Result<EntryResult, Error>>;

    fn append(queue: &Queue, id: i64) -> Answer {
        let (respond, answer) = oneshot::channel();
        let now = tokio::time::Instant::now();
        queue
            .append(Entry {
                pixels: Vec::new(),
                input_ids: vec![id],
                priority: Priority::Normal,
                queued_at: now,
                deadline: now + Duration::from_secs(30),
                respond,
                permit: queue.reserve().unwrap(),
                span: tracing::Span::none(),
            })
            .unwrap();
        answer
    }

    async fn batches_seen(harness: &Harness, count: usize) -> Vec<Vec<i64>> {
        for _ in 0..500 {
            let seen = harness.batches.lock().unwrap().clone();
            if seen.len() >= count {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("fewer than {count} batches ran");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_the_runner_is_busy_a_trickle_forms_a_full_batch() {
        let harness = harness(4, Duration::from_millis(1));
        let first = append(&harness.queue, 1);
        batches_seen(&harness, 1).await;
        // The runner is busy with [1]; entries trickle in far slower than the 1 ms delay, yet
        // the prepared batch waits until it is full.
        let mut answers = Vec::new();
        for id in 2..=5 {
            answers.push(append(&harness.queue, id));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        harness.go.send(()).unwrap();
        harness.go.send(()).unwrap();
        assert_eq!(
            batches_seen(&harness, 2).await,
            vec![vec![1], vec![2, 3, 4, 5]]
        );
        assert!(first.await.unwrap().is_ok());
        for answer in answers {
            assert_eq!(answer.await.unwrap().unwrap().batch_size, 4);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_batch_runs_as_soon_as_the_runner_frees() {
        let harness = harness(4, Duration::from_millis(1));
        let _first = append(&harness.queue, 1);
        batches_seen(&harness, 1).await;
        let second = append(&harness.queue, 2);
        let third = append(&harness.queue, 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            harness.batches.lock().unwrap().len(),
            1,
            "busy: still waiting for 4"
        );
        harness.go.send(()).unwrap();
        harness.go.send(()).unwrap();
        assert_eq!(
            batches_seen(&harness, 2).await[1],
            vec![2, 3],
            "relaxed, not dropped"
        );
        assert_eq!(second.await.unwrap().unwrap().logits, vec![2.0]);
        assert_eq!(third.await.unwrap().unwrap().logits, vec![3.0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_fails_only_its_own_requests() {
        let harness = harness(2, Duration::from_millis(200));
        for _ in 0..3 {
            harness.go.send(()).unwrap();
        }
        let poisoned = [append(&harness.queue, POISON), append(&harness.queue, 7)];
        batches_seen(&harness, 1).await;
        let healthy = [append(&harness.queue, 8), append(&harness.queue, 9)];
        for answer in poisoned {
            assert!(matches!(answer.await.unwrap(), Err(Error::Inference(_))));
        }
        for (answer, id) in healthy.into_iter().zip([8.0, 9.0]) {
            assert_eq!(answer.await.unwrap().unwrap().logits, vec![id]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn padded_rows_never_reach_a_request() {
        let harness = harness_with(
            4,
            Duration::from_millis(100),
            BatchBuckets::powers_of_two(4),
        );
        harness.go.send(()).unwrap();
        let answers: Vec<Answer> = [11, 12, 13]
            .iter()
            .map(|&id| append(&harness.queue, id))
            .collect();
        let seen = batches_seen(&harness, 1).await;
        assert_eq!(
            seen[0],
            vec![11, 12, 13, 13],
            "padded to 4 with the last row"
        );
        for (row, (answer, id)) in answers.into_iter().zip([11.0, 12.0, 13.0]).enumerate() {
            let result = answer.await.unwrap().unwrap();
            assert_eq!(result.logits, vec![id]);
            assert_eq!(
                result.attention,
                vec![row as f32; 3],
                "its own row, all of it"
            );
            assert_eq!(result.batch_size, 3, "padding is not counted as requests");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_queue_answers_what_waits_then_the_worker_drops_its_runner() {
        let harness = harness(4, Duration::from_secs(30));
        for _ in 0..2 {
            harness.go.send(()).unwrap();
        }
        let waiting = [append(&harness.queue, 1), append(&harness.queue, 2)];
        harness.queue.close();
        for (answer, id) in waiting.into_iter().zip([1.0, 2.0]) {
            let answered = tokio::time::timeout(Duration::from_secs(5), answer).await;
            assert_eq!(answered.unwrap().unwrap().unwrap().logits, vec![id]);
        }
        tokio::time::timeout(Duration::from_secs(5), harness.worker)
            .await
            .expect("the worker ends once the closed queue is empty")
            .unwrap();
        for _ in 0..100 {
            if Arc::strong_count(&harness.batches) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            Arc::strong_count(&harness.batches),
            1,
            "the runner is dropped"
        );
        assert!(
            harness.queue.ask(Fill::SizeOrDelay).is_none(),
            "the queue task has ended"
        );
    }
}
