//! The per-model queue, owned by one task and fed by messages (the shape of
//! text-embeddings-inference's queue).
//!
//! Admission is decided at once by a semaphore: a full queue refuses with
//! [`Error::QueueFull`]. The permit travels with the entry, so an entry that is dropped for any
//! reason (answered, expired, its client gone) frees its place.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::batch::BatchOutput;
use crate::error::Error;

/// Two levels are enough on a line: a station marks the units it is waiting on as urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served before every normal request.
    Urgent,
    /// The default.
    #[default]
    Normal,
}

/// A prepared request waiting for a batch.
pub struct Entry {
    /// Normalized pixels of one image (channels * height * width).
    pub pixels: Vec<f32>,
    /// Token ids of the note, special tokens included.
    pub input_ids: Vec<i64>,
    /// Urgent entries leave first.
    pub priority: Priority,
    /// When the entry was queued, for the queue-time figure.
    pub queued_at: Instant,
    /// After this instant the entry is answered with 504 instead of being run.
    pub deadline: Instant,
    /// The caller waiting for this entry's row of the batch output.
    pub respond: oneshot::Sender<Result<EntryResult, Error>>,
    /// The entry's place in the queue.
    pub permit: OwnedSemaphorePermit,
    /// The request's span: the batch that runs the entry links to it.
    pub span: tracing::Span,
}

/// One request's share of a batch result.
#[derive(Debug)]
pub struct EntryResult {
    /// Raw class scores.
    pub logits: Vec<f32>,
    /// Attention over image patches, row-major.
    pub attention: Vec<f32>,
    /// Time spent waiting in the queue.
    pub queue_time: Duration,
    /// Time the batch spent in the graphs.
    pub inference_time: Duration,
    /// How many requests shared the batch.
    pub batch_size: usize,
}

impl Entry {
    /// Hands this entry its row of `output`; `size` is the number of requests in the batch
    /// (the output may hold more rows: padding, which no entry reads).
    pub fn answer(self, output: &BatchOutput, row: usize, size: usize, batch_started: Instant) {
        let labels = output.logits.len() / output.rows.max(1);
        let cells = output.attention.len() / output.rows.max(1);
        let result = EntryResult {
            logits: output.logits[row * labels..(row + 1) * labels].to_vec(),
            attention: output.attention[row * cells..(row + 1) * cells].to_vec(),
            queue_time: batch_started.saturating_duration_since(self.queued_at),
            inference_time: batch_started.elapsed(),
            batch_size: size,
        };
        self.reply(Ok(result));
    }

    /// Answers with an error.
    pub fn fail(self, error: Error) {
        self.reply(Err(error));
    }

    /// Frees the queue place before the caller wakes, so what the caller sees next (a metric,
    /// another request) already counts the place as free.
    fn reply(self, result: Result<EntryResult, Error>) {
        let Entry {
            respond, permit, ..
        } = self;
        drop(permit);
        let _ = respond.send(result);
    }
}

/// When a batch may close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// At the maximum size, or once the oldest entry has waited the maximum delay: for a free
    /// session, which should not idle.
    SizeOrDelay,
    /// Only at the maximum size: while every session is busy, a partial batch keeps growing
    /// instead of closing early and then waiting for a session anyway.
    Full,
}

/// How a queue forms batches.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Most entries waiting at once; the next is refused with 429.
    pub capacity: usize,
    /// A batch closes at this many entries.
    pub max_batch_size: usize,
    /// ... or when its oldest entry has waited this long (zero: take what is there).
    pub max_delay: Duration,
}

enum Command {
    Append(Entry),
    NextBatch(Fill, oneshot::Sender<Vec<Entry>>),
    Relax,
    Close,
}

/// What the queue task reports as it goes: entries waiting (set on every change, not at
/// scrape time) and entries dropped because their caller had gone.
#[derive(Debug, Clone, Default)]
pub struct QueueMetrics {
    /// Entries waiting now.
    pub depth: Gauge,
    /// Entries whose caller went away before their batch ran.
    pub abandoned: Counter,
}

/// Handle to a queue task; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    commands: mpsc::UnboundedSender<Command>,
    places: Arc<Semaphore>,
    config: QueueConfig,
    stats: Arc<QueueStats>,
    metrics: QueueMetrics,
}

