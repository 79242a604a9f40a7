//! `kensa-bench`: a load generator for kensa that says where every millisecond goes, the bare
//! ONNX Runtime ceiling of the same model in the service's arrangement, a sweep of serving
//! configurations, and a table of how cost grows with load, image size, note length and
//! batch size.
//!
//! A program of its own (not a `kensa` subcommand), so the HTTP client and the load generator
//! are not linked into the server.

mod bare;
mod images;
mod load;
mod spawn;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kensa::config::ModelArgs;

use crate::images::{FRAME_SIZES, Sample};
use crate::load::{Phase, closed_loop, open_loop};
use crate::spawn::SpawnedServer;
use crate::stats::{Cost, Source, load_average};

/// Drive kensa with realistic images and print, for every phase, throughput, latency, server
/// CPU per request, memory and the mean time of every stage; optionally compare with bare ONNX
/// Runtime, sweep serving configurations, or tabulate how cost grows.
#[derive(Debug, Clone, Parser)]
#[command(name = "kensa-bench", version, max_term_width = 100)]
struct BenchArgs {
    /// Base URL of the running server (not used by --sweep and --growth, which start their own).
    #[arg(long, env = "KENSA_BENCH_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Images to send: a folder (searched recursively for PNG/JPEG/BMP/TIFF), or a samples.jsonl
    /// with {"image", "note"} lines. Default: the generated 640x640 frames.
    #[arg(long, env = "KENSA_BENCH_IMAGES")]
    images: Option<PathBuf>,
    /// Where generated frames live (written on first use, or by --make-images).
    #[arg(
        long,
        env = "KENSA_BENCH_IMAGES_ROOT",
        default_value = ".cache/bench-images"
    )]
    images_root: PathBuf,
    /// Write AOI-like grayscale JPEGs at 640x640, 2448x2048 and 4096x3072 with notes to
    /// --images-root, then exit.
    #[arg(long, env = "KENSA_BENCH_MAKE_IMAGES")]
    make_images: bool,
    /// Replace every note with one of this many characters.
    #[arg(long, env = "KENSA_BENCH_NOTE_CHARS")]
    note_chars: Option<usize>,
    /// Comma-separated client concurrency levels for the closed-loop phases.
    #[arg(
        long,
        env = "KENSA_BENCH_CONCURRENCY",
        default_value = "1,4,16,64",
        value_delimiter = ','
    )]
    concurrency: Vec<usize>,
    /// Length of each measured phase.
    #[arg(long, env = "KENSA_BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured load before each phase.
    #[arg(long, env = "KENSA_BENCH_WARMUP", default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// After the load phases, measure bare ONNX Runtime on the model in --model-repository, in
    /// the arrangement the server's flags give (pass the server's --sessions,
    /// --intra-threads, --max-batch-size), and the CPU the server spends outside it.
    #[arg(long, env = "KENSA_BENCH_BARE")]
    bare: bool,
    /// Read server CPU and memory from /proc/PID (and its child processes) instead of the
    /// server's /metrics: for a server without kensa's CPU metric (bench/peer, older kensa).
    #[arg(long, env = "KENSA_BENCH_PID")]
    pid: Option<u32>,
    /// Run a soak at the highest concurrency for this long, sampling the server's memory.
    #[arg(long, env = "KENSA_BENCH_SOAK", value_parser = humantime::parse_duration)]
    soak: Option<Duration>,
    /// Start kensa with each combination of the --sweep-* values, measure its saturation, and
    /// print the best as `kensa serve` flags beside the default configuration.
    #[arg(long, env = "KENSA_BENCH_SWEEP")]
    sweep: bool,
    /// Start kensa and tabulate how CPU per request, throughput and p99 grow with stations,
    /// image size, note length and max batch.
    #[arg(long, env = "KENSA_BENCH_GROWTH")]
    growth: bool,
    /// The kensa binary --sweep and --growth start.
    #[arg(
        long,
        env = "KENSA_BENCH_SERVER_BIN",
        default_value = "target/release/kensa"
    )]
    server_bin: PathBuf,
    /// Run the servers --sweep and --growth start on these CPUs only (`taskset -c`), to measure
    /// a smaller machine, or to keep the load generator off the server's cores.
    #[arg(long, env = "KENSA_BENCH_SERVER_CPUS")]
    server_cpus: Option<String>,
    /// Extra flags for every server --sweep and --growth start (for example --store=sqlite).
    #[arg(long, env = "KENSA_BENCH_SERVER_FLAGS", value_delimiter = ' ')]
    server_flags: Vec<String>,
    /// --sessions values the sweep tries.
    #[arg(
        long,
        env = "KENSA_BENCH_SWEEP_SESSIONS",
        default_value = "1,2,4",
        value_delimiter = ','
    )]
    sweep_sessions: Vec<usize>,
    /// --intra-threads values the sweep tries.
    #[arg(
        long,
        env = "KENSA_BENCH_SWEEP_INTRA_THREADS",
        default_value = "1,2",
        value_delimiter = ','
    )]
    sweep_intra_threads: Vec<usize>,
    /// --max-batch-size values the sweep tries.
    #[arg(
        long,
        env = "KENSA_BENCH_SWEEP_MAX_BATCH",
        default_value = "1,4,8,16",
        value_delimiter = ','
    )]
    sweep_max_batch: Vec<usize>,
    /// --max-queue-delay values the sweep tries.
    #[arg(long, env = "KENSA_BENCH_SWEEP_MAX_DELAY", default_value = "0ms,2ms", value_delimiter = ',', value_parser = humantime::parse_duration)]
    sweep_max_delay: Vec<Duration>,
    /// Clients in the sweep's saturation phase.
    #[arg(long, env = "KENSA_BENCH_SWEEP_CONCURRENCY", default_value_t = 64)]
    sweep_concurrency: usize,
    /// Model and runtime of the bare measurement (and the model --sweep and --growth serve).
    #[command(flatten)]
    model: ModelArgs,
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

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.make_images {
        return images::make_images(&args.images_root);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()?;
    let samples = Arc::new(samples(&args, args.images.as_deref(), FRAME_SIZES[0])?);
    println!("kensa-bench: {} samples, {}", samples.len(), load_average());
    if args.sweep {
        return sweep(&args, &client, &samples).await;
    }
    if args.growth {
        return growth(&args, &client).await;
    }
    serve_phases(&args, &client, &samples).await
}

