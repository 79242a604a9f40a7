//! Configuration: command-line flags, each with an environment variable, optionally read from a
//! TOML file.
//!
//! Precedence, highest first: flag, environment variable, `--config` file, built-in default.
//! The file's keys are the long flag names (`http-port = 8080`, `max-queue-delay = "5ms"`);
//! its `[[thresholds]]` tables override models' decision thresholds per station or line
//! (structured settings that no flag could carry).

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::decision::ThresholdOverride;
use crate::edge::EdgeArgs;
use crate::inspector::Limits;
use crate::model::registry::{BucketChoice, LoadOptions};
use crate::model::routing::{VersionPolicy, VersionRoute};
use crate::model::runtime::RuntimeOptions;
use crate::model::threading::ThreadingRequest;
use crate::preprocess::image::ImageLimits;
use crate::publish::mqtt::MqttConfig;
use crate::store::StoreLocation;
use crate::store::retention::{ImageRetention, RetentionPolicy};

/// kensa (検査): defect classification for AOI production lines.
///
/// Stations send an image and a short note; kensa answers with a defect class, a confidence and
/// an attention map, from a PFA+CMAF model served by ONNX Runtime.
#[derive(Debug, Parser)]
#[command(
    name = "kensa",
    version,
    args_override_self = true,
    max_term_width = 100
)]
pub struct Cli {
    /// TOML file with default values for any flag (keys are long flag names).
    #[arg(long, env = "KENSA_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        env = "KENSA_LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Where spans are exported, if anywhere.
    #[command(flatten)]
    pub traces: TraceArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// OpenTelemetry trace export (off unless an endpoint is given).
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Export every span (request, inspect, preprocess, queue wait, batch, store) over OTLP/gRPC
    /// to this collector, e.g. `http://otel-collector:4317`; unset: no export. A request's
    /// W3C `traceparent` header (or gRPC metadata entry) makes its spans part of the caller's
    /// trace.
    #[arg(long, env = "KENSA_OTLP_ENDPOINT", global = true, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Share of traces to export (0 to 1); a trace the caller sampled is always kept.
    #[arg(
        long,
        env = "KENSA_OTLP_SAMPLE_RATIO",
        global = true,
        default_value_t = 1.0,
        value_parser = parse_ratio,
        value_name = "RATIO"
    )]
    pub otlp_sample_ratio: f64,
    /// `service.name` of the exported spans (one per deployment, so a collector can tell
    /// several kensa instances apart).
    #[arg(
        long,
        env = "KENSA_OTLP_SERVICE_NAME",
        global = true,
        default_value = "kensa",
        value_name = "NAME"
    )]
    pub otlp_service_name: String,
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{value:?} is not a number from 0 to 1")),
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the inspection service.
    Serve(Box<ServeArgs>),
    /// Load and validate a model repository, warm it up, print manifest, provider and timings.
    Check(CheckArgs),
    /// Inspect one image and note from the command line; print the verdict as JSON.
    Infer(InferArgs),
}