/// Figures the queue shares with its callers without a round trip to the task.
#[derive(Default)]
pub struct QueueStats {
    /// Recent batch compute time in microseconds (moving average), for Retry-After hints.
    batch_micros: AtomicU64,
    /// Batches run so far (the protocol statistics' execution count).
    batches: AtomicU64,
}

impl QueueStats {
    /// Batches run so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Records one batch's compute time.
    pub fn record_batch(&self, took: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.batch_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            micros
        } else {
            (old * 7 + micros) / 8
        };
        self.batch_micros.store(new, Ordering::Relaxed);
    }
}

impl Queue {
    /// Starts the queue task on the current runtime.
    pub fn spawn(config: QueueConfig, metrics: QueueMetrics) -> Queue {
        let (commands, receiver) = mpsc::unbounded_channel();
        let places = Arc::new(Semaphore::new(config.capacity));
        tokio::spawn(run(receiver, config.clone(), metrics.clone()));
        Queue {
            commands,
            places,
            config,
            stats: Arc::default(),
            metrics,
        }
    }

    /// Counts entries found abandoned when their batch was formed.
    pub fn count_abandoned(&self, entries: usize) {
        self.metrics.abandoned.inc_by(entries as u64);
    }

    /// Reserves a place, or refuses at once when the queue is full.
    pub fn reserve(&self) -> Result<OwnedSemaphorePermit, Error> {
        Arc::clone(&self.places)
            .try_acquire_owned()
            .map_err(|_| Error::QueueFull {
                capacity: self.config.capacity,
                retry_after: self.retry_hint(),
            })
    }

    /// Queues an entry that holds a place from [`Queue::reserve`].
    pub fn append(&self, entry: Entry) -> Result<(), Error> {
        self.commands
            .send(Command::Append(entry))
            .map_err(|_| Error::Unavailable("model is shutting down"))
    }

    /// Asks for the next batch: at least one entry, closed as `fill` says. Keep awaiting the
    /// receiver rather than dropping it (a batch already sent to it would be lost); use
    /// [`Queue::relax`] to change a pending [`Fill::Full`] ask. `None` once the queue is gone.
    pub fn ask(&self, fill: Fill) -> Option<oneshot::Receiver<Vec<Entry>>> {
        let (sender, receiver) = oneshot::channel();
        self.commands.send(Command::NextBatch(fill, sender)).ok()?;
        Some(receiver)
    }

    /// Turns a pending [`Fill::Full`] ask into [`Fill::SizeOrDelay`]: a session came free.
    pub fn relax(&self) {
        let _ = self.commands.send(Command::Relax);
    }

    /// Says that no entry will be appended any more (its model version was unloaded and the
    /// last request holding it is gone): what waits leaves in batches as they are, then the
    /// queue ends, and with it the worker and its sessions.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }

    /// Entries waiting now.
    pub fn depth(&self) -> usize {
        self.config.capacity - self.places.available_permits()
    }