/// The samples of `source`, or of the generated frames of `size` (made on first use).
fn samples(
    args: &BenchArgs,
    source: Option<&Path>,
    size: (u32, u32),
) -> anyhow::Result<Vec<Sample>> {
    let source = match source {
        Some(source) => source.to_path_buf(),
        None => {
            images::make_images(&args.images_root)?;
            images::size_dir(&args.images_root, size).join("samples.jsonl")
        }
    };
    images::load_samples(&source, args.note_chars)
}

/// One measured phase: load, and what it cost the server.
struct Measured {
    phase: Phase,
    cost: Cost,
}

async fn closed_phase(
    client: &reqwest::Client,
    url: &str,
    source: &Source,
    samples: &Arc<Vec<Sample>>,
    clients: usize,
    args: &BenchArgs,
) -> Measured {
    closed_loop(client, url, samples, clients, args.warmup).await;
    let before = source.snapshot(client).await;
    let phase = closed_loop(client, url, samples, clients, args.duration).await;
    let after = source.snapshot(client).await;
    let cost = Cost::between(
        &before,
        &after,
        phase.latencies.len(),
        phase.elapsed.as_secs_f64(),
    );
    Measured { phase, cost }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("?".into(), |v| format!("{v:.digits$}"))
}

const PHASE_HEADER: &str = "| clients | req/s | p50 ms | p90 ms | p99 ms | failed | CPU ms/req | cores busy | RSS MiB | mean batch | machine |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|";

