//! The `kensa` command: serve, check, infer.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kensa::batching::BatchRunner as _;
use kensa::config::{self, CheckArgs, Cli, Command, InferArgs, ServeArgs};
use kensa::inspector::{InspectionRequest, Inspector, Limits, Readiness};
use kensa::metrics::Metrics;
use kensa::model::pipeline::blank_batch;
use kensa::model::registry::{self, ModelRepository};
use kensa::model::runtime::Runtime;
use kensa::preprocess::image::ImageLimits;
use kensa::server::Server;
use kensa::store::memory::MemoryStore;
use kensa::store::retention::ImageRetention;
use kensa::telemetry::Telemetry;

fn main() -> ExitCode {
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("kensa: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kensa: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = {
        let _in_runtime = runtime.enter();
        match Telemetry::install(cli.log_format, &cli.traces) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("kensa: {error:#}");
                return ExitCode::from(2);
            }
        }
    };
    let result = runtime.block_on(run(cli));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kensa: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Check(args) => check(args).await,
        Command::Infer(args) => infer(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Listening before anything else: SIGHUP's default action would end the process.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let grace = args.shutdown_grace;
    let server = Server::start(args).await?;
    let reloader = server.reloader();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the client file and TLS certificates");
            reloader.reload();
        }
    });
    let stopper = server.shutdown_handle();
    let stop = server_stop_signal();
    tokio::pin!(stop);
    let wait = server.wait();
    tokio::pin!(wait);
    tokio::select! {
        result = &mut wait => return result,
        () = &mut stop => {}
    }
    tracing::info!(grace = %humantime::format_duration(grace), "shutting down");
    stopper.shutdown();
    match tokio::time::timeout(grace, wait).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("shutdown grace period over; exiting with work still queued");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn server_stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The batch sizes `kensa check` times: numbers, or `max` for the model's largest.
fn batch_sizes(asked: &[String], max: usize) -> anyhow::Result<Vec<usize>> {
    asked
        .iter()
        .map(|size| match size.trim() {
            "max" => Ok(max),
            number => number
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .with_context(|| {
                    format!("--batch-sizes: {number:?} is not a size from 1 to {max}")
                }),
        })
        .collect()
}

async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let runtime = Runtime::init(&args.model.runtime)?;
    let root = args.model.model_repository.clone();
    let options = args.model.load_options();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
        let mut models = Vec::new();
        for found in registry::discover(&root)? {
            let started = Instant::now();
            let mut opened = registry::open_and_warm(runtime, &found, &options)?;
            let load = started.elapsed();
            let manifest = &found.manifest;
            let mut timings = serde_json::Map::new();
            if let Some(sessions) = opened.pool.first_mut() {
                for size in batch_sizes(&args.batch_sizes, manifest.max_batch_size)? {
                    let batch = blank_batch(manifest, size, manifest.text.max_tokens);
                    let mut runs = Vec::new();
                    for _ in 0..args.runs.max(1) {
                        let started = Instant::now();
                        sessions.run(&batch)?;
                        runs.push(started.elapsed().as_secs_f64() * 1000.0);
                    }
                    runs.sort_by(f64::total_cmp);
                    let ms = runs[runs.len() / 2];
                    timings.insert(
                        format!("batch_{size}"),
                        serde_json::json!({
                            "ms": ms,
                            "images_per_s": size as f64 * 1000.0 / ms,
                        }),
                    );
                }
            }
            models.push(serde_json::json!({
                "name": found.name,
                "version": found.version,
                "dir": found.dir,
                "provider": opened.provider,
                "threading": opened.threading,
                "batch_cap": opened.batch_cap,
                "batch_buckets": opened.buckets,
                "load_ms": load.as_secs_f64() * 1000.0,
                "warmup_ms": opened.warmup.as_secs_f64() * 1000.0,
                "timings": timings,
                "manifest": manifest,
            }));
        }
        Ok(serde_json::json!({ "ok": true, "models": models }))
    })
    .await??;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn infer(args: InferArgs) -> anyhow::Result<()> {
    let runtime = Runtime::init(&args.model.runtime)?;
    let image = tokio::fs::read(&args.image)
        .await
        .with_context(|| format!("cannot read {}", args.image.display()))?;
    let metrics = Arc::new(Metrics::new());
    let mut options = args.model.load_options();
    options.warmup_batches = 0;
    let repository =
        ModelRepository::load(&args.model.model_repository, runtime, &options, &metrics).await?;
    let readiness = Arc::new(Readiness::default());
    readiness.set_models(Arc::new(repository));
    let limits = Limits {
        image: ImageLimits {
            max_bytes: usize::MAX,
            max_pixels: u64::MAX,
        },
        max_note_chars: usize::MAX,
        default_deadline: std::time::Duration::from_secs(600),
        max_deadline: std::time::Duration::from_secs(600),
    };
    let store = Arc::new(MemoryStore::new(1, 0));
    let inspector = Inspector::new(
        readiness,
        limits,
        1,
        metrics,
        store,
        ImageRetention::default(),
    );
    let inspected = inspector
        .inspect(InspectionRequest {
            model: args.model_name,
            station_id: args.station_id,
            image: image.into(),
            note: args.note,
            heatmap: args.heatmap_out.is_some(),
            ..InspectionRequest::default()
        })
        .await?;
    if let (Some(path), Some(png)) = (&args.heatmap_out, inspected.heatmap_png) {
        std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{}", serde_json::to_string_pretty(&inspected.verdict)?);
    Ok(())
}
