//! Every metric kensa exports, defined in one place so names and labels stay consistent
//! (`model`, `version`, `route`, `code`, `label` everywhere).

use std::fmt::Write as _;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route template, never the raw path (bounded cardinality).
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of a per-route latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matched route template.
    pub route: String,
}

/// Labels that name one model version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
}

/// Labels of the verdict counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Predicted label.
    pub label: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The error's stable code (see `Error::code`).
    pub code: String,
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

type Seconds = Family<RouteLabels, Histogram>;
type ModelSeconds = Family<ModelLabels, Histogram>;

/// The metrics registry and handles to each metric.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP latency by route.
    pub http_seconds: Seconds,
    /// Verdicts by predicted label.
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Refused or failed inspections by error code.
    pub errors: Family<ErrorLabels, Counter>,
    /// Requests per batch.
    pub batch_size: Family<ModelLabels, Histogram>,
    /// Entries waiting in each model's queue.
    pub queue_depth: Family<ModelLabels, Gauge>,
    /// Time from queueing to the start of the batch.
    pub queue_seconds: ModelSeconds,
    /// Decode, resize and tokenize time per request.
    pub preprocess_seconds: ModelSeconds,
    /// Time of one batch in the three graphs.
    pub inference_seconds: ModelSeconds,
    /// 1 for each loaded model version, labelled with its provider.
    pub model_info: Family<ModelInfoLabels, Gauge>,
    /// 1 once every model is warmed up, 0 before and while draining.
    pub ready: Gauge,
    /// Resident memory of the process, read at each scrape.
    pub resident_memory: Gauge,
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
    /// Verdicts the MQTT publisher could not publish and skipped (dead letters).
    pub mqtt_dead_letters: Counter,
    /// 1 while the store commits (and its probe answers) within its timeout, 0 when it cannot.
    pub store_up: Gauge,
    /// Connections open per port.
    pub connections_open: Family<PortLabels, Gauge>,
    /// Connections closed at once because the port's connection cap was reached.
    pub connections_refused: Family<PortLabels, Counter>,
}

/// Labels of the connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    /// `http` or `grpc`.
    pub port: String,
}

/// Labels of the retention counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrunedLabels {
    /// `verdicts` or `images`.
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kensa");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        let http_seconds = Seconds::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            http_seconds.clone(),
        );
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "verdicts",
            "Verdicts by model and predicted label",
            verdicts.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "inspection_errors",
            "Inspections refused or failed, by error code",
            errors.clone(),
        );
        let batch_size = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 9))
        });
        registry.register(
            "batch_size",
            "Requests per inference batch",
            batch_size.clone(),
        );
        let queue_depth = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Requests waiting in the batch queue",
            queue_depth.clone(),
        );
        let queue_seconds = ModelSeconds::new_with_constructor(latency_histogram);
        registry.register(
            "queue_duration_seconds",
            "Time from queueing to batch start",
            queue_seconds.clone(),
        );
        let preprocess_seconds = ModelSeconds::new_with_constructor(latency_histogram);
        registry.register(
            "preprocess_duration_seconds",
            "Image decode, resize and note tokenization per request",
            preprocess_seconds.clone(),
        );
        let inference_seconds = ModelSeconds::new_with_constructor(latency_histogram);
        registry.register(
            "inference_duration_seconds",
            "Compute time of one batch",
            inference_seconds.clone(),
        );
        let model_info = Family::<ModelInfoLabels, Gauge>::default();
        registry.register(
            "model_info",
            "Loaded model versions and their execution provider",
            model_info.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when every model is warmed up and the service accepts work",
            ready.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size of the process",
            resident_memory.clone(),
        );
        let store_write_seconds = latency_histogram();
        registry.register(
            "store_write_duration_seconds",
            "Time to commit one verdict to the verdict store",
            store_write_seconds.clone(),
        );
        let store_rows = Gauge::default();
        registry.register(
            "store_rows",
            "Verdicts held by the store",
            store_rows.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "store_bytes",
            "Bytes held by the store: verdicts, notes and retained images",
            store_bytes.clone(),
        );
        let store_images = Gauge::default();
        registry.register(
            "store_images",
            "Retained images held by the store",
            store_images.clone(),
        );
        let store_cursor = Gauge::default();
        registry.register(
            "store_cursor",
            "Highest committed verdict cursor known to this replica",
            store_cursor.clone(),
        );
        let store_pruned = Family::<PrunedLabels, Counter>::default();
        registry.register(
            "store_pruned",
            "Verdicts and images deleted by retention",
            store_pruned.clone(),
        );
        let idempotent_replays = Counter::default();
        registry.register(
            "idempotent_replays",
            "Retries answered with the stored verdict, without inference",
            idempotent_replays.clone(),
        );
        let mqtt_published = Counter::default();
        registry.register(
            "mqtt_published",
            "Verdicts acknowledged by the MQTT broker",
            mqtt_published.clone(),
        );
        let mqtt_connected = Gauge::default();
        registry.register(
            "mqtt_connected",
            "1 while the MQTT publisher is connected to the broker",
            mqtt_connected.clone(),
        );
        let mqtt_backlog = Gauge::default();
        registry.register(
            "mqtt_backlog",
            "Stored verdicts not yet acknowledged by the MQTT broker",
            mqtt_backlog.clone(),
        );
        let mqtt_dead_letters = Counter::default();
        registry.register(
            "mqtt_dead_letters",
            "Verdicts the MQTT publisher could not publish and skipped",
            mqtt_dead_letters.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the verdict store commits within its timeout",
            store_up.clone(),
        );
        let connections_open = Family::<PortLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Connections open per port",
            connections_open.clone(),
        );
        let connections_refused = Family::<PortLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because the port's cap was reached",
            connections_refused.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_seconds,
            verdicts,
            errors,
            batch_size,
            queue_depth,
            queue_seconds,
            preprocess_seconds,
            inference_seconds,
            model_info,
            ready,
            resident_memory,
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
            mqtt_dead_letters,
            store_up,
            connections_open,
            connections_refused,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory.set(bytes);
        }
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            let _ = writeln!(text, "# metrics could not be encoded");
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Reads VmRSS from /proc (Linux); `None` elsewhere.
pub fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