fn phase_row(label: &str, m: &Measured) -> String {
    format!(
        "| {label} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
        m.phase.throughput(),
        m.phase.percentile_ms(50.0),
        m.phase.percentile_ms(90.0),
        m.phase.percentile_ms(99.0),
        m.phase.failures,
        opt(m.cost.cpu_ms_per_request, 2),
        opt(m.cost.cores, 2),
        opt(m.cost.rss_mib, 0),
        opt(m.cost.mean_batch, 1),
        load_average(),
    )
}

/// Closed-loop phases at each concurrency, open loop at half saturation, then the bare ceiling
/// and the CPU spent outside ONNX Runtime.
async fn serve_phases(
    args: &BenchArgs,
    client: &reqwest::Client,
    samples: &Arc<Vec<Sample>>,
) -> anyhow::Result<()> {
    let url = args.url.trim_end_matches('/').to_string();
    wait_ready(client, &url).await?;
    let source = Source {
        url: url.clone(),
        pid: args.pid,
    };
    println!("\n{PHASE_HEADER}");
    let mut phases = Vec::new();
    for &clients in &args.concurrency {
        let measured = closed_phase(client, &url, &source, samples, clients, args).await;
        println!("{}", phase_row(&clients.to_string(), &measured));
        phases.push((clients, measured));
    }
    println!("\nmean time of each stage (ms; per request, or per batch where marked):");
    for (clients, measured) in &phases {
        println!("- {clients} clients: {}", measured.cost.stage_line());
    }
    let Some((_, saturation)) = phases
        .iter()
        .max_by(|a, b| a.1.phase.throughput().total_cmp(&b.1.phase.throughput()))
    else {
        return Ok(());
    };
    let best = saturation.phase.throughput();

    let rate = best / 2.0;
    if rate > 0.0 {
        let before = source.snapshot(client).await;
        let phase = open_loop(client, &url, samples, rate, args.duration).await;
        let after = source.snapshot(client).await;
        let cost = Cost::between(
            &before,
            &after,
            phase.latencies.len(),
            phase.elapsed.as_secs_f64(),
        );
        println!(
            "\nopen loop at half saturation ({rate:.1} req/s): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, {} failed, mean batch {}, {}",
            phase.percentile_ms(50.0),
            phase.percentile_ms(90.0),
            phase.percentile_ms(99.0),
            phase.failures,
            opt(cost.mean_batch, 1),
            load_average(),
        );
        if let Some((_, batch_ms)) = cost.stages.iter().find(|(name, _)| *name == "batch") {
            let delay = args.model.max_queue_delay.as_secs_f64() * 1000.0;
            let target = 2.0 * batch_ms + delay;
            println!(
                "target p99 <= 2 x compute of the batches formed ({batch_ms:.2} ms) + max delay ({delay:.1} ms) = {target:.2} ms: measured / target = {:.2}",
                phase.percentile_ms(99.0) / target
            );
        }
    }

    if args.bare {
        let cap = chosen_batch_cap(client, &url)
            .await
            .and_then(|cap| usize::try_from(cap).ok())
            .unwrap_or(usize::MAX);
        let max = bare::measure(&args.model, samples, cap, args.duration).await?;
        let plan = max.threading;
        println!(
            "\nbare ONNX Runtime, {} session sets x {} threads, batch {}: {:.1} images/s, {:.2} ms per batch, {:.3} CPU ms per image ({})",
            plan.sessions,
            plan.intra_threads,
            max.batch,
            max.images_per_second,
            max.batch_ms,
            max.cpu_ms_per_image,
            load_average(),
        );
        println!(
            "service at saturation / bare = {best:.1} / {:.1} = {:.2}",
            max.images_per_second,
            best / max.images_per_second
        );
        let formed = saturation.cost.mean_batch.unwrap_or(1.0).round() as usize;
        let same = bare::measure(&args.model, samples, formed, args.duration).await?;
        println!(
            "bare at the batch size the service formed ({}): {:.1} images/s, {:.3} CPU ms per image",
            same.batch, same.images_per_second, same.cpu_ms_per_image
        );
        if let Some(cpu) = saturation.cost.cpu_ms_per_request {
            println!(
                "CPU outside ONNX Runtime per request = {cpu:.3} - {:.3} = {:.3} ms",
                same.cpu_ms_per_image,
                cpu - same.cpu_ms_per_image
            );
        }
    }

    if let Some(soak) = args.soak {
        let clients = args.concurrency.iter().copied().max().unwrap_or(8);
        soak_memory(client, &url, &source, samples, clients, soak).await;
    }
    Ok(())
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
    anyhow::bail!("{url} did not become ready within 60 s")
}