/// Where the models are and how they run.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model repository: one model folder with manifest.json, or `<model>/<version>/` folders.
    #[arg(
        long,
        env = "KENSA_MODEL_REPOSITORY",
        default_value = "models/demo",
        value_name = "DIR"
    )]
    pub model_repository: PathBuf,
    /// ONNX Runtime and execution provider.
    #[command(flatten)]
    pub runtime: RuntimeOptions,
    /// Session sets per model version: how many batches may run at once (default: cores /
    /// --intra-threads on CPU, 2 on a GPU).
    #[arg(long, env = "KENSA_SESSIONS")]
    pub sessions: Option<usize>,
    /// Batch sizes batches are padded to: auto (powers of two up to the largest batch on
    /// TensorRT, none elsewhere), none, or a list such as 1,2,4,8,16.
    #[arg(long, env = "KENSA_BATCH_BUCKETS", default_value = "auto", value_parser = BucketChoice::parse)]
    pub batch_buckets: BucketChoice,
    /// Largest batch (upper bound: the manifest's max_batch_size). Default: measured at warm-up,
    /// the largest of 1, 2, 4, ... up to the manifest's size within 5% of the fastest, timed
    /// with every session set running at once (the manifest's size with --warmup-batches 0).
    #[arg(long, env = "KENSA_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Longest a batch waits to fill after its first request arrives while a session is free
    /// (0: take what is there; requests that arrive while every session is busy form the next
    /// batch anyway).
    #[arg(long, env = "KENSA_MAX_QUEUE_DELAY", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub max_queue_delay: Duration,
    /// Requests that may wait per model version; the next gets 429.
    #[arg(long, env = "KENSA_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,
    /// Full-size batches run through each session set before the model reports ready; when the
    /// batch cap is measured (no --max-batch-size), the measurement is the warm-up instead
    /// (0: no warm-up and no measurement: the manifest's batch size).
    #[arg(long, env = "KENSA_WARMUP_BATCHES", default_value_t = 2)]
    pub warmup_batches: usize,
    /// Do not read the text burnt into frames, even for models whose manifest has an `ocr`
    /// section: their OCR graphs are not opened and they see the station's note only.
    #[arg(long, env = "KENSA_DISABLE_OCR")]
    pub disable_ocr: bool,
    /// Recent verdicts per model version that the drift gauges compare with the validation
    /// distribution in the manifest.
    #[arg(long, env = "KENSA_DRIFT_WINDOW", default_value_t = 1000)]
    pub drift_window: usize,
    /// Which version folders of each model are loaded: all, latest:N (the newest N) or
    /// specific:1,3.
    #[arg(long, env = "KENSA_VERSION_POLICY", default_value = "all", value_parser = VersionPolicy::parse)]
    pub version_policy: VersionPolicy,
    /// The version a station or line gets, from the `--config` file's `[[versions]]` tables.
    #[arg(skip)]
    pub version_routes: Vec<VersionRoute>,
    /// Decision threshold overrides, from the `--config` file's `[[thresholds]]` tables.
    #[arg(skip)]
    pub thresholds: Vec<ThresholdOverride>,
}

impl ModelArgs {
    /// How the repository is loaded.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            threading: ThreadingRequest {
                sessions: self.sessions,
                intra_threads: self.runtime.intra_threads,
                spinning: self.runtime.ort_spin,
            },
            buckets: self.batch_buckets.clone(),
            max_batch_size: self.max_batch_size,
            queue_capacity: self.queue_capacity,
            max_delay: self.max_queue_delay,
            warmup_batches: self.warmup_batches,
            thresholds: self.thresholds.clone(),
            drift_window: self.drift_window,
            disable_ocr: self.disable_ocr,
            version_policy: self.version_policy.clone(),
            version_routes: self.version_routes.clone(),
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest request body, in bytes.
    #[arg(long, env = "KENSA_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Largest encoded image, in bytes.
    #[arg(long, env = "KENSA_MAX_IMAGE_BYTES", default_value_t = 20 << 20)]
    pub max_image_bytes: usize,
    /// Largest image in pixels (width x height), checked from the header before decoding.
    #[arg(long, env = "KENSA_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Longest note, in characters.
    #[arg(long, env = "KENSA_MAX_NOTE_CHARS", default_value_t = 4096)]
    pub max_note_chars: usize,
    /// Deadline of a request that names none.
    #[arg(long, env = "KENSA_DEFAULT_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub default_deadline: Duration,
    /// Longest deadline a request may ask for.
    #[arg(long, env = "KENSA_MAX_DEADLINE", default_value = "5min", value_parser = humantime::parse_duration)]
    pub max_deadline: Duration,
}

impl LimitArgs {
    /// The limits the inspector enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            image: ImageLimits {
                max_bytes: self.max_image_bytes,
                max_pixels: self.max_image_pixels,
            },
            max_note_chars: self.max_note_chars,
            default_deadline: self.default_deadline,
            max_deadline: self.max_deadline,
        }
    }
}