    /// The batching parameters.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Shared figures (batch time).
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// Seconds until a full queue has likely drained: queue length in batches times batch time.
    fn retry_hint(&self) -> Duration {
        let batch = Duration::from_micros(self.stats.batch_micros.load(Ordering::Relaxed));
        let batches = self
            .config
            .capacity
            .div_ceil(self.config.max_batch_size.max(1)) as u32;
        (batch * batches).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Entries by priority, oldest first within a level.
#[derive(Default)]
struct Waiting {
    urgent: VecDeque<Entry>,
    normal: VecDeque<Entry>,
}

impl Waiting {
    fn push(&mut self, entry: Entry) {
        match entry.priority {
            Priority::Urgent => self.urgent.push_back(entry),
            Priority::Normal => self.normal.push_back(entry),
        }
    }

    /// Puts an entry back at the head of its level, keeping its turn.
    fn push_front(&mut self, entry: Entry) {
        match entry.priority {
            Priority::Urgent => self.urgent.push_front(entry),
            Priority::Normal => self.normal.push_front(entry),
        }
    }

    fn len(&self) -> usize {
        self.urgent.len() + self.normal.len()
    }

    /// When the oldest waiting entry arrived.
    fn oldest(&self) -> Option<Instant> {
        let urgent = self.urgent.front().map(|e| e.queued_at);
        let normal = self.normal.front().map(|e| e.queued_at);
        urgent.into_iter().chain(normal).min()
    }

    /// Answers expired entries with 504 and forgets those whose caller went away; returns how
    /// many were abandoned.
    fn prune(&mut self, now: Instant) -> usize {
        let mut abandoned = 0;
        for level in [&mut self.urgent, &mut self.normal] {
            let kept: VecDeque<Entry> = level
                .drain(..)
                .filter_map(|entry| {
                    if entry.respond.is_closed() {
                        abandoned += 1;
                        None
                    } else if entry.deadline <= now {
                        let deadline = entry.deadline.saturating_duration_since(entry.queued_at);
                        let _ = entry
                            .respond
                            .send(Err(Error::DeadlineExceeded { deadline }));
                        None
                    } else {
                        Some(entry)
                    }
                })
                .collect();
            *level = kept;
        }
        abandoned
    }

    fn take(&mut self, max: usize) -> Vec<Entry> {
        let mut batch = Vec::with_capacity(max.min(self.len()));
        while batch.len() < max {
            match self.urgent.pop_front().or_else(|| self.normal.pop_front()) {
                Some(entry) => batch.push(entry),
                None => break,
            }
        }
        batch
    }
}

async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    config: QueueConfig,
    metrics: QueueMetrics,
) {
    let mut waiting = Waiting::default();
    let mut asking: Option<(Fill, oneshot::Sender<Vec<Entry>>)> = None;
    let mut closing = false;
    loop {
        let closes_at = match (&asking, waiting.oldest()) {
            (Some((Fill::SizeOrDelay, _)), Some(oldest)) => Some(oldest + config.max_delay),
            _ => None,
        };
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Append(entry)) => waiting.push(entry),
                Some(Command::NextBatch(fill, sender)) => asking = Some((fill, sender)),
                Some(Command::Relax) => {
                    if let Some((fill, _)) = &mut asking {
                        *fill = Fill::SizeOrDelay;
                    }
                }
                Some(Command::Close) => closing = true,
                None => break,
            },
            _ = sleep_until(closes_at), if closes_at.is_some() => {}
        }
        let now = Instant::now();
        metrics.abandoned.inc_by(waiting.prune(now) as u64);
        let full = waiting.len() >= config.max_batch_size;
        let due = waiting
            .oldest()
            .is_some_and(|oldest| oldest + config.max_delay <= now);
        if closing && waiting.len() == 0 {
            break;
        }
        let ready = match &asking {
            Some(_) if closing => true,
            Some((Fill::Full, _)) => full,
            Some((Fill::SizeOrDelay, _)) => full || due,
            None => false,
        };
        if ready && let Some((_, sender)) = asking.take() {
            let batch = waiting.take(config.max_batch_size);
            if let Err(batch) = sender.send(batch) {
                for entry in batch.into_iter().rev() {
                    waiting.push_front(entry);
                }
            }
        }
        metrics.depth.set(waiting.len() as i64);
    }
    metrics.depth.set(0);
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize, max_batch_size: usize, max_delay: Duration) -> Queue {
        Queue::spawn(
            QueueConfig {
                capacity,
                max_batch_size,
                max_delay,
            },
            QueueMetrics::default(),
        )
    }

    fn entry(
        queue: &Queue,
        id: i64,
        priority: Priority,
        deadline: Duration,
    ) -> (Entry, oneshot::Receiver<Result<EntryResult, Error>>) {
        let (respond, receiver) = oneshot::channel();
        let now = Instant::now();
        let entry = Entry {
            pixels: Vec::new(),
            input_ids: vec![id],
            priority,
            queued_at: now,
            deadline: now + deadline,
            respond,
            permit: queue.reserve().expect("a free place"),
            span: tracing::Span::none(),
        };
        (entry, receiver)
    }

    fn ids(batch: &[Entry]) -> Vec<i64> {
        batch.iter().map(|e| e.input_ids[0]).collect()
    }

    #[tokio::test]
    async fn urgent_entries_leave_first_then_oldest_first() {
        let queue = queue(8, 3, Duration::ZERO);
        let mut receivers = Vec::new();
        for (id, priority) in [
            (1, Priority::Normal),
            (2, Priority::Normal),
            (3, Priority::Urgent),
            (4, Priority::Normal),
        ] {
            let (entry, receiver) = entry(&queue, id, priority, Duration::from_secs(10));
            queue.append(entry).unwrap();
            receivers.push(receiver);
        }
        assert_eq!(
            ids(&queue.ask(Fill::SizeOrDelay).unwrap().await.ok().unwrap()),
            vec![3, 1, 2]
        );
        assert_eq!(
            ids(&queue.ask(Fill::SizeOrDelay).unwrap().await.ok().unwrap()),
            vec![4]
        );
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_frees_places_with_entries() {
        let queue = queue(2, 4, Duration::ZERO);
        let (first, _r1) = entry(&queue, 1, Priority::Normal, Duration::from_secs(10));
        let (second, _r2) = entry(&queue, 2, Priority::Normal, Duration::from_secs(10));
        assert!(matches!(
            queue.reserve(),
            Err(Error::QueueFull { capacity: 2, .. })
        ));
        assert_eq!(queue.depth(), 2);
        drop(first);
        assert!(queue.reserve().is_ok());
        drop(second);
    }

    #[tokio::test]
    async fn a_batch_waits_for_max_delay_unless_full() {
        let queue = queue(8, 2, Duration::from_millis(200));
        let (a, _ra) = entry(&queue, 1, Priority::Normal, Duration::from_secs(10));
        queue.append(a).unwrap();
        let started = Instant::now();
        let batch = queue.ask(Fill::SizeOrDelay).unwrap().await.ok().unwrap();
        assert_eq!(ids(&batch), vec![1]);
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "a lone entry waits for company"
        );

        let (b, _rb) = entry(&queue, 2, Priority::Normal, Duration::from_secs(10));
        let (c, _rc) = entry(&queue, 3, Priority::Normal, Duration::from_secs(10));
        queue.append(b).unwrap();
        queue.append(c).unwrap();
        let started = Instant::now();
        assert_eq!(
            ids(&queue.ask(Fill::SizeOrDelay).unwrap().await.ok().unwrap()),
            vec![2, 3]
        );
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "a full batch leaves at once"
        );
    }

    #[tokio::test]
    async fn a_full_only_ask_ignores_the_delay_until_relaxed() {
        let queue = queue(8, 2, Duration::ZERO);
        let (a, _ra) = entry(&queue, 1, Priority::Normal, Duration::from_secs(10));
        queue.append(a).unwrap();
        let mut ticket = queue.ask(Fill::Full).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut ticket).await;
        assert!(waited.is_err(), "one entry is not a full batch");
        queue.relax();
        assert_eq!(
            ids(&ticket.await.unwrap()),
            vec![1],
            "relaxed: the delay rule applies"
        );

        let (b, _rb) = entry(&queue, 2, Priority::Normal, Duration::from_secs(10));
        let (c, _rc) = entry(&queue, 3, Priority::Normal, Duration::from_secs(10));
        queue.append(b).unwrap();
        queue.append(c).unwrap();
        let full = queue.ask(Fill::Full).unwrap().await.unwrap();
        assert_eq!(ids(&full), vec![2, 3]);
    }

    #[tokio::test]
    async fn expired_entries_get_504_and_abandoned_ones_are_skipped() {
        let queue = queue(8, 4, Duration::from_millis(100));
        let (expired, expired_answer) =
            entry(&queue, 1, Priority::Normal, Duration::from_millis(10));
        let (abandoned, abandoned_answer) =
            entry(&queue, 2, Priority::Normal, Duration::from_secs(10));
        let (kept, _kept_answer) = entry(&queue, 3, Priority::Normal, Duration::from_secs(10));
        drop(abandoned_answer);
        for e in [expired, abandoned, kept] {
            queue.append(e).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let batch = queue.ask(Fill::SizeOrDelay).unwrap().await.ok().unwrap();
        assert_eq!(ids(&batch), vec![3]);
        assert!(matches!(
            expired_answer.await,
            Ok(Err(Error::DeadlineExceeded { .. }))
        ));
        assert_eq!(
            queue.metrics.abandoned.get(),
            1,
            "the abandoned one is counted"
        );
        assert_eq!(queue.metrics.depth.get(), 0, "the queue says what waits");
    }
}