/// The batch cap the server at `url` chose (or was given), from `/v1/models`.
async fn chosen_batch_cap(client: &reqwest::Client, url: &str) -> Option<u64> {
    let models: serde_json::Value = client
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    models["models"][0]["max_batch_size"].as_u64()
}

/// One serving configuration the sweep tries: `kensa serve` flags.
fn sweep_configs(args: &BenchArgs) -> Vec<Vec<String>> {
    let mut configs = vec![Vec::new()];
    for &sessions in &args.sweep_sessions {
        for &threads in &args.sweep_intra_threads {
            for &batch in &args.sweep_max_batch {
                for delay in &args.sweep_max_delay {
                    configs.push(vec![
                        format!("--sessions={sessions}"),
                        format!("--intra-threads={threads}"),
                        format!("--max-batch-size={batch}"),
                        format!("--max-queue-delay={}", humantime::format_duration(*delay)),
                    ]);
                }
            }
        }
    }
    configs.push(Vec::new());
    configs
}

/// Starts kensa with every configuration, measures its saturation, prints the best.
async fn sweep(
    args: &BenchArgs,
    client: &reqwest::Client,
    samples: &Arc<Vec<Sample>>,
) -> anyhow::Result<()> {
    println!(
        "\nsweep: {} clients, {} per configuration; the default configuration runs first and last",
        args.sweep_concurrency,
        humantime::format_duration(args.duration)
    );
    println!(
        "\n| flags | req/s | CPU ms/req | p99 ms | mean batch | machine |\n|---|---:|---:|---:|---:|---|"
    );
    let mut results: Vec<(Vec<String>, f64, f64)> = Vec::new();
    for flags in sweep_configs(args) {
        let server = start_server(args, client, flags.clone()).await?;
        let source = Source {
            url: server.url.clone(),
            pid: None,
        };
        let m = closed_phase(
            client,
            &server.url,
            &source,
            samples,
            args.sweep_concurrency,
            args,
        )
        .await;
        let shown = if flags.is_empty() {
            match chosen_batch_cap(client, &server.url).await {
                Some(cap) => format!("(default; batch cap {cap})"),
                None => "(default)".to_string(),
            }
        } else {
            flags.join(" ")
        };
        drop(server);
        println!(
            "| {shown} | {:.1} | {} | {:.1} | {} | {} |",
            m.phase.throughput(),
            opt(m.cost.cpu_ms_per_request, 2),
            m.phase.percentile_ms(99.0),
            opt(m.cost.mean_batch, 1),
            load_average()
        );
        results.push((
            flags,
            m.phase.throughput(),
            m.cost.cpu_ms_per_request.unwrap_or(f64::NAN),
        ));
    }
    let defaults: Vec<&(Vec<String>, f64, f64)> =
        results.iter().filter(|r| r.0.is_empty()).collect();
    let fastest = results
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .context("no configuration ran")?;
    let leanest = results
        .iter()
        .filter(|r| r.2.is_finite())
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .context("no CPU figures")?;
    println!(
        "\nbest throughput: kensa serve {} ({:.1} req/s, {:.2} CPU ms/req)",
        fastest.0.join(" "),
        fastest.1,
        fastest.2
    );
    println!(
        "least CPU per request: kensa serve {} ({:.1} req/s, {:.2} CPU ms/req)",
        leanest.0.join(" "),
        leanest.1,
        leanest.2
    );
    for (run, default) in defaults.iter().enumerate() {
        println!(
            "default (run {}): throughput {:.3} of the best, CPU per request {:.3} of the least",
            run + 1,
            default.1 / fastest.1,
            default.2 / leanest.2
        );
    }
    Ok(())
}

