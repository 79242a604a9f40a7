//! Where logs and spans go: log lines on stderr (text or JSON) always, and, when an OTLP
//! endpoint is configured, every span exported to an OpenTelemetry collector, so one slow
//! verdict can be followed from the station's request through the queue into the batch that
//! ran it, and into the caller's own trace when it sent a W3C `traceparent`.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogFormat, TraceArgs};

/// The installed log and trace outputs; dropping it without [`Telemetry::shutdown`] loses the
/// spans still buffered for export.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the process-wide subscriber: the log format, the `RUST_LOG` filter (default
    /// `info,ort=warn`) and, with `--otlp-endpoint`, the OTLP exporter. Must run inside the
    /// Tokio runtime when exporting: the gRPC connection to the collector lives on it.
    pub fn install(format: LogFormat, traces: &TraceArgs) -> anyhow::Result<Telemetry> {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
        let logs = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        let logs = match format {
            LogFormat::Text => logs.boxed(),
            LogFormat::Json => logs.json().boxed(),
        };
        let provider = traces.otlp_endpoint.as_deref().map(|endpoint| {
            tracer_provider(
                endpoint,
                traces.otlp_sample_ratio,
                &traces.otlp_service_name,
            )
        });
        let provider = provider.transpose()?;
        let export = provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer().with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(logs)
            .with(export)
            .try_init()
            .context("cannot install the log subscriber")?;
        if let Some(endpoint) = &traces.otlp_endpoint {
            tracing::info!(
                endpoint,
                sample_ratio = traces.otlp_sample_ratio,
                "exporting traces over OTLP"
            );
        }
        Ok(Telemetry { traces: provider })
    }

    /// Sends the spans still buffered and closes the exporter; called once before the
    /// process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(error) = provider.shutdown()
        {
            eprintln!("kensa: the last spans could not be exported: {error}");
        }
    }
}

fn tracer_provider(
    endpoint: &str,
    sample_ratio: f64,
    service_name: &str,
) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("cannot set up the OTLP exporter to {endpoint}"))?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// Makes `span` a child of the trace named by the request's `traceparent` header (HTTP) or
/// metadata entry (gRPC), if it names one; without trace export this does nothing.
pub fn continue_remote_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderText(headers));
    // A span whose subscriber exports nothing has no trace to join; that is not an error.
    let _ = span.set_parent(parent);
}

/// Request headers as the propagator reads them.
struct HeaderText<'a>(&'a http::HeaderMap);

impl Extractor for HeaderText<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