/// `kensa serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Models and runtime.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Request limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Address the HTTP API listens on (loopback by default; other addresses need
    /// --auth-clients or --no-auth).
    #[arg(long, env = "KENSA_HTTP_HOST", default_value = "127.0.0.1")]
    pub http_host: IpAddr,
    /// Port of the HTTP API (0: any free port).
    #[arg(long, env = "KENSA_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Address the gRPC APIs (native, Open Inference Protocol, health, reflection) listen on
    /// (loopback by default, like --http-host).
    #[arg(long, env = "KENSA_GRPC_HOST", default_value = "127.0.0.1")]
    pub grpc_host: IpAddr,
    /// Port of the gRPC APIs (0: any free port).
    #[arg(long, env = "KENSA_GRPC_PORT", default_value_t = 8081)]
    pub grpc_port: u16,
    /// Folder for state kensa keeps between runs (TensorRT engine cache unless set apart).
    #[arg(
        long,
        env = "KENSA_DATA_DIR",
        default_value = "data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Image decode/resize jobs at once (default: the number of cores).
    #[arg(long, env = "KENSA_PREPROCESS_THREADS")]
    pub preprocess_threads: Option<usize>,
    /// On SIGTERM, how long queued work may take to finish before kensa exits anyway.
    #[arg(long, env = "KENSA_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How often the model repository is read again for new, changed or removed versions
    /// (0s: only on SIGHUP and `POST /v1/models/reload`). A new version is loaded and warmed
    /// beside the serving one before requests switch to it.
    #[arg(long, env = "KENSA_MODEL_POLL_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub model_poll_interval: Duration,
    /// Verdict store, retention and MQTT.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Access, TLS and connection limits.
    #[command(flatten)]
    pub edge: EdgeArgs,
}

/// The durable verdict store and what hangs off it.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Verdict store: `sqlite` (`<data-dir>/verdicts.sqlite`), `sqlite:PATH`, a `postgres://` URL
    /// (shared by several replicas; `?options=-csearch_path%3DSCHEMA` picks a schema), or `none`
    /// (no database: the newest --retention-max-rows verdicts, default 10000, in memory only;
    /// not durable, gone at exit).
    #[arg(
        long,
        env = "KENSA_STORE",
        default_value = "sqlite",
        value_name = "STORE"
    )]
    pub store: String,
    /// Delete verdicts stored more than this many days ago.
    #[arg(long, env = "KENSA_RETENTION_DAYS", value_name = "DAYS")]
    pub retention_days: Option<u64>,
    /// Keep at most this many verdicts (the newest); with --store none, the size of the
    /// in-memory ring (default 10000).
    #[arg(long, env = "KENSA_RETENTION_MAX_ROWS", value_name = "ROWS")]
    pub retention_max_rows: Option<u64>,
    /// How often retention runs (also at start).
    #[arg(long, env = "KENSA_RETENTION_INTERVAL", default_value = "10min", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,
    /// Keep the images of defects, unsure verdicts and units sent to review in the store, for
    /// review and retraining.
    #[arg(long, env = "KENSA_RETAIN_IMAGES")]
    pub retain_images: bool,
    /// With --retain-images, also keep images of normal verdicts below this confidence.
    #[arg(
        long,
        env = "KENSA_RETAIN_IMAGES_BELOW_CONFIDENCE",
        default_value_t = 0.6
    )]
    pub retain_images_below_confidence: f32,
    /// With --retain-images, keep at most this many bytes of images (the newest).
    #[arg(long, env = "KENSA_RETAIN_IMAGES_MAX_BYTES", default_value_t = 1 << 30)]
    pub retain_images_max_bytes: u64,
    /// Publish every verdict to this MQTT broker (`host:port`, QoS 1); off when unset.
    #[arg(long, env = "KENSA_MQTT", value_name = "HOST:PORT")]
    pub mqtt: Option<String>,
    /// First topic level(s) of published verdicts: `<prefix>/<line>/<station>/verdict`.
    #[arg(long, env = "KENSA_MQTT_TOPIC_PREFIX", default_value = "kensa")]
    pub mqtt_topic_prefix: String,
    /// MQTT client id; must differ between replicas (default: `kensa-<host name>`).
    #[arg(long, env = "KENSA_MQTT_CLIENT_ID")]
    pub mqtt_client_id: Option<String>,
    /// Longest a store operation may take before it counts as failed (the store is then
    /// reported not ready until it answers again).
    #[arg(long, env = "KENSA_STORE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub store_timeout: Duration,
    /// File holding the PostgreSQL password (or KENSA_STORE_PASSWORD), so it is not in the
    /// process arguments.
    #[arg(long, env = "KENSA_STORE_PASSWORD_FILE", value_name = "FILE")]
    pub store_password_file: Option<PathBuf>,
    /// Connect to the MQTT broker with TLS, verifying it against --mqtt-ca (or the system's
    /// roots).
    #[arg(long, env = "KENSA_MQTT_TLS")]
    pub mqtt_tls: bool,
    /// PEM CA certificates for the MQTT broker's certificate.
    #[arg(
        long,
        env = "KENSA_MQTT_CA",
        value_name = "FILE",
        requires = "mqtt_tls"
    )]
    pub mqtt_ca: Option<PathBuf>,
    /// MQTT user name.
    #[arg(long, env = "KENSA_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// File holding the MQTT password (or KENSA_MQTT_PASSWORD).
    #[arg(
        long,
        env = "KENSA_MQTT_PASSWORD_FILE",
        value_name = "FILE",
        requires = "mqtt_username"
    )]
    pub mqtt_password_file: Option<PathBuf>,
}

