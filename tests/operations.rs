//! Health, readiness, models, metrics, shutdown and startup errors.

mod common;

use kensa::api::proto::kensa_v1 as pb;
use kensa::api::proto::kensa_v1::inspection_service_client::InspectionServiceClient;

use std::process::Stdio;
use std::time::Duration;

use common::{TestServer, samples};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_warm_up() {
    // A few full batches of the demo model (EfficientNet-Lite0 + MiniLM) keep it warming up
    // for a while; 150 (sized for the v1 tiny model) took minutes.
    let server = TestServer::start_unready(&["--warmup-batches=4"]).await;
    let live = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while warming up");
    let early = server.inspect(&samples()[0], &[]).await;
    assert_eq!(early.status(), 503);
    assert!(early.headers().contains_key("retry-after"));
    server.wait_ready().await;
    assert_eq!(server.inspect(&samples()[0], &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_and_metrics_describe_the_service() {
    let server = TestServer::start(&[]).await;
    assert_eq!(server.inspect(&samples()[0], &[]).await.status(), 200);
    let models: serde_json::Value = server.get_json("/v1/models").await;
    let model = &models["models"][0];
    assert_eq!(model["name"], "kensa-demo");
    assert_eq!(model["versions"], serde_json::json!([1]));
    assert_eq!(model["provider"], "cpu");
    assert_eq!(model["ready"], true);
    assert_eq!(model["labels"].as_array().unwrap().len(), 5);
    let cap = &model["batch_cap"];
    assert_eq!(cap["automatic"], true, "no --max-batch-size: measured");
    assert_eq!(cap["upper_bound"], 16, "the demo manifest's max_batch_size");
    let measured = cap["measured"].as_array().unwrap();
    let sizes: Vec<u64> = measured
        .iter()
        .map(|m| m["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [1, 2, 4, 8, 16]);
    assert!(
        measured
            .iter()
            .all(|m| m["images_per_s"].as_f64().unwrap() > 0.0)
    );
    assert_eq!(
        model["max_batch_size"], cap["size"],
        "the queue uses the chosen cap"
    );
    assert!(sizes.contains(&cap["size"].as_u64().unwrap()));

    let metrics = server.get_text("/metrics").await;
    for expected in [
        "kensa_requests_total{protocol=\"http\",route=\"/v1/inspections\",method=\"POST\",status=\"200\"} 1",
        "kensa_request_duration_seconds_bucket{le=\"0.0005\",protocol=\"http\",route=\"/v1/inspections\"}",
        "kensa_batch_size_count{model=\"kensa-demo\",version=\"1\"} 1",
        "kensa_queue_depth{model=\"kensa-demo\",version=\"1\"} 0",
        "kensa_model_info{model=\"kensa-demo\",version=\"1\",provider=\"cpu\"} 1",
        "kensa_ready 1",
        "process_resident_memory_bytes ",
        "kensa_build_info{",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_batch_cap_is_used_without_measuring() {
    let server = TestServer::start(&["--max-batch-size=4"]).await;
    let models: serde_json::Value = server.get_json("/v1/models").await;
    let model = &models["models"][0];
    assert_eq!(model["max_batch_size"], 4);
    assert_eq!(
        model["batch_cap"],
        serde_json::json!({"size": 4, "upper_bound": 4, "automatic": false, "measured": []})
    );
}

/// Every protocol is counted in one family, errors by their code, verdicts by station and
/// line; a real scrape passes `promtool check metrics`, and OpenMetrics is served on request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_protocol_and_pass_promtool() {
    let server = TestServer::start(&[]).await;
    let sample = &samples()[0];
    let fields = [("line", "L3")];
    assert_eq!(server.inspect(sample, &fields).await.status(), 200);
    let broken = common::Sample {
        image: b"\x89PNGbroken".to_vec(),
        ..sample.clone()
    };
    assert_eq!(server.inspect(&broken, &[]).await.status(), 400);
    let mut grpc = InspectionServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let request = |image: Vec<u8>| pb::InspectRequest {
        station_id: "aoi-grpc".into(),
        image: image.into(),
        note: sample.note.clone(),
        ..Default::default()
    };
    grpc.inspect(request(sample.image.clone())).await.unwrap();
    let refused = grpc.inspect(request(Vec::new())).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let text = server.get_text("/metrics").await;
    for expected in [
        "kensa_requests_total{protocol=\"grpc\",route=\"/kensa.v1.InspectionService/Inspect\",method=\"POST\",status=\"OK\"} 1",
        "kensa_requests_total{protocol=\"grpc\",route=\"/kensa.v1.InspectionService/Inspect\",method=\"POST\",status=\"INVALID_ARGUMENT\"} 1",
        "kensa_requests_total{protocol=\"http\",route=\"/v1/inspections\",method=\"POST\",status=\"400\"} 1",
        "kensa_errors_total{protocol=\"http\",code=\"bad_image\"} 1",
        "kensa_errors_total{protocol=\"grpc\",code=\"bad_request\"} 1",
        "kensa_verdicts_total{model=\"kensa-demo\",version=\"1\",station=\"aoi-07\",line=\"L3\",",
        "kensa_verdicts_total{model=\"kensa-demo\",version=\"1\",station=\"aoi-grpc\",line=\"_\",",
        "kensa_confidence_bucket{le=\"0.2\",model=\"kensa-demo\",label=",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );

    let openmetrics = server
        .client
        .get(server.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(
        openmetrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(openmetrics.text().await.unwrap().ends_with("# EOF\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_accepted_work() {
    let server = TestServer::start(&["--max-queue-delay=300ms"]).await;
    let sample = samples()[0].clone();
    let in_flight = futures::future::join_all((0..6).map(|_| server.inspect(&sample, &[])));
    let stop = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.server.shutdown();
    };
    let (responses, ()) = tokio::join!(in_flight, stop);
    for response in responses {
        assert_eq!(
            response.status(),
            200,
            "accepted requests are answered during drain"
        );
    }
    let TestServer {
        server,
        client,
        base,
        ..
    } = server;
    tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("stops")
        .expect("clean stop");
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "no longer accepting"
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kensa"))
        .args([
            "serve",
            "--http-host=127.0.0.1",
            "--http-port=0",
            "--grpc-host=127.0.0.1",
            "--grpc-port=0",
            "--device=cpu",
        ])
        .arg(format!(
            "--model-repository={}",
            common::demo_dir().display()
        ))
        .arg(format!("--data-dir={}", data.path().display()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("kensa starts");
    let stderr = child.stderr.take().unwrap();
    let (ready_sender, ready) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.ends_with("ready") {
                let _ = ready_sender.send(());
            }
            lines.push(line);
        }
        lines
    });
    ready
        .recv_timeout(Duration::from_secs(60))
        .expect("kensa reports ready");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    let lines = reader.join().unwrap();
    assert_eq!(exit.code(), Some(0), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("draining")), "{lines:?}");
}

#[test]
fn a_missing_onnx_runtime_is_a_clear_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kensa"))
        .args(["check", "--ort-library=/nonexistent/libonnxruntime.so"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("setup-ort.sh"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_validates_and_reports_the_model() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kensa"))
        .args(["check", "--device=cpu"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["models"][0]["name"], "kensa-demo");
    assert_eq!(report["models"][0]["provider"], "cpu");
    assert!(
        report["models"][0]["timings"]["batch_16"]["ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn a_broken_model_repository_names_the_file_and_the_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(common::demo_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["graphs"]["text"]["outputs"][0]["shape"][2] = serde_json::json!(999);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kensa"))
        .args(["check", "--device=cpu"])
        .arg(format!("--model-repository={}", dir.path().display()))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("text.onnx") && stderr.contains("999"),
        "{stderr}"
    );
}

/// After enough verdicts the drift gauges compare them with the manifest's validation
/// distribution (the demo model records one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_gauges_appear_after_enough_verdicts() {
    let server = TestServer::start(&["--store=none"]).await;
    let samples = samples();
    let mut answered = 0;
    for round in 0..kensa::drift::MIN_SAMPLES.div_ceil(samples.len()) {
        let posts = samples.iter().map(|sample| {
            let id = format!("{}-{round}", sample.name);
            let server = &server;
            async move {
                server
                    .inspect(sample, &[("inspection_id", id.as_str())])
                    .await
                    .status()
            }
        });
        for status in futures::future::join_all(posts).await {
            assert_eq!(status, 200);
            answered += 1;
        }
    }
    assert!(answered >= kensa::drift::MIN_SAMPLES);
    let text = server.get_text("/metrics").await;
    for signal in ["label", "confidence"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("kensa_drift_psi{") && l.contains(&format!("signal=\"{signal}\""))
            })
            .unwrap_or_else(|| panic!("no {signal} drift gauge in\n{text}"));
        let psi: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(psi.is_finite() && psi >= 0.0, "{line}");
    }
}

/// Every answer carries the request's id, taken from the client or generated, on both ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_taken_or_generated_and_returned() {
    let server = TestServer::start(&[]).await;
    let given = server
        .client
        .get(server.url("/healthz"))
        .header("x-request-id", "line3-cell7-0042")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "line3-cell7-0042");
    let generated = server
        .client
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);

    let mut grpc = InspectionServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::GetVerdictRequest {
        station_id: "nobody".into(),
        inspection_id: "nothing".into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "grpc-0001".parse().unwrap());
    let status = grpc.get_verdict(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "grpc-0001");
}
