//! `kensa-bench`: a load generator for a running kensa server, and the bare ONNX Runtime ceiling
//! of the same model, so the two can be compared in one run on one machine.
//!
//! A program of its own (not a `kensa` subcommand), so the HTTP client and the load generator
//! are not linked into the server.
//!
//! Phases: (1) bare batched throughput with no server; (2) closed-loop load at each
//! concurrency level; (3) open-loop load at half the best throughput, for the latency target;
//! (4) optionally a soak that samples the server's resident memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kensa::batching::{BatchInput, BatchRunner as _};
use kensa::config::ModelArgs;
use kensa::model::registry;
use kensa::model::runtime::Runtime;
use kensa::preprocess::image::{ImageLimits, prepare_image};
use kensa::preprocess::text::pad_batch;
use tokio::sync::Mutex;

/// Drive a running kensa server with real images and print throughput and latency; optionally
/// measure bare ONNX Runtime on the same model for comparison.
#[derive(Debug, Clone, Parser)]
#[command(name = "kensa-bench", version, max_term_width = 100)]
struct BenchArgs {
    /// Base URL of the running server.
    #[arg(long, env = "KENSA_BENCH_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Images to send: a folder (searched recursively for PNG/JPEG/BMP/TIFF), or a samples.jsonl
    /// with {"image", "note"} lines.
    #[arg(
        long,
        env = "KENSA_BENCH_IMAGES",
        default_value = "models/demo/fixtures/samples.jsonl"
    )]
    images: PathBuf,
    /// Comma-separated client concurrency levels for the closed-loop phase.
    #[arg(
        long,
        env = "KENSA_BENCH_CONCURRENCY",
        default_value = "1,2,4,8,16,32,64",
        value_delimiter = ','
    )]
    concurrency: Vec<usize>,
    /// Length of each measured phase.
    #[arg(long, env = "KENSA_BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured load before each phase.
    #[arg(long, env = "KENSA_BENCH_WARMUP", default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Also measure bare ONNX Runtime throughput of the model in --model-repository (run it
    /// while the server is idle: both share the CPU).
    #[arg(long, env = "KENSA_BENCH_BARE")]
    bare: bool,
    /// Run a soak at the highest concurrency for this long, sampling the server's memory.
    #[arg(long, env = "KENSA_BENCH_SOAK", value_parser = humantime::parse_duration)]
    soak: Option<Duration>,
    /// Model and runtime for the bare measurement; give --max-queue-delay the server's value,
    /// it sets the latency target printed.
    #[command(flatten)]
    model: ModelArgs,
}

/// One image and note to send.
struct Sample {
    image: Vec<u8>,
    note: String,
    name: String,
}

/// Latencies and failures of one phase.
#[derive(Default)]
struct Phase {
    latencies: Vec<Duration>,
    failures: usize,
    elapsed: Duration,
}

impl Phase {
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[index].as_secs_f64() * 1000.0
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kensa-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs every phase and prints the figures.
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let samples = Arc::new(load_samples(&args.images)?);
    println!(
        "kensa-bench: {} samples from {}",
        samples.len(),
        args.images.display()
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = args.url.trim_end_matches('/').to_string();
    wait_ready(&client, &url).await?;

    let mut ceiling = None;
    if args.bare {
        let (throughput, batch_ms, batch) = bare_throughput(&args, &samples).await?;
        println!(
            "bare ONNX Runtime: {throughput:.1} images/s (batch {batch}, {batch_ms:.2} ms per batch, no server)"
        );
        ceiling = Some((throughput, batch_ms));
    }

    println!(
        "\n| concurrency | throughput (req/s) | p50 ms | p90 ms | p99 ms | failures | server RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut best: f64 = 0.0;
    for &level in &args.concurrency {
        closed_loop(&client, &url, &samples, level, args.warmup).await;
        let phase = closed_loop(&client, &url, &samples, level, args.duration).await;
        let rss = resident_memory_mib(&client, &url).await;
        best = best.max(phase.throughput());
        println!(
            "| {level} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            phase.throughput(),
            phase.percentile_ms(50.0),
            phase.percentile_ms(90.0),
            phase.percentile_ms(99.0),
            phase.failures,
            rss.map_or("?".into(), |m| format!("{m:.0}")),
        );
    }
    if let Some((bare, _)) = ceiling {
        println!(
            "\nsaturation: {best:.1} req/s = {:.1}% of bare ONNX Runtime",
            100.0 * best / bare
        );
    }

    let rate = best / 2.0;
    if rate > 0.0 {
        let phase = open_loop(&client, &url, &samples, rate, args.duration).await;
        println!(
            "\nopen loop at half saturation ({rate:.1} req/s): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, {} failures",
            phase.percentile_ms(50.0),
            phase.percentile_ms(90.0),
            phase.percentile_ms(99.0),
            phase.failures
        );
        if let Some((_, batch_ms)) = ceiling {
            let target = 3.0 * batch_ms + args.model.max_queue_delay.as_secs_f64() * 1000.0;
            println!(
                "target p99 <= 3 x batch compute + max-queue-delay = {target:.1} ms: measured/target = {:.2}",
                phase.percentile_ms(99.0) / target
            );
        }
    }

    if let Some(soak) = args.soak {
        soak_memory(
            &client,
            &url,
            &samples,
            args.concurrency.iter().copied().max().unwrap_or(8),
            soak,
        )
        .await;
    }
    Ok(())
}

fn load_samples(source: &Path) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    if source.is_file() {
        let base = source.parent().unwrap_or(Path::new("."));
        let text = std::fs::read_to_string(source)
            .with_context(|| format!("cannot read {}", source.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)?;
            let image = value["image"]
                .as_str()
                .context("a sample line has no image")?;
            let path = base.join(image);
            samples.push(Sample {
                image: std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                note: value["note"].as_str().unwrap_or_default().to_string(),
                name: image.to_string(),
            });
        }
    } else {
        let mut stack = vec![source.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if is_image(&path) {
                    samples.push(Sample {
                        image: std::fs::read(&path)?,
                        note: String::new(),
                        name: path.display().to_string(),
                    });
                }
            }
        }
        samples.sort_by(|a, b| a.name.cmp(&b.name));
    }
    if samples.is_empty() {
        bail!("no images found in {}", source.display());
    }
    Ok(samples)
}

