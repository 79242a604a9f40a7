//! Trace export: the real `kensa serve` process with `--otlp-endpoint` sends its spans over
//! OTLP/gRPC to a collector (here an OTLP trace receiver built from the protocol's own
//! generated server), the request's spans join the trace named by the caller's `traceparent`,
//! and the batch that ran the request links back to it.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

/// The trace the test's "MES" opens and sends in `traceparent`.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// What the collector received: each span with its resource's `service.name`.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| string_attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn start_collector() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let received = Received::default();
    let service = TraceServiceServer::new(received.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (address, received)
}

fn start_kensa(http: u16, collector: SocketAddr, data: &std::path::Path) -> Child {
    common::kensa_serve(http, data)
        .arg(format!("--otlp-endpoint=http://{collector}"))
        .arg("--otlp-service-name=kensa-line-3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kensa starts")
}

#[tokio::test]
async fn spans_reach_the_collector_in_the_callers_trace() {
    let (collector, received) = start_collector().await;
    let data = tempfile::tempdir().unwrap();
    let http = common::free_port();
    let mut kensa = start_kensa(http, collector, data.path());
    let base = format!("http://127.0.0.1:{http}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == 200
        {
            break;
        }
        assert!(kensa.try_wait().unwrap().is_none(), "kensa exited");
        assert!(started.elapsed() < Duration::from_secs(120), "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let sample = &common::samples()[0];
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(sample.image.clone()).file_name("unit.png"),
        )
        .text("note", sample.note.clone())
        .text("station_id", "aoi-07");
    let response = client
        .post(format!("{base}/v1/inspections"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // SIGTERM: the process drains and flushes the spans it still buffers before exiting.
    let status = Command::new("kill")
        .args(["-TERM", &kensa.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || kensa.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));

    let spans = received.0.lock().unwrap().clone();
    assert!(
        spans.iter().all(|(service, _)| service == "kensa-line-3"),
        "service.name of every span"
    );
    let named = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .map(|(_, span)| span)
            .filter(|span| span.name == name)
            .collect()
    };
    let in_callers_trace = |name: &str| -> &Span {
        let found = named(name);
        found
            .iter()
            .find(|span| hex(&span.trace_id) == TRACE_ID)
            .copied()
            .unwrap_or_else(|| panic!("no {name:?} span in the caller's trace: {found:?}"))
    };
    let request = in_callers_trace("request");
    assert_eq!(hex(&request.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(
        string_attribute(&request.attributes, "path").as_deref(),
        Some("/v1/inspections")
    );
    let inspect = in_callers_trace("inspect");
    assert_eq!(inspect.parent_span_id, request.span_id);
    assert_eq!(
        string_attribute(&inspect.attributes, "station_id").as_deref(),
        Some("aoi-07")
    );
    assert_eq!(
        string_attribute(&inspect.attributes, "model").as_deref(),
        Some("kensa-demo")
    );
    for stage in ["preprocess", "batched", "store"] {
        assert_eq!(
            in_callers_trace(stage).parent_span_id,
            inspect.span_id,
            "{stage} is a stage of the inspection"
        );
    }
    let linked_batch = named("batch").into_iter().find(|batch| {
        batch
            .links
            .iter()
            .any(|link| hex(&link.trace_id) == TRACE_ID && link.span_id == inspect.span_id)
    });
    assert!(
        linked_batch.is_some(),
        "a batch span links to the inspection it ran: {:?}",
        named("batch")
    );
}
