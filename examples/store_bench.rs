//! Verdict store write latency and throughput, without inference: concurrent writers insert
//! verdicts the size of the demo model's and the figures are printed per backend.
//!
//! ```sh
//! cargo run --release --example store_bench -- --store sqlite:/tmp/bench.sqlite
//! cargo run --release --example store_bench -- \
//!     --store 'postgres://postgres@127.0.0.1/test?options=-csearch_path%3Dbench'
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use kensa::store::record::sha256_hex;
use kensa::store::{self, NewVerdict, StoreLocation};
use kensa::verdict::{AttentionMap, Timings, Verdict};

/// Store write benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Where to write: `sqlite:PATH` or a postgres:// URL (its schema must exist).
    #[arg(long, env = "KENSA_BENCH_STORE")]
    store: String,
    /// Concurrent writers.
    #[arg(long, env = "KENSA_BENCH_WRITERS", default_value_t = 32)]
    writers: usize,
    /// Verdicts each writer inserts.
    #[arg(long, env = "KENSA_BENCH_EACH", default_value_t = 300)]
    each: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let location =
        StoreLocation::parse(&args.store, std::path::Path::new(".")).map_err(anyhow::Error::msg)?;
    let store = store::open(&location, &Default::default()).await?.verdicts;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let writers = (0..args.writers).map(|w| {
        let store = store.clone();
        let run = run.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(args.each);
            for i in 0..args.each {
                let record = record(&format!("bench-{w}"), &format!("{run}-{i}"));
                let begun = Instant::now();
                store.insert(record).await?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok(latencies)
        })
    });
    let mut latencies: Vec<Duration> = Vec::new();
    for writer in futures::future::join_all(writers).await {
        latencies.extend(writer??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{} writers x {} verdicts: {:.0} writes/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.writers,
        args.each,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
    Ok(())
}

/// A verdict shaped like the demo model's (7 labels, 7x7 attention, metadata).
fn record(station: &str, inspection: &str) -> NewVerdict {
    let verdict = Verdict {
        inspection_id: inspection.into(),
        station_id: station.into(),
        model: "kensa-demo".into(),
        model_version: 1,
        label: "void".into(),
        display_label: "Void".into(),
        is_defect: true,
        confidence: 0.93,
        probabilities: (0..7).map(|i| (format!("class_{i}"), 0.01)).collect(),
        attention: AttentionMap {
            width: 7,
            height: 7,
            values: vec![1.0 / 49.0; 49],
        },
        timings: Timings::default(),
        batch_size: 8,
        received_at: chrono::Utc::now(),
        metadata: [
            ("line", "L3"),
            ("lot_id", "LOT42"),
            ("unit_position", "U17"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        disposition: None,
        decision: None,
        ocr: None,
        model_note: None,
    };
    NewVerdict {
        verdict,
        note: "lot L2450-11 via 3-1; dia 59.1um".into(),
        image_sha256: sha256_hex(inspection.as_bytes()),
        image: None,
    }
}