/// Verdicts the in-memory store keeps when `--retention-max-rows` names no number.
pub const MEMORY_STORE_ROWS: u64 = 10_000;

impl StoreArgs {
    /// Where the store lives: `none` is the in-memory ring, bounded by the retention flags.
    pub fn location(&self, data_dir: &Path) -> anyhow::Result<StoreLocation> {
        if self.store == "none" {
            let rows = self.retention_max_rows.unwrap_or(MEMORY_STORE_ROWS);
            return Ok(StoreLocation::Memory {
                rows: usize::try_from(rows).unwrap_or(usize::MAX),
                image_bytes: if self.retain_images {
                    self.retain_images_max_bytes
                } else {
                    0
                },
            });
        }
        StoreLocation::parse(&self.store, data_dir).map_err(anyhow::Error::msg)
    }

    /// What retention deletes.
    pub fn retention(&self) -> RetentionPolicy {
        RetentionPolicy {
            max_age: self
                .retention_days
                .map(|days| Duration::from_secs(days.saturating_mul(86_400))),
            max_rows: self.retention_max_rows,
            max_image_bytes: self.retain_images.then_some(self.retain_images_max_bytes),
        }
    }

    /// Which images are kept; `max_image_bytes` is the request limit on one image.
    pub fn image_retention(&self, max_image_bytes: usize) -> ImageRetention {
        ImageRetention {
            enabled: self.retain_images,
            min_confidence: self.retain_images_below_confidence,
            max_image_bytes: usize::try_from(self.retain_images_max_bytes)
                .unwrap_or(usize::MAX)
                .min(max_image_bytes),
        }
    }

    /// How the store is opened: the password from its file or the environment.
    pub fn open_options(&self) -> anyhow::Result<crate::store::OpenOptions> {
        Ok(crate::store::OpenOptions {
            password: secret(self.store_password_file.as_deref(), "KENSA_STORE_PASSWORD")?,
        })
    }

