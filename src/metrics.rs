//! Every metric kensa exports, defined in one place so names and labels stay consistent
//! (`protocol`, `route`, `code`, `model`, `version`, `station`, `line`, `label` everywhere).
//!
//! Names follow Prometheus conventions (base units, `_total`, `_seconds`, `_bytes`). The
//! process metrics (`process_*`) carry no `kensa_` prefix, so stock dashboards find them.
//! A scrape gets the Prometheus text format 0.0.4 unless it asks for OpenMetrics.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request counter: every protocol, one family.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `http`, `v2-http`, `grpc`, `v2-grpc`, `grpc-health`, `grpc-reflection`.
    pub protocol: String,
    /// The route template (HTTP) or the full method name (gRPC): bounded cardinality.
    pub route: String,
    /// HTTP method (`POST` for every gRPC call).
    pub method: String,
    /// HTTP status code, or the gRPC status code name (`OK`, `INVALID_ARGUMENT`, ...).
    pub status: String,
}

/// Labels of a request latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// As in [`RequestLabels`].
    pub protocol: String,
    /// As in [`RequestLabels`].
    pub route: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Where the error was answered: a protocol of [`RequestLabels`], or `async` for a
    /// background inspection that failed after its 202.
    pub protocol: String,
    /// The error's stable code (see `Error::code`): the reason of a rejection.
    pub code: String,
}

/// Labels that name one model version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
}

/// Labels of the verdict counter: what a line engineer slices the defect rate by.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// The station (capped: see [`Metrics::station`]).
    pub station: String,
    /// The request's `line` metadata field, `_` when absent (capped like stations).
    pub line: String,
    /// Predicted label.
    pub label: String,
    /// `pass`, `fail` or `review`; `none` for a model without a decision rule.
    pub disposition: String,
}

/// Labels of the confidence histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfidenceLabels {
    /// Model name.
    pub model: String,
    /// Predicted label.
    pub label: String,
}

/// Labels of the drift gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// `label` (the predicted-label mix) or `confidence` (the confidence histogram).
    pub signal: String,
}

/// Labels of the model-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelInfoLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Execution provider in use.
    pub provider: String,
}

/// Labels of the build-info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version.
    pub version: String,
    /// The git commit it was built from (`unknown` outside a checkout).
    pub commit: String,
}

/// Labels of the retention counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrunedLabels {
    /// `verdicts` or `images`.
    pub kind: String,
}

/// Labels of the per-stage time histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// `parse`, `decode`, `resize`, `tokenize`, `vision`, `text`, `head`, `respond`.
    pub stage: &'static str,
}

/// Labels of the review counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// The station of the unit reviewed.
    pub station: String,
    /// `confirmed` or `overridden`.
    pub outcome: String,
}

type ModelSeconds = Family<ModelLabels, Histogram>;

