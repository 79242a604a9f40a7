//! Load: closed loop (each client sends its next request when the last is answered) and open
//! loop (requests at a fixed rate, however slow the answers), over the native HTTP API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::images::Sample;

/// Latencies and failures of one phase.
#[derive(Default)]
pub struct Phase {
    /// Latency of every answered request.
    pub latencies: Vec<Duration>,
    /// Requests that failed.
    pub failures: usize,
    /// Length of the phase.
    pub elapsed: Duration,
}

impl Phase {
    /// Answered requests per second.
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Counts one request's outcome.
    fn record(&mut self, outcome: Result<Duration, ()>) {
        match outcome {
            Ok(latency) => self.latencies.push(latency),
            Err(()) => self.failures += 1,
        }
    }

    /// The `p`th percentile latency in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[index].as_secs_f64() * 1000.0
    }
}

/// Sends one inspection; its latency, or `Err` for a failure.
async fn send(
    client: &reqwest::Client,
    url: &str,
    sample: &Sample,
    n: usize,
) -> Result<Duration, ()> {
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(sample.image.clone()).file_name(sample.name.clone()),
        )
        .text("note", sample.note.clone())
        .text("station_id", format!("bench-{}", n % 16))
        // A fresh id per request: with the verdict store, a repeated id would be answered from
        // the store without inference and flatter the figures.
        .text("inspection_id", uuid::Uuid::new_v4().to_string());
    let started = Instant::now();
    let response = client
        .post(format!("{url}/v1/inspections"))
        .multipart(form)
        .send()
        .await
        .map_err(|_| ())?;
    let ok = response.status().is_success();
    let _ = response.bytes().await;
    if ok { Ok(started.elapsed()) } else { Err(()) }
}

/// `concurrency` clients, each sending the next request as soon as the last is answered.
pub async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    samples: &Arc<Vec<Sample>>,
    concurrency: usize,
    duration: Duration,
) -> Phase {
    let phase = Arc::new(Mutex::new(Phase::default()));
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (client, url, samples, phase) = (
            client.clone(),
            url.to_string(),
            Arc::clone(samples),
            Arc::clone(&phase),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = worker;
            while Instant::now() < end {
                let outcome = send(&client, &url, &samples[n % samples.len()], n).await;
                phase.lock().await.record(outcome);
                n += concurrency;
            }
        }));
    }
    finish(tasks, &phase, started).await
}

/// Requests at `rate` per second, each sent on time whatever the answers do.
pub async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    samples: &Arc<Vec<Sample>>,
    rate: f64,
    duration: Duration,
) -> Phase {
    let phase = Arc::new(Mutex::new(Phase::default()));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut n = 0;
    while started.elapsed() < duration {
        ticker.tick().await;
        let (client, url, samples, phase) = (
            client.clone(),
            url.to_string(),
            Arc::clone(samples),
            Arc::clone(&phase),
        );
        tasks.push(tokio::spawn(async move {
            let outcome = send(&client, &url, &samples[n % samples.len()], n).await;
            phase.lock().await.record(outcome);
        }));
        n += 1;
    }
    finish(tasks, &phase, started).await
}

/// Waits for a phase's clients and returns what they recorded.
async fn finish(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    phase: &Mutex<Phase>,
    started: Instant,
) -> Phase {
    for task in tasks {
        let _ = task.await;
    }
    let mut phase = std::mem::take(&mut *phase.lock().await);
    phase.elapsed = started.elapsed();
    phase
}