    /// The MQTT publisher's settings, when publishing is on; `max_note_chars` sizes its packet
    /// limit.
    pub fn mqtt(&self, max_note_chars: usize) -> anyhow::Result<Option<MqttConfig>> {
        let Some(broker) = &self.mqtt else {
            return Ok(None);
        };
        let broker = broker.strip_prefix("mqtt://").unwrap_or(broker);
        let (host, port) = match broker.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .with_context(|| format!("--mqtt {broker}: bad port"))?,
            ),
            None => (broker, 1883),
        };
        if host.is_empty() {
            bail!("--mqtt needs a host (host:port)");
        }
        let client_id = self.mqtt_client_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            format!("kensa-{host}")
        });
        Ok(Some(MqttConfig {
            host: host.to_string(),
            port,
            client_id,
            topic_prefix: self.mqtt_topic_prefix.trim_end_matches('/').to_string(),
            keep_alive: Duration::from_secs(15),
            tls: self.mqtt_tls.then(|| self.mqtt_ca.clone()),
            credentials: match &self.mqtt_username {
                Some(user) => Some((
                    user.clone(),
                    secret(self.mqtt_password_file.as_deref(), "KENSA_MQTT_PASSWORD")?
                        .unwrap_or_default(),
                )),
                None => None,
            },
            max_packet_bytes: crate::publish::mqtt::packet_limit(max_note_chars),
        }))
    }
}

/// A secret from a file (its first line) or, without one, from an environment variable, so it
/// never appears in the process arguments.
fn secret(file: Option<&Path>, variable: &str) -> anyhow::Result<Option<String>> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the secret file {}", file.display()))?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_string()));
    }
    Ok(std::env::var(variable).ok().filter(|v| !v.is_empty()))
}

/// `kensa check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Models and runtime.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes to time on blank inputs after warm-up (`max`: the model's largest).
    #[arg(
        long,
        env = "KENSA_CHECK_BATCH_SIZES",
        default_value = "1,max",
        value_delimiter = ','
    )]
    pub batch_sizes: Vec<String>,
    /// Runs per batch size; the median is reported.
    #[arg(long, env = "KENSA_CHECK_RUNS", default_value_t = 3)]
    pub runs: usize,
}

/// `kensa infer`.
#[derive(Debug, Clone, Args)]
pub struct InferArgs {
    /// Models and runtime.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image file to inspect.
    #[arg(long, env = "KENSA_INFER_IMAGE", value_name = "FILE")]
    pub image: PathBuf,
    /// The note recorded with the image.
    #[arg(long, env = "KENSA_INFER_NOTE", default_value = "")]
    pub note: String,
    /// Station id to put in the verdict.
    #[arg(long, env = "KENSA_STATION_ID", default_value = "cli")]
    pub station_id: String,
    /// Model name, when the repository holds several.
    #[arg(long = "model", env = "KENSA_MODEL")]
    pub model_name: Option<String>,
    /// Write the attention heat map PNG here.
    #[arg(long, env = "KENSA_HEATMAP_OUT", value_name = "FILE")]
    pub heatmap_out: Option<PathBuf>,
}

impl ServeArgs {
    /// Runtime options with the TensorRT cache placed under the data folder by default.
    pub fn runtime_options(&self) -> RuntimeOptions {
        let mut runtime = self.model.runtime.clone();
        if runtime.trt_engine_cache.is_none() {
            runtime.trt_engine_cache = Some(self.data_dir.join("tensorrt-cache"));
        }
        runtime
    }
}

/// Parses the command line, filling unset flags from the `--config` file.
pub fn parse() -> anyhow::Result<Cli> {
    parse_from(std::env::args_os().collect())
}

/// The `[[thresholds]]` key of the configuration file.
const THRESHOLDS: &str = "thresholds";
/// The `[[versions]]` key of the configuration file.
const VERSIONS: &str = "versions";