/// The metrics registry and handles to each metric.
pub struct Metrics {
    registry: Registry,
    /// Requests by protocol, route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by protocol and route (until the response head).
    pub request_seconds: Family<RouteLabels, Histogram>,
    /// Refused or failed requests by protocol and error code.
    pub errors: Family<ErrorLabels, Counter>,
    /// Verdicts by model, version, station, line, label and disposition.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Confidence of the predicted label, by model and label: the drift signal.
    pub confidence: Family<ConfidenceLabels, Histogram>,
    /// Population stability index of recent verdicts against validation (see `drift`).
    pub drift: Family<DriftLabels, Gauge<f64, AtomicU64>>,
    /// Requests per batch.
    pub batch_size: Family<ModelLabels, Histogram>,
    /// Entries waiting in each model's queue.
    pub queue_depth: Family<ModelLabels, Gauge>,
    /// Requests whose caller went away before their batch ran (dropped, not run).
    pub abandoned: Family<ModelLabels, Counter>,
    /// Time from queueing to the start of the batch.
    pub queue_seconds: ModelSeconds,
    /// Decode, resize and tokenize time per request.
    pub preprocess_seconds: ModelSeconds,
    /// Reading the text on the frame per request (models with an `ocr` section).
    pub ocr_seconds: ModelSeconds,
    /// Time of one batch in the three graphs.
    pub inference_seconds: ModelSeconds,
    /// Time of each stage of a request (per request) or of a batch (per graph), so a benchmark
    /// can say where the milliseconds go.
    pub stage_seconds: Family<StageLabels, Histogram>,
    /// 1 for each loaded model version, labelled with its provider.
    pub model_info: Family<ModelInfoLabels, Gauge>,
    /// Model versions that failed to load or validate on a reload (the old one kept serving).
    pub model_load_failures: Family<ModelLabels, Counter>,
    /// 1 once every model is warmed up, 0 before and while draining.
    pub ready: Gauge,
    /// Time to commit one verdict to the store.
    pub store_write_seconds: Histogram,
    /// Verdicts held by the store.
    pub store_rows: Gauge,
    /// Bytes held by the store (verdicts, notes, retained images).
    pub store_bytes: Gauge,
    /// Retained images held by the store.
    pub store_images: Gauge,
    /// The highest committed cursor this replica knows of.
    pub store_cursor: Gauge,
    /// Verdicts and images deleted by retention.
    pub store_pruned: Family<PrunedLabels, Counter>,
    /// Retries answered with the stored verdict instead of a new inference.
    pub idempotent_replays: Counter,
    /// Verdicts the MQTT broker acknowledged.
    pub mqtt_published: Counter,
    /// 1 while the MQTT publisher is connected.
    pub mqtt_connected: Gauge,
    /// Stored verdicts not yet acknowledged by the MQTT broker.
    pub mqtt_backlog: Gauge,
    process: ProcessMetrics,
    stations: LabelCap,
    lines: LabelCap,
    /// Verdicts the MQTT publisher could not publish and skipped (dead letters).
    pub mqtt_dead_letters: Counter,
    /// 1 while the store commits (and its probe answers) within its timeout, 0 when it cannot.
    pub store_up: Gauge,
    /// Connections open per port.
    pub connections_open: Family<PortLabels, Gauge>,
    /// Connections closed at once because the port's connection cap was reached.
    pub connections_refused: Family<PortLabels, Counter>,
    /// Reviews given on this replica, by station and outcome.
    pub reviews: Family<ReviewLabels, Counter>,
    /// Share of all stored reviews that confirmed the model, per model version.
    pub review_agreement: Family<ModelLabels, Gauge<f64, AtomicU64>>,
}

/// Labels of the connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    /// `http` or `grpc`.
    pub port: String,
}

/// Read from /proc at each scrape.
struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    cpu_seen: Mutex<f64>,
    resident_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
}

/// The first `limit` distinct values of a label keep their name, later ones count as `other`:
/// station and line ids come from requests, and a misbehaving client must not grow the
/// registry without bound.
struct LabelCap {
    seen: Mutex<HashSet<String>>,
    limit: usize,
}

/// The label value of values past a label cap (see `LabelCap`).
pub const OVERFLOW_LABEL: &str = "other";

impl LabelCap {
    fn new(limit: usize) -> Self {
        LabelCap {
            seen: Mutex::new(HashSet::new()),
            limit,
        }
    }

    fn get(&self, value: &str) -> String {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() < self.limit {
            seen.insert(value.to_string());
            return value.to_string();
        }
        OVERFLOW_LABEL.to_string()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn confidence_histogram() -> Histogram {
    Histogram::new([
        0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0,
    ])
}

/// How many distinct stations and lines keep their own label values.
#[derive(Debug, Clone, Copy)]
pub struct LabelLimits {
    /// Distinct station ids.
    pub stations: usize,
    /// Distinct lines.
    pub lines: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        LabelLimits {
            stations: 1000,
            lines: 200,
        }
    }
}

impl Metrics {
    /// Creates and registers every metric with the default label limits.
    pub fn new() -> Metrics {
        Metrics::with_limits(LabelLimits::default())
    }

