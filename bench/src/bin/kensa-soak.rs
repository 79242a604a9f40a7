//! `kensa-soak`: many stations against one running kensa for a bounded time, over native HTTP,
//! native gRPC and the Open Inference Protocol (HTTP and gRPC), with TLS and a token per station;
//! prints each minute's p50/p99 and errors, the server's resident memory and open descriptors at
//! start and end, and checks at the end that every acknowledged unit is stored once.
//! `scripts/soak.sh` sets up the certificates, the client file and the server, and runs it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use kensa::api::proto::inference as v2;
use kensa::api::proto::kensa_v1 as pb;
use tokio::sync::Mutex;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Drive a running kensa with many stations over every protocol; see the module.
#[derive(Debug, Parser)]
#[command(name = "kensa-soak", max_term_width = 100)]
struct SoakArgs {
    /// Host name the server certificate is for; it resolves to --address.
    #[arg(long, default_value = "kensa.test")]
    host: String,
    /// The server's loopback address (HTTP port).
    #[arg(long)]
    http: std::net::SocketAddr,
    /// The server's gRPC port address.
    #[arg(long)]
    grpc: std::net::SocketAddr,
    /// PEM CA of the server certificate.
    #[arg(long)]
    ca: PathBuf,
    /// File with one station token per line (station i uses line i, station id `soak-<i>`).
    #[arg(long)]
    station_tokens: PathBuf,
    /// The MES token, for the final check.
    #[arg(long)]
    mes_token: String,
    /// The server's process id, for memory and descriptors.
    #[arg(long)]
    pid: u32,
    /// How long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stations (each its own token and station id).
    #[arg(long, default_value_t = 32)]
    stations: usize,
    /// The demo fixture samples.
    #[arg(long, default_value = "models/demo/fixtures/samples.jsonl")]
    samples: PathBuf,
}

/// How a station talks to kensa.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Protocol {
    Http,
    Grpc,
    V2Http,
    V2Grpc,
}

/// What one request came to.
struct Outcome {
    protocol: Protocol,
    at: Duration,
    latency: Duration,
    error: Option<String>,
}