/// Parses `args` as the command line: flags, then the `--config` file's settings for unset
/// flags and its `[[thresholds]]` tables. Exits with usage on a bad flag, like any CLI.
pub fn parse_from(args: Vec<OsString>) -> anyhow::Result<Cli> {
    let file = config_file(&args);
    let mut cli = Cli::parse_from(with_config_file(args)?);
    if let Some(file) = file {
        let thresholds = thresholds_in(&file)?;
        let routes = version_routes_in(&file)?;
        let model = match &mut cli.command {
            Command::Serve(serve) => &mut serve.model,
            Command::Check(check) => &mut check.model,
            Command::Infer(infer) => &mut infer.model,
        };
        model.thresholds = thresholds;
        model.version_routes = routes;
    }
    Ok(cli)
}

/// The configuration file named by `--config` or `KENSA_CONFIG`.
fn config_file(args: &[OsString]) -> Option<PathBuf> {
    config_path(args).or_else(|| std::env::var_os("KENSA_CONFIG").map(PathBuf::from))
}

/// The `[[thresholds]]` tables of a configuration file, checked.
fn thresholds_in(file: &Path) -> anyhow::Result<Vec<ThresholdOverride>> {
    let Some(value) = read_settings(file)?.remove(THRESHOLDS) else {
        return Ok(Vec::new());
    };
    let entries: Vec<ThresholdOverride> = value.try_into().with_context(|| {
        format!(
            "{}: [[thresholds]] entries take station or line, model, pass-threshold, \
             fail-threshold",
            file.display()
        )
    })?;
    for (i, entry) in entries.iter().enumerate() {
        entry
            .validate()
            .with_context(|| format!("{}: [[thresholds]] entry {}", file.display(), i + 1))?;
    }
    Ok(entries)
}

/// The `[[versions]]` tables of a configuration file, checked.
fn version_routes_in(file: &Path) -> anyhow::Result<Vec<VersionRoute>> {
    let Some(value) = read_settings(file)?.remove(VERSIONS) else {
        return Ok(Vec::new());
    };
    let entries: Vec<VersionRoute> = value.try_into().with_context(|| {
        format!(
            "{}: [[versions]] entries take station or line, model and version",
            file.display()
        )
    })?;
    for (i, entry) in entries.iter().enumerate() {
        entry
            .validate()
            .with_context(|| format!("{}: [[versions]] entry {}", file.display(), i + 1))?;
    }
    Ok(entries)
}