    /// Creates and registers every metric.
    pub fn with_limits(limits: LabelLimits) -> Metrics {
        let mut registry = Registry::default();
        let process = ProcessMetrics::register(&mut registry);
        let kensa = registry.sub_registry_with_prefix("kensa");

        let requests = Family::<RequestLabels, Counter>::default();
        kensa.register(
            "requests",
            "Requests by protocol, route, method and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram);
        kensa.register(
            "request_duration_seconds",
            "Request latency by protocol and route, until the response head",
            request_seconds.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        kensa.register(
            "errors",
            "Requests refused or failed, by protocol and error code (the reason)",
            errors.clone(),
        );
        let verdicts = Family::<VerdictLabels, Counter>::default();
        kensa.register(
            "verdicts",
            "Verdicts by model, version, station, line, predicted label and disposition",
            verdicts.clone(),
        );
        let confidence =
            Family::<ConfidenceLabels, Histogram>::new_with_constructor(confidence_histogram);
        kensa.register(
            "confidence",
            "Probability of the predicted label, by model and label",
            confidence.clone(),
        );
        let drift = Family::<DriftLabels, Gauge<f64, AtomicU64>>::default();
        kensa.register(
            "drift_psi",
            "Population stability index of the recent verdicts against the validation \
             distribution, by model, version and signal (label mix, confidence histogram)",
            drift.clone(),
        );
        let batch_size = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 9))
        });
        kensa.register(
            "batch_size",
            "Requests per inference batch",
            batch_size.clone(),
        );
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        kensa.register(
            "queue_depth",
            "Requests waiting in the batch queue, set by the queue as it changes",
            queue_depth.clone(),
        );
        let abandoned = Family::<ModelLabels, Counter>::default();
        kensa.register(
            "abandoned_requests",
            "Queued requests dropped unrun because their caller had gone (disconnected or timed out)",
            abandoned.clone(),
        );
        let queue_seconds = ModelSeconds::new_with_constructor(latency_histogram);
        kensa.register(
            "queue_duration_seconds",
            "Time from queueing to batch start",
            queue_seconds.clone(),
        );
        let preprocess_seconds = ModelSeconds::new_with_constructor(latency_histogram);
        kensa.register(
            "preprocess_duration_seconds",
            "Image decode, resize and note tokenization per request",
            preprocess_seconds.clone(),
        );
        let ocr_seconds = ModelSeconds::new_with_constructor(latency_histogram);
        kensa.register(
            "ocr_duration_seconds",
            "Reading the text burnt into the frame (detection and recognition) per request",
            ocr_seconds.clone(),
        );
        let inference_seconds = ModelSeconds::new_with_constructor(latency_histogram);
        kensa.register(
            "inference_duration_seconds",
            "Compute time of one batch",
            inference_seconds.clone(),
        );
        let stage_seconds = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        kensa.register(
            "stage_duration_seconds",
            "Time of one stage: parse, decode, resize, tokenize, respond per request; vision, text, head per batch",
            stage_seconds.clone(),
        );
        let model_info = Family::<ModelInfoLabels, Gauge>::default();
        kensa.register(
            "model_info",
            "Loaded model versions and their execution provider",
            model_info.clone(),
        );
        let model_load_failures = Family::<ModelLabels, Counter>::default();
        kensa.register(
            "model_load_failures",
            "Model versions that failed to load or validate on a reload; what served before keeps serving",
            model_load_failures.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        kensa.register(
            "build_info",
            "The running build: crate version and git commit",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                commit: option_env!("KENSA_GIT_COMMIT")
                    .unwrap_or("unknown")
                    .to_string(),
            })
            .set(1);
        let ready = Gauge::default();
        kensa.register(
            "ready",
            "1 when every model is warmed up and the service accepts work",
            ready.clone(),
        );
        let store_write_seconds = latency_histogram();
        kensa.register(
            "store_write_duration_seconds",
            "Time to commit one verdict to the verdict store",
            store_write_seconds.clone(),
        );
        let store_rows = Gauge::default();
        kensa.register(
            "store_rows",
            "Verdicts held by the store",
            store_rows.clone(),
        );
        let store_bytes = Gauge::default();
        kensa.register(
            "store_bytes",
            "Bytes held by the store: verdicts, notes and retained images",
            store_bytes.clone(),
        );
        let store_images = Gauge::default();
        kensa.register(
            "store_images",
            "Retained images held by the store",
            store_images.clone(),
        );
        let store_cursor = Gauge::default();
        kensa.register(
            "store_cursor",
            "Highest committed verdict cursor known to this replica",
            store_cursor.clone(),
        );
        let store_pruned = Family::<PrunedLabels, Counter>::default();
        kensa.register(
            "store_pruned",
            "Verdicts and images deleted by retention",
            store_pruned.clone(),
        );
        let idempotent_replays = Counter::default();
        kensa.register(
            "idempotent_replays",
            "Retries answered with the stored verdict, without inference",
            idempotent_replays.clone(),
        );
        let mqtt_published = Counter::default();
        kensa.register(
            "mqtt_published",
            "Verdicts acknowledged by the MQTT broker",
            mqtt_published.clone(),
        );
        let mqtt_connected = Gauge::default();
        kensa.register(
            "mqtt_connected",
            "1 while the MQTT publisher is connected to the broker",
            mqtt_connected.clone(),
        );
        let mqtt_backlog = Gauge::default();
        kensa.register(
            "mqtt_backlog",
            "Stored verdicts not yet acknowledged by the MQTT broker",
            mqtt_backlog.clone(),
        );
        let mqtt_dead_letters = Counter::default();
        kensa.register(
            "mqtt_dead_letters",
            "Verdicts the MQTT publisher could not publish and skipped",
            mqtt_dead_letters.clone(),
        );
        let store_up = Gauge::default();
        kensa.register(
            "store_up",
            "1 while the verdict store commits within its timeout",
            store_up.clone(),
        );
        let connections_open = Family::<PortLabels, Gauge>::default();
        kensa.register(
            "connections_open",
            "Connections open per port",
            connections_open.clone(),
        );
        let connections_refused = Family::<PortLabels, Counter>::default();
        kensa.register(
            "connections_refused",
            "Connections closed at once because the port's cap was reached",
            connections_refused.clone(),
        );
        let reviews = Family::<ReviewLabels, Counter>::default();
        kensa.register(
            "reviews",
            "Reviews of verdicts by station and outcome (confirmed or overridden)",
            reviews.clone(),
        );
        let review_agreement = Family::<ModelLabels, Gauge<f64, AtomicU64>>::default();
        kensa.register(
            "review_agreement_ratio",
            "Share of stored reviews that confirmed the model's label, per model version",
            review_agreement.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            errors,
            verdicts,
            confidence,
            drift,
            batch_size,
            queue_depth,
            abandoned,
            queue_seconds,
            preprocess_seconds,
            ocr_seconds,
            inference_seconds,
            stage_seconds,
            model_info,
            model_load_failures,
            ready,
            store_write_seconds,
            store_rows,
            store_bytes,
            store_images,
            store_cursor,
            store_pruned,
            idempotent_replays,
            mqtt_published,
            mqtt_connected,
            mqtt_backlog,
            process,
            stations: LabelCap::new(limits.stations),
            lines: LabelCap::new(limits.lines),
            mqtt_dead_letters,
            store_up,
            connections_open,
            connections_refused,
            reviews,
            review_agreement,
        }
    }

    /// The label value of a station: its id, or `other` past the station limit.
    pub fn station(&self, station: &str) -> String {
        self.stations.get(station)
    }

    /// The label value of a line: its id (`_` when absent), or `other` past the line limit.
    pub fn line(&self, line: Option<&str>) -> String {
        self.lines.get(line.unwrap_or("_"))
    }

    /// Counts one refused or failed request.
    pub fn count_error(&self, protocol: &str, code: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                protocol: protocol.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Records one stage's time for a model version.
    pub fn observe_stage(&self, labels: &ModelLabels, stage: &'static str, took: Duration) {
        self.stage_seconds
            .get_or_create(&StageLabels {
                model: labels.model.clone(),
                version: labels.version.clone(),
                stage,
            })
            .observe(took.as_secs_f64());
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render_openmetrics(&self) -> String {
        self.process.refresh();
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            let _ = writeln!(text, "# metrics could not be encoded");
        }
        text
    }

    /// Every metric in the Prometheus text format 0.0.4 (what `promtool` and scrapers that do
    /// not ask for OpenMetrics read).
    pub fn render_prometheus(&self) -> String {
        to_prometheus_text(&self.render_openmetrics())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl ProcessMetrics {
    fn register(registry: &mut Registry) -> Self {
        let process = ProcessMetrics {
            cpu_seconds: Counter::default(),
            cpu_seen: Mutex::new(0.0),
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: Gauge::default(),
        };
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time of the process",
            process.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size of the process",
            process.resident_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors of the process",
            process.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "The process's limit on open file descriptors",
            process.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "When the process started, in seconds since the Unix epoch",
            process.start_time.clone(),
        );
        if let Some(start) = proc::start_time_seconds() {
            process.start_time.set(start);
        }
        process
    }

    /// Reads /proc (Linux); leaves a figure unchanged where it cannot be read.
    fn refresh(&self) {
        if let Some(bytes) = proc::resident_memory_bytes() {
            self.resident_memory.set(bytes);
        }
        if let Some(fds) = proc::open_fds() {
            self.open_fds.set(fds);
        }
        if let Some(limit) = proc::max_fds() {
            self.max_fds.set(limit);
        }
        if let Some(cpu) = proc::cpu_seconds() {
            let mut seen = self
                .cpu_seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if cpu > *seen {
                self.cpu_seconds.inc_by(cpu - *seen);
                *seen = cpu;
            }
        }
    }
}

/// The process's own figures from /proc; `None` where they cannot be read (not Linux).
pub mod proc {
    /// Clock ticks per second of /proc/self/stat's CPU times (USER_HZ, 100 on Linux).
    const TICKS_PER_SECOND: f64 = 100.0;

    /// VmRSS from /proc/self/status.
    pub fn resident_memory_bytes() -> Option<i64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Entries of /proc/self/fd.
    pub fn open_fds() -> Option<i64> {
        let entries = std::fs::read_dir("/proc/self/fd").ok()?;
        i64::try_from(entries.count()).ok()
    }

    /// The soft open-files limit from /proc/self/limits.
    pub fn max_fds() -> Option<i64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }

    /// User plus system CPU seconds from /proc/self/stat.
    pub fn cpu_seconds() -> Option<f64> {
        let fields = stat_fields()?;
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / TICKS_PER_SECOND)
    }

    /// Process start time in seconds since the epoch (boot time plus the start offset).
    pub fn start_time_seconds() -> Option<i64> {
        let start_ticks: f64 = stat_fields()?.get(19)?.parse().ok()?;
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let boot: f64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some((boot + start_ticks / TICKS_PER_SECOND) as i64)
    }

    /// The fields of /proc/self/stat after the command name (which may contain spaces).
    fn stat_fields() -> Option<Vec<String>> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after = stat.rsplit_once(')')?.1;
        Some(after.split_whitespace().map(str::to_string).collect())
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4: a counter's `# HELP`/`# TYPE` name its
/// `_total` samples, and the OpenMetrics-only lines (`# UNIT`, `# EOF`) go.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("# EOF") || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, text) = help.split_once(' ').unwrap_or((help, ""));
            let kind = lines
                .peek()
                .and_then(|next| next.strip_prefix("# TYPE "))
                .and_then(|t| t.split_once(' '))
                .filter(|(type_name, _)| *type_name == name)
                .map(|(_, kind)| kind.to_string());
            let (name, kind) = match kind.as_deref() {
                Some("counter") => (format!("{name}_total"), Some("counter")),
                Some("info") => (format!("{name}_info"), Some("gauge")),
                Some("unknown") => (name.to_string(), Some("untyped")),
                Some(other) => (name.to_string(), Some(other)),
                None => (name.to_string(), None),
            };
            let _ = writeln!(out, "# HELP {name} {text}");
            if let Some(kind) = kind {
                lines.next();
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_for_the_prometheus_text_format() {
        let openmetrics = "# HELP kensa_requests Requests.\n# TYPE kensa_requests counter\n\
             kensa_requests_total{route=\"/a\"} 3\n# HELP kensa_ready Ready.\n\
             # TYPE kensa_ready gauge\nkensa_ready 1\n# EOF\n";
        let text = to_prometheus_text(openmetrics);
        assert_eq!(
            text,
            "# HELP kensa_requests_total Requests.\n# TYPE kensa_requests_total counter\n\
             kensa_requests_total{route=\"/a\"} 3\n# HELP kensa_ready Ready.\n\
             # TYPE kensa_ready gauge\nkensa_ready 1\n"
        );
    }

    #[test]
    fn label_values_past_the_cap_count_as_other() {
        let metrics = Metrics::with_limits(LabelLimits {
            stations: 2,
            lines: 1,
        });
        assert_eq!(metrics.station("a"), "a");
        assert_eq!(metrics.station("b"), "b");
        assert_eq!(metrics.station("c"), OVERFLOW_LABEL);
        assert_eq!(metrics.station("a"), "a", "a known value keeps its name");
        assert_eq!(metrics.line(None), "_");
        assert_eq!(metrics.line(Some("L1")), OVERFLOW_LABEL);
    }

    #[test]
    fn the_scrape_has_process_metrics_without_prefix_and_build_info() {
        let metrics = Metrics::new();
        let text = metrics.render_prometheus();
        for expected in [
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "kensa_build_info{version=",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
        assert!(metrics.render_openmetrics().ends_with("# EOF\n"));
    }
}