fn is_image(path: &Path) -> bool {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(
        extension.as_str(),
        "png" | "jpg" | "jpeg" | "bmp" | "tif" | "tiff"
    )
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if let Ok(response) = client.get(format!("{url}/readyz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not become ready within 60 s")
}

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

async fn closed_loop(
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
                let mut phase = phase.lock().await;
                match outcome {
                    Ok(latency) => phase.latencies.push(latency),
                    Err(()) => phase.failures += 1,
                }
                n += concurrency;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut phase = std::mem::take(&mut *phase.lock().await);
    phase.elapsed = started.elapsed();
    phase
}

async fn open_loop(
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
            let mut phase = phase.lock().await;
            match outcome {
                Ok(latency) => phase.latencies.push(latency),
                Err(()) => phase.failures += 1,
            }
        }));
        n += 1;
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut phase = std::mem::take(&mut *phase.lock().await);
    phase.elapsed = started.elapsed();
    phase
}

async fn soak_memory(
    client: &reqwest::Client,
    url: &str,
    samples: &Arc<Vec<Sample>>,
    concurrency: usize,
    soak: Duration,
) {
    println!(
        "\nsoak: concurrency {concurrency} for {}",
        humantime::format_duration(soak)
    );
    println!("| minute | requests/s | server RSS MiB |");
    println!("|---:|---:|---:|");
    let step = Duration::from_secs(60).min(soak);
    let mut elapsed = Duration::ZERO;
    let mut first = None;
    let mut last = None;
    while elapsed < soak {
        let phase = closed_loop(client, url, samples, concurrency, step).await;
        elapsed += step;
        let rss = resident_memory_mib(client, url).await;
        first = first.or(rss);
        last = rss.or(last);
        println!(
            "| {:.1} | {:.1} | {} |",
            elapsed.as_secs_f64() / 60.0,
            phase.throughput(),
            rss.map_or("?".into(), |m| format!("{m:.1}"))
        );
    }
    if let (Some(first), Some(last)) = (first, last) {
        println!(
            "RSS after the first step {first:.1} MiB, at the end {last:.1} MiB ({:+.1}%)",
            100.0 * (last - first) / first
        );
    }
}

async fn resident_memory_mib(client: &reqwest::Client, url: &str) -> Option<f64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("kensa_process_resident_memory_bytes "))?;
    let bytes: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(bytes / (1024.0 * 1024.0))
}

/// Runs full batches of the real samples straight through the sessions: the ceiling a server
/// can approach. Returns images/s, ms per batch and the batch size.
async fn bare_throughput(
    args: &BenchArgs,
    samples: &Arc<Vec<Sample>>,
) -> anyhow::Result<(f64, f64, usize)> {
    let runtime = Runtime::init(&args.model.runtime)?;
    let options = args.model.load_options();
    let root = args.model.model_repository.clone();
    let samples = Arc::clone(samples);
    let duration = args.duration;
    tokio::task::spawn_blocking(move || {
        let found = registry::discover(&root)?
            .into_iter()
            .next()
            .context("no model")?;
        let (mut pool, tokenizer, _, _) = registry::open_and_warm(runtime, &found, &options)?;
        let manifest = &found.manifest;
        let size = options
            .max_batch_size
            .unwrap_or(manifest.max_batch_size)
            .min(manifest.max_batch_size);
        let limits = ImageLimits {
            max_bytes: usize::MAX,
            max_pixels: u64::MAX,
        };
        let mut pixels = Vec::new();
        let mut notes = Vec::new();
        for i in 0..size {
            let sample = &samples[i % samples.len()];
            pixels.extend(prepare_image(&sample.image, &manifest.image, &limits)?.pixels);
            notes.push(tokenizer.encode(&sample.note)?);
        }
        let note_refs: Vec<&[i64]> = notes.iter().map(Vec::as_slice).collect();
        let tokens = pad_batch(&note_refs, manifest.text.pad_id);
        let batch = BatchInput {
            size,
            pixels,
            input_ids: tokens.ids,
            attention_mask: tokens.mask,
            tokens: tokens.tokens,
        };
        let sessions = pool.first_mut().context("no session")?;
        let started = Instant::now();
        let mut batches = 0usize;
        while started.elapsed() < duration {
            sessions.run(&batch)?;
            batches += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        Ok((
            (batches * size) as f64 / elapsed,
            1000.0 * elapsed / batches as f64,
            size,
        ))
    })
    .await?
}
