//! The native gRPC API (`kensa.v1.InspectionService`), health and reflection, with a real tonic
//! client against a real server, real ONNX Runtime and the shipped demo model.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Sample, TestServer, samples};
use kensa::api::proto::kensa_v1 as pb;
use kensa::verdict::Verdict;
use pb::inspection_service_client::InspectionServiceClient;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

async fn client(server: &TestServer) -> InspectionServiceClient<Channel> {
    InspectionServiceClient::connect(server.grpc.clone())
        .await
        .expect("gRPC connects")
}

fn error_code(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get("kensa-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn request(sample: &Sample, inspection_id: &str) -> pb::InspectRequest {
    pb::InspectRequest {
        station_id: "aoi-07".into(),
        inspection_id: inspection_id.into(),
        image: sample.image.clone().into(),
        note: sample.note.clone(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_inspect_equals_the_http_verdict() {
    let server = TestServer::start(&[]).await;
    let mut grpc = client(&server).await;
    for sample in samples().iter().take(3) {
        let native: Verdict = server.inspect(sample, &[]).await.json().await.unwrap();
        // One inspection id per unit: reusing one for another image is a conflict.
        let id = format!("grpc-{}", sample.name);
        let mut message = request(sample, &id);
        message.metadata.insert("line".into(), "L3".into());
        message.heatmap = true;
        let verdict = grpc.inspect(message).await.expect("verdict").into_inner();
        assert_eq!(verdict.inspection_id, id);
        assert_eq!(verdict.station_id, "aoi-07");
        assert_eq!(verdict.label, native.label);
        assert_eq!(verdict.is_defect, native.is_defect);
        assert_eq!(verdict.confidence, native.confidence);
        assert_eq!(verdict.probabilities.len(), native.probabilities.len());
        for (label, p) in &native.probabilities {
            assert_eq!(verdict.probabilities[label], *p, "{label}");
        }
        let attention = verdict.attention.expect("attention");
        assert_eq!(attention.values, native.attention.values);
        assert_eq!(verdict.metadata["line"], "L3");
        assert!(verdict.received_at.is_some());
        assert!(verdict.heatmap_png.starts_with(b"\x89PNG"), "raw PNG bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_grpc_codes_with_the_stable_code() {
    let server = TestServer::start(&["--max-body-bytes=200000", "--max-image-bytes=100000"]).await;
    let mut grpc = client(&server).await;
    let sample = &samples()[0];

    let mut no_station = request(sample, "");
    no_station.station_id.clear();
    let status = grpc.inspect(no_station).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(error_code(&status), "bad_request");

    let mut corrupt = request(sample, "");
    corrupt.image = b"\x89PNG\r\n\x1a\nnot really".to_vec().into();
    let status = grpc.inspect(corrupt).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(error_code(&status), "bad_image");

    let mut large = request(sample, "");
    large.image = vec![0u8; 150_000].into();
    let status = grpc.inspect(large).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(error_code(&status), "payload_too_large");

    let mut over_the_message_limit = request(sample, "");
    over_the_message_limit.image = vec![0u8; 300_000].into();
    let status = grpc.inspect(over_the_message_limit).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    let mut unknown = request(sample, "");
    unknown.model = "no-such-model".into();
    let status = grpc.inspect(unknown).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let status = grpc
        .get_verdict(pb::GetVerdictRequest {
            inspection_id: "x".into(),
            station_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let status = grpc
        .get_verdict(pb::GetVerdictRequest {
            inspection_id: "never-inspected".into(),
            station_id: "aoi-07".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(error_code(&status), "verdict_not_found");

    let status = grpc
        .watch_verdicts(pb::WatchVerdictsRequest {
            cursor: "not-a-cursor".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted_with_a_retry_hint() {
    let server = TestServer::start(&[
        "--queue-capacity=2",
        "--max-batch-size=1",
        "--max-queue-delay=0ms",
    ])
    .await;
    let grpc = client(&server).await;
    let sample = samples()[0].clone();
    let results = futures::future::join_all((0..40).map(|_| {
        let mut grpc = grpc.clone();
        let message = request(&sample, "");
        async move { grpc.inspect(message).await }
    }))
    .await;
    let refused: Vec<&tonic::Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(results.iter().any(Result::is_ok));
    assert!(!refused.is_empty());
    for status in refused {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        let pushback: u64 = status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .expect("retry hint")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(pushback >= 1);
    }
}

/// 100 units on one stream with a corrupt image in the middle: 99 verdicts, one per-message
/// error carrying its inspection id, and the stream goes on to the end. A watcher sees the 99
/// verdicts live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_100_survives_a_bad_message() {
    // 100 units of the demo model (EfficientNet-Lite0 + MiniLM) can take longer than the
    // default 10 s deadline on a loaded 2-core machine; this test is not about deadlines.
    let server = TestServer::start(&["--max-queue-delay=5ms", "--default-deadline=60s"]).await;
    let mut grpc = client(&server).await;
    let mut watch = grpc
        .watch_verdicts(pb::WatchVerdictsRequest {
            station_id: "stream-station".into(),
            ..Default::default()
        })
        .await
        .expect("watching")
        .into_inner();

    let samples = samples();
    let messages: Vec<pb::InspectRequest> = (0..100)
        .map(|i| {
            let mut message = request(&samples[i % samples.len()], &format!("unit-{i}"));
            message.station_id = "stream-station".into();
            if i == 50 {
                message.image = b"definitely not an image".to_vec().into();
            }
            message
        })
        .collect();
    let mut answers = grpc
        .inspect_stream(tokio_stream::iter(messages))
        .await
        .expect("stream opens")
        .into_inner();
    let mut verdicts = 0;
    let mut errors = Vec::new();
    let mut sequences = HashSet::new();
    while let Some(answer) = answers.next().await {
        let answer = answer.expect("no stream-level error");
        assert!(sequences.insert(answer.sequence));
        assert_eq!(answer.inspection_id, format!("unit-{}", answer.sequence));
        match answer.outcome.clone().expect("an outcome") {
            pb::inspect_stream_response::Outcome::Verdict(verdict) => {
                assert_eq!(verdict.inspection_id, answer.inspection_id);
                verdicts += 1;
            }
            pb::inspect_stream_response::Outcome::Error(error) => errors.push((answer, error)),
        }
    }
    assert_eq!(verdicts, 99);
    assert_eq!(sequences.len(), 100);
    assert_eq!(errors.len(), 1);
    let (answer, error) = &errors[0];
    assert_eq!(answer.inspection_id, "unit-50");
    assert_eq!(error.code, "bad_image");
    assert_eq!(error.grpc_code, tonic::Code::InvalidArgument as i32);

    let mut cursors = Vec::new();
    while cursors.len() < 99 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watched verdicts arrive")
            .expect("stream open")
            .expect("event");
        assert_eq!(event.verdict.unwrap().station_id, "stream-station");
        cursors.push(event.cursor.parse::<u64>().unwrap());
    }
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness_and_reflection_lists_the_services() {
    // A few full batches of the demo model (EfficientNet-Lite0 + MiniLM) keep it warming up
    // for a while; 150 (sized for the v1 tiny model) took minutes.
    let server = TestServer::start_unready(&["--warmup-batches=4"]).await;
    let channel = Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = |service: &str| tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    let status = health.check(check("")).await.unwrap().into_inner().status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
        "not serving while warming up"
    );
    server.wait_ready().await;
    for service in [
        "",
        "kensa.v1.InspectionService",
        "inference.GRPCInferenceService",
    ] {
        let status = health
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        message_request: Some(MessageRequest::ListServices(String::new())),
        ..Default::default()
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list: {response:?}");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "kensa.v1.InspectionService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(expected), "{names:?}");
    }
}

/// Draining ends open watch streams with `Unavailable` so the server can stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let server = TestServer::start(&[]).await;
    let mut grpc = client(&server).await;
    let mut watch = grpc
        .watch_verdicts(pb::WatchVerdictsRequest::default())
        .await
        .unwrap()
        .into_inner();
    server.server.shutdown();
    let end = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the stream ends");
    let status = end.expect("a final status").unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(10), server.server.wait())
        .await
        .expect("stops")
        .expect("clean stop");
}