struct Station {
    index: usize,
    token: String,
    protocol: Protocol,
    http: reqwest::Client,
    grpc: Channel,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = SoakArgs::parse();
    let ca = std::fs::read(&args.ca).context("CA file")?;
    let tokens: Vec<String> = std::fs::read_to_string(&args.station_tokens)?
        .lines()
        .map(str::to_string)
        .collect();
    if tokens.len() < args.stations {
        bail!(
            "{} station tokens for {} stations",
            tokens.len(),
            args.stations
        );
    }
    let samples = load_samples(&args.samples)?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .resolve(&args.host, args.http)
        .build()?;
    let grpc = Channel::from_shared(format!("https://{}:{}", args.host, args.grpc.port()))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name(args.host.clone()),
        )?
        .connect_with_connector(tower::service_fn({
            let address = args.grpc;
            move |_| async move {
                tokio::net::TcpStream::connect(address)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await?;
    let start_usage = usage(args.pid)?;
    println!(
        "start: server RSS {:.1} MiB, {} open descriptors; {} stations for {}",
        start_usage.0,
        start_usage.1,
        args.stations,
        humantime::format_duration(args.duration)
    );
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let base = format!("https://{}:{}", args.host, args.http.port());
    let samples = Arc::new(samples);
    let mut tasks = Vec::new();
    for index in 0..args.stations {
        let station = Station {
            index,
            token: tokens[index].clone(),
            protocol: [
                Protocol::Http,
                Protocol::Grpc,
                Protocol::V2Http,
                Protocol::V2Grpc,
            ][index % 4],
            http: http.clone(),
            grpc: grpc.clone(),
        };
        let (outcomes, acknowledged, samples, base) = (
            Arc::clone(&outcomes),
            Arc::clone(&acknowledged),
            Arc::clone(&samples),
            base.clone(),
        );
        let duration = args.duration;
        tasks.push(tokio::spawn(async move {
            let mut unit = 0usize;
            while started.elapsed() < duration {
                let (image, note) = &samples[(station.index + unit) % samples.len()];
                let id = format!("u{unit}");
                let sent = Instant::now();
                let result = inspect(&station, &base, &id, image, note).await;
                let outcome = Outcome {
                    protocol: station.protocol,
                    at: started.elapsed(),
                    latency: sent.elapsed(),
                    error: result.as_ref().err().map(|e| format!("{e:#}")),
                };
                if result.is_ok() {
                    acknowledged
                        .lock()
                        .await
                        .push(format!("soak-{}/{id}", station.index));
                }
                outcomes.lock().await.push(outcome);
                unit += 1;
            }
        }));
    }
    let mut minute = 1;
    while started.elapsed() < args.duration {
        let next = Duration::from_secs(60 * minute).min(args.duration);
        tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
        let outcomes = outcomes.lock().await;
        report_minute(&outcomes, minute, args.pid);
        minute += 1;
    }
    for task in tasks {
        task.await?;
    }
    let end_usage = usage(args.pid)?;
    let outcomes = outcomes.lock().await;
    let errors: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let mut by_protocol = BTreeMap::new();
    for outcome in outcomes.iter() {
        *by_protocol.entry(outcome.protocol).or_insert(0usize) += 1;
    }
    println!(
        "end: server RSS {:.1} MiB, {} open descriptors",
        end_usage.0, end_usage.1
    );
    println!(
        "total: {} requests {:?}, {} unexpected errors, overall p50 {:.1} ms, p99 {:.1} ms",
        outcomes.len(),
        by_protocol,
        errors.len(),
        percentile(outcomes.iter(), 0.50),
        percentile(outcomes.iter(), 0.99)
    );
    for error in errors.iter().take(10) {
        println!(
            "  error ({:?} at {:.1}s): {}",
            error.protocol,
            error.at.as_secs_f64(),
            error.error.as_deref().unwrap_or_default()
        );
    }
    let stored = count_stored(&http, &base, &args.mes_token).await?;
    let acknowledged = acknowledged.lock().await.len();
    println!("stored: {stored} verdicts for {acknowledged} acknowledged units");
    if stored != acknowledged || !errors.is_empty() {
        bail!("the soak found errors or a stored count that differs from the acknowledged units");
    }
    Ok(())
}

/// One unit over the station's protocol; every station id is `soak-<index>`.
async fn inspect(
    station: &Station,
    base: &str,
    id: &str,
    image: &[u8],
    note: &str,
) -> anyhow::Result<()> {
    let station_id = format!("soak-{}", station.index);
    match station.protocol {
        Protocol::Http => {
            let form = reqwest::multipart::Form::new()
                .part(
                    "image",
                    reqwest::multipart::Part::bytes(image.to_vec()).file_name("unit.png"),
                )
                .text("note", note.to_string())
                .text("station_id", station_id)
                .text("inspection_id", id.to_string());
            let response = station
                .http
                .post(format!("{base}/v1/inspections"))
                .bearer_auth(&station.token)
                .multipart(form)
                .send()
                .await?;
            expect_ok(response).await
        }
        Protocol::V2Http => {
            use base64::Engine as _;
            let body = serde_json::json!({"inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES",
                 "data": [base64::engine::general_purpose::STANDARD.encode(image)]},
                {"name": "note", "shape": [1], "datatype": "BYTES", "data": [note]},
                {"name": "station_id", "shape": [1], "datatype": "BYTES", "data": [station_id]},
                {"name": "inspection_id", "shape": [1], "datatype": "BYTES", "data": [id]},
            ]});
            let response = station
                .http
                .post(format!("{base}/v2/models/kensa-demo/infer"))
                .bearer_auth(&station.token)
                .json(&body)
                .send()
                .await?;
            expect_ok(response).await
        }
        Protocol::Grpc => {
            let mut client =
                pb::inspection_service_client::InspectionServiceClient::new(station.grpc.clone());
            let request = authorized(
                pb::InspectRequest {
                    station_id,
                    inspection_id: id.to_string(),
                    image: image.to_vec().into(),
                    note: note.to_string(),
                    ..Default::default()
                },
                &station.token,
            )?;
            client.inspect(request).await?;
            Ok(())
        }
        Protocol::V2Grpc => {
            let mut client = v2::grpc_inference_service_client::GrpcInferenceServiceClient::new(
                station.grpc.clone(),
            );
            let tensor = |name: &str| v2::model_infer_request::InferInputTensor {
                name: name.to_string(),
                datatype: "BYTES".into(),
                shape: vec![1],
                ..Default::default()
            };
            let prefixed = |bytes: &[u8]| {
                let mut raw = (bytes.len() as u32).to_le_bytes().to_vec();
                raw.extend_from_slice(bytes);
                raw.into()
            };
            let request = authorized(
                v2::ModelInferRequest {
                    model_name: "kensa-demo".into(),
                    inputs: ["image", "note", "station_id", "inspection_id"]
                        .map(tensor)
                        .to_vec(),
                    raw_input_contents: vec![
                        prefixed(image),
                        prefixed(note.as_bytes()),
                        prefixed(station_id.as_bytes()),
                        prefixed(id.as_bytes()),
                    ],
                    ..Default::default()
                },
                &station.token,
            )?;
            client.model_infer(request).await?;
            Ok(())
        }
    }
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn expect_ok(response: reqwest::Response) -> anyhow::Result<()> {
    let status = response.status();
    if status != 200 {
        bail!("{status}: {}", response.text().await.unwrap_or_default());
    }
    response.bytes().await?;
    Ok(())
}

/// Verdicts in the store, paged through the MES API.
async fn count_stored(http: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<usize> {
    let mut since = 0u64;
    let mut count = 0;
    loop {
        let page: serde_json::Value = http
            .get(format!("{base}/v1/verdicts?since={since}&limit=1000"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let verdicts = page["verdicts"].as_array().map_or(0, Vec::len);
        if verdicts == 0 {
            return Ok(count);
        }
        count += verdicts;
        since = page["next_cursor"].as_u64().context("next_cursor")?;
    }
}

fn report_minute(outcomes: &[Outcome], minute: u64, pid: u32) {
    let from = Duration::from_secs(60 * (minute - 1));
    let to = Duration::from_secs(60 * minute);
    let window: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.at >= from && o.at < to)
        .collect();
    let errors = window.iter().filter(|o| o.error.is_some()).count();
    let mut line = format!(
        "minute {minute}: {} requests, {errors} errors, p50 {:.1} ms, p99 {:.1} ms",
        window.len(),
        percentile(window.iter().copied(), 0.50),
        percentile(window.iter().copied(), 0.99)
    );
    for protocol in [
        Protocol::Http,
        Protocol::Grpc,
        Protocol::V2Http,
        Protocol::V2Grpc,
    ] {
        let p99 = percentile(
            window.iter().copied().filter(|o| o.protocol == protocol),
            0.99,
        );
        line.push_str(&format!(", {protocol:?} p99 {p99:.1}"));
    }
    if let Ok((rss, fds)) = usage(pid) {
        line.push_str(&format!("; RSS {rss:.1} MiB, {fds} fds"));
    }
    println!("{line}");
}

fn percentile<'a>(outcomes: impl Iterator<Item = &'a Outcome>, quantile: f64) -> f64 {
    let mut latencies: Vec<Duration> = outcomes.map(|o| o.latency).collect();
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort();
    let index = ((latencies.len() as f64 * quantile).ceil() as usize).clamp(1, latencies.len()) - 1;
    latencies[index].as_secs_f64() * 1000.0
}

/// The server's resident memory in MiB and its open descriptors.
fn usage(pid: u32) -> anyhow::Result<(f64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((kib / 1024.0, fds))
}

/// (image, note) of each fixture sample.
fn load_samples(path: &std::path::Path) -> anyhow::Result<Vec<(Vec<u8>, String)>> {
    let dir = path.parent().context("samples folder")?;
    std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)?;
            let image = value["image"].as_str().context("image")?;
            Ok((
                std::fs::read(dir.join(image))?,
                value["note"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}