/// Inserts `--key=value` for each file setting whose flag has no environment variable set, right
/// after the subcommand, so flags given on the command line (later) override them.
pub fn with_config_file(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(file) = config_file(&args) else {
        return Ok(args);
    };
    let command = Cli::command();
    let Some((position, subcommand)) = args.iter().enumerate().skip(1).find_map(|(i, a)| {
        let name = a.to_str()?;
        command.find_subcommand(name).map(|s| (i, s.clone()))
    }) else {
        return Ok(args);
    };
    let mut settings = read_settings(&file)?;
    settings.remove(THRESHOLDS);
    settings.remove(VERSIONS);
    let mut injected = Vec::new();
    for (key, value) in settings {
        let flag = key.replace('_', "-");
        let Some(arg) = subcommand
            .get_arguments()
            .chain(command.get_arguments())
            .find(|a| a.get_long() == Some(flag.as_str()))
        else {
            bail!(
                "{}: unknown setting {key:?} (settings are `kensa {} --help` flag names)",
                file.display(),
                subcommand.get_name()
            );
        };
        if arg
            .get_env()
            .is_some_and(|var| std::env::var_os(var).is_some())
        {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        match value {
            toml::Value::Boolean(true) if !takes_value => {
                injected.push(OsString::from(format!("--{flag}")))
            }
            toml::Value::Boolean(false) if !takes_value => {}
            toml::Value::String(s) => injected.push(OsString::from(format!("--{flag}={s}"))),
            toml::Value::Integer(i) => injected.push(OsString::from(format!("--{flag}={i}"))),
            toml::Value::Float(f) => injected.push(OsString::from(format!("--{flag}={f}"))),
            toml::Value::Boolean(b) => injected.push(OsString::from(format!("--{flag}={b}"))),
            other => bail!(
                "{}: setting {key:?} has an unsupported value {other}",
                file.display()
            ),
        }
    }
    let mut merged = args;
    merged.splice(position + 1..position + 1, injected);
    Ok(merged)
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let arg = arg.to_str()?;
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    None
}

fn read_settings(file: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read config file {}", file.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("{} is not valid TOML", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_values_fill_flags_and_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kensa.toml");
        std::fs::write(
            &file,
            "http-port = 9000\nmax_queue_delay = \"7ms\"\nsessions = 3\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let args =
            with_config_file(os(&["kensa", "serve", "--config", path, "--sessions", "2"])).unwrap();
        let cli = Cli::parse_from(args);
        let Command::Serve(serve) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(serve.http_port, 9000);
        assert_eq!(serve.model.max_queue_delay, Duration::from_millis(7));
        assert_eq!(serve.model.sessions, Some(2));
    }

    #[test]
    fn store_flags_become_a_location_a_policy_and_an_mqtt_config() {
        let cli = Cli::parse_from(os(&[
            "kensa",
            "serve",
            "--data-dir=/srv",
            "--retention-days=30",
            "--mqtt=mqtt://broker:1884",
            "--mqtt-client-id=k1",
        ]));
        let Command::Serve(serve) = cli.command else {
            panic!("expected serve");
        };
        let store = &serve.store;
        assert_eq!(
            store.location(&serve.data_dir).unwrap(),
            StoreLocation::Sqlite("/srv/verdicts.sqlite".into())
        );
        assert_eq!(
            store.retention().max_age,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(store.retention().max_image_bytes, None);
        let mqtt = store.mqtt(4096).unwrap().unwrap();
        assert_eq!((mqtt.host.as_str(), mqtt.port), ("broker", 1884));
        assert_eq!(mqtt.client_id, "k1");
        let none = Cli::parse_from(os(&["kensa", "serve", "--store=none"]));
        let Command::Serve(serve) = none.command else {
            panic!("expected serve");
        };
        assert_eq!(
            serve.store.location(&serve.data_dir).unwrap(),
            StoreLocation::Memory {
                rows: 10_000,
                image_bytes: 0
            }
        );
        assert!(serve.store.mqtt(4096).unwrap().is_none());
    }

    #[test]
    fn threshold_tables_become_overrides_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kensa.toml");
        std::fs::write(
            &file,
            "http-port = 9000\n\
             [[thresholds]]\nline = \"L3\"\npass-threshold = 0.97\n\
             [[thresholds]]\nstation = \"aoi-07\"\nmodel = \"kensa-demo\"\nfail-threshold = 0.6\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let cli = parse_from(os(&["kensa", "serve", "--config", path])).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(serve.http_port, 9000);
        let thresholds = &serve.model.thresholds;
        assert_eq!(thresholds.len(), 2);
        assert_eq!(thresholds[0].line.as_deref(), Some("L3"));
        assert_eq!(thresholds[1].fail_threshold, Some(0.6));

        std::fs::write(
            &file,
            "[[thresholds]]\nstation = \"a\"\npass-treshold = 0.9\n",
        )
        .unwrap();
        let error = parse_from(os(&["kensa", "serve", "--config", path])).unwrap_err();
        assert!(format!("{error:#}").contains("pass-treshold"), "{error:#}");
        std::fs::write(&file, "[[thresholds]]\nline = \"L1\"\npass-threshold = 2\n").unwrap();
        let error = parse_from(os(&["kensa", "serve", "--config", path])).unwrap_err();
        assert!(
            format!("{error:#}").contains("between 0 and 1"),
            "{error:#}"
        );
    }

    #[test]
    fn unknown_file_settings_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kensa.toml");
        std::fs::write(&file, "htp-port = 9000\n").unwrap();
        let error = with_config_file(os(&["kensa", "serve", "--config", file.to_str().unwrap()]))
            .unwrap_err();
        assert!(error.to_string().contains("htp-port"), "{error}");
    }
}