/// Starts the --server-bin with `flags` and the --server-flags.
async fn start_server(
    args: &BenchArgs,
    client: &reqwest::Client,
    mut flags: Vec<String>,
) -> anyhow::Result<SpawnedServer> {
    flags.extend(args.server_flags.iter().cloned());
    SpawnedServer::start(
        &args.server_bin,
        &args.model.model_repository,
        &flags,
        args.server_cpus.as_deref(),
        client,
    )
    .await
}

/// How cost grows with stations, image size, note length and max batch.
async fn growth(args: &BenchArgs, client: &reqwest::Client) -> anyhow::Result<()> {
    println!(
        "\n| what grows | value | req/s | CPU ms/req | p99 ms | mean batch | machine |\n|---|---:|---:|---:|---:|---:|---|"
    );
    let row = |what: &str, value: &str, m: &Measured| {
        println!(
            "| {what} | {value} | {:.1} | {} | {:.1} | {} | {} |",
            m.phase.throughput(),
            opt(m.cost.cpu_ms_per_request, 2),
            m.phase.percentile_ms(99.0),
            opt(m.cost.mean_batch, 1),
            load_average()
        )
    };
    let frames = |size, note_chars| -> anyhow::Result<Arc<Vec<Sample>>> {
        let mut with_notes = args.clone();
        with_notes.note_chars = Some(note_chars);
        Ok(Arc::new(samples(&with_notes, None, size)?))
    };
    const CLIENTS: usize = 16;
    let server = start_server(args, client, Vec::new()).await?;
    let source = Source {
        url: server.url.clone(),
        pid: None,
    };
    let standard = frames(FRAME_SIZES[0], 200)?;
    for clients in [1, 4, 16, 64, 256] {
        let m = closed_phase(client, &server.url, &source, &standard, clients, args).await;
        row("stations (640x640, note 200)", &clients.to_string(), &m);
    }
    for size in FRAME_SIZES {
        let samples = frames(size, 200)?;
        let m = closed_phase(client, &server.url, &source, &samples, CLIENTS, args).await;
        row(
            "image size (16 stations)",
            &format!("{}x{}", size.0, size.1),
            &m,
        );
    }
    for chars in [0, 200, 4096] {
        let samples = frames(FRAME_SIZES[0], chars)?;
        let m = closed_phase(client, &server.url, &source, &samples, CLIENTS, args).await;
        row("note characters (16 stations)", &chars.to_string(), &m);
    }
    drop(server);
    for batch in [1, 4, 8, 16] {
        let server = start_server(args, client, vec![format!("--max-batch-size={batch}")]).await?;
        let source = Source {
            url: server.url.clone(),
            pid: None,
        };
        let m = closed_phase(client, &server.url, &source, &standard, 64, args).await;
        row("max batch (64 stations)", &batch.to_string(), &m);
    }
    Ok(())
}

async fn soak_memory(
    client: &reqwest::Client,
    url: &str,
    source: &Source,
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
        let rss = source.snapshot(client).await.rss_mib;
        first = first.or(rss);
        last = rss.or(last);
        println!(
            "| {:.1} | {:.1} | {} |",
            elapsed.as_secs_f64() / 60.0,
            phase.throughput(),
            opt(rss, 1)
        );
    }
    if let (Some(first), Some(last)) = (first, last) {
        println!(
            "RSS after the first step {first:.1} MiB, at the end {last:.1} MiB ({:+.1}%)",
            100.0 * (last - first) / first
        );
    }
}
