//! The HTTP inspection API against a real server, real ONNX Runtime and the shipped demo model.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{TestServer, crc32, label_names, samples};
use kensa::verdict::Verdict;

/// Rust preprocessing + Rust ONNX Runtime must give what the Python pipeline gave for the same
/// file: same label, probabilities (calibrated by the manifest's temperature, as the service
/// reports them) and attention within 1e-4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_samples_get_their_labels_and_match_python() {
    let server = TestServer::start(&[]).await;
    let labels = label_names();
    let temperature = common::demo_temperature();
    for sample in samples() {
        let response = server
            .inspect(&sample, &[("inspection_id", &sample.name)])
            .await;
        assert_eq!(response.status(), 200, "{}", sample.name);
        let verdict: Verdict = response.json().await.expect("verdict JSON");
        assert_eq!(verdict.label, sample.label, "{}: {verdict:?}", sample.name);
        assert_eq!(verdict.inspection_id, sample.name);
        assert_eq!(verdict.station_id, "aoi-07");
        assert_eq!(verdict.is_defect, sample.label != "normal");
        let expected_probabilities = common::calibrate(&sample.probabilities, temperature);
        for (label, expected) in labels.iter().zip(&expected_probabilities) {
            let got = verdict.probabilities[label];
            assert!(
                (got - expected).abs() <= 1e-4,
                "{} {label}: rust {got} python {expected}",
                sample.name
            );
        }
        assert_eq!(verdict.attention.values.len(), sample.attention.len());
        for (got, expected) in verdict.attention.values.iter().zip(&sample.attention) {
            assert!(
                (got - expected).abs() <= 1e-4,
                "{} attention: rust {got} python {expected}",
                sample.name
            );
        }
        let total: f32 = verdict.attention.values.iter().sum();
        assert!((total - 1.0).abs() < 1e-4);
        let confidence = verdict.probabilities[&verdict.label];
        assert_eq!(verdict.confidence, confidence);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_answer_like_sequential_ones() {
    answers_match_alone_and_in_batches(&["--max-queue-delay=20ms", "--max-batch-size=16"]).await;
}

/// With batch-size buckets (what TensorRT gets by default) every batch is padded with copies of
/// its last row: those rows must never reach a verdict, nor be counted in its batch size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padded_batches_answer_like_unpadded_ones() {
    answers_match_alone_and_in_batches(&[
        "--max-queue-delay=20ms",
        "--max-batch-size=16",
        "--batch-buckets=4,8,16",
    ])
    .await;
}

/// 32 requests one at a time, then 32 at once: the same verdicts, batched the second time.
async fn answers_match_alone_and_in_batches(flags: &[&str]) {
    let server = TestServer::start(flags).await;
    let samples = samples();
    let pick = |i: usize| samples[i % samples.len()].clone();
    let mut sequential = Vec::new();
    for i in 0..32 {
        let verdict: Verdict = server
            .inspect(&pick(i), &[])
            .await
            .json()
            .await
            .expect("verdict");
        assert_eq!(verdict.batch_size, 1);
        sequential.push(verdict);
    }
    let concurrent = futures::future::join_all((0..32).map(|i| {
        let sample = pick(i);
        let server = &server;
        async move {
            server
                .inspect(&sample, &[])
                .await
                .json::<Verdict>()
                .await
                .expect("verdict")
        }
    }))
    .await;
    assert!(
        concurrent.iter().any(|v| v.batch_size > 1),
        "32 concurrent requests should share batches"
    );
    for (one, many) in sequential.iter().zip(&concurrent) {
        assert_eq!(one.label, many.label);
        assert!(many.batch_size <= 32);
        for (a, b) in one.attention.values.iter().zip(&many.attention.values) {
            assert!((a - b).abs() < 1e-5, "attention {a} vs {b}");
        }
        for (label, p) in &one.probabilities {
            assert!(
                (p - many.probabilities[label]).abs() < 1e-5,
                "{label}: {p} vs {}",
                many.probabilities[label]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_with_base64_image_equals_multipart() {
    let server = TestServer::start(&[]).await;
    let sample = &samples()[2];
    let multipart: Verdict = server
        .inspect(sample, &[("line", "L3"), ("lot_id", "LOT-9")])
        .await
        .json()
        .await
        .unwrap();
    let body = serde_json::json!({
        "station_id": "aoi-07",
        "inspection_id": "json-1",
        "image": base64::engine::general_purpose::STANDARD.encode(&sample.image),
        "note": sample.note,
        "line": "L3",
        "lot_id": "LOT-9",
        "priority": "urgent",
    });
    let response = server
        .client
        .post(server.url("/v1/inspections"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let json: Verdict = response.json().await.unwrap();
    assert_eq!(json.inspection_id, "json-1");
    assert_eq!(json.label, multipart.label);
    assert_eq!(json.probabilities, multipart.probabilities);
    assert_eq!(json.metadata.get("line").map(String::as_str), Some("L3"));
    assert_eq!(
        multipart.metadata.get("lot_id").map(String::as_str),
        Some("LOT-9")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heat_map_comes_back_as_png() {
    let server = TestServer::start(&[]).await;
    let sample = &samples()[0];
    let response = server
        .client
        .post(server.url("/v1/inspections?format=png"))
        .multipart(
            reqwest::multipart::Form::new()
                .part(
                    "image",
                    reqwest::multipart::Part::bytes(sample.image.clone()).file_name("u.png"),
                )
                .text("station_id", "aoi-07")
                .text("note", sample.note.clone()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.headers()["x-kensa-label"], sample.label.as_str());
    let png = response.bytes().await.unwrap();
    let decoded = image::load_from_memory(&png).expect("a PNG");
    assert!(decoded.width() >= 112 && decoded.height() >= 112);

    let verdict: serde_json::Value = server
        .client
        .post(server.url("/v1/inspections?heatmap=true"))
        .json(&serde_json::json!({
            "station_id": "aoi-07",
            "image": base64::engine::general_purpose::STANDARD.encode(&sample.image),
            "note": sample.note,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let embedded = base64::engine::general_purpose::STANDARD
        .decode(verdict["heatmap_png"].as_str().expect("heatmap_png"))
        .unwrap();
    assert_eq!(embedded, png.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = TestServer::start(&[
        "--queue-capacity=2",
        "--max-batch-size=1",
        "--max-queue-delay=0ms",
    ])
    .await;
    let sample = samples()[0].clone();
    let responses = futures::future::join_all((0..40).map(|_| server.inspect(&sample, &[]))).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let refused: Vec<&reqwest::Response> = responses.iter().filter(|r| r.status() == 429).collect();
    assert!(!refused.is_empty(), "{statuses:?}");
    assert!(statuses.contains(&200));
    let retry: u64 = refused[0].headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_answers_504() {
    let server = TestServer::start(&["--max-queue-delay=3s"]).await;
    let sample = &samples()[0];
    let started = Instant::now();
    let response = server.inspect(sample, &[("deadline_ms", "300")]).await;
    assert_eq!(response.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at the deadline, not at batch close"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "deadline_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx() {
    let server = TestServer::start(&["--max-body-bytes=200000", "--max-note-chars=200"]).await;
    let sample = samples()[0].clone();

    let corrupt = common::Sample {
        image: b"\x89PNG\r\n\x1a\nthis is not really a png".to_vec(),
        ..sample.clone()
    };
    let response = server.inspect(&corrupt, &[]).await;
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "bad_image");

    let big = common::Sample {
        image: vec![0u8; 300_000],
        ..sample.clone()
    };
    let response = server.inspect(&big, &[]).await;
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large");

    let long_note = common::Sample {
        note: "x".repeat(201),
        ..sample.clone()
    };
    let response = server.inspect(&long_note, &[]).await;
    assert_eq!(response.status(), 400);

    let response = server
        .client
        .post(server.url("/v1/inspections"))
        .multipart(reqwest::multipart::Form::new().text("note", "no image"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = server
        .client
        .post(server.url("/v1/inspections"))
        .json(&serde_json::json!({"station_id": "s", "image": "%%%"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = server
        .client
        .post(server.url("/v1/inspections"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = server.inspect(&sample, &[("model", "no-such-model")]).await;
    assert_eq!(response.status(), 404);

    // `curl -F file=@unit.png`: the wrong part name is named, with the parts that are read.
    let response = server
        .client
        .post(server.url("/v1/inspections"))
        .multipart(
            reqwest::multipart::Form::new()
                .text("station_id", "aoi-07")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(sample.image.clone()).file_name("unit.png"),
                ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("\"file\"") && message.contains("named \"image\""),
        "{message}"
    );

    for (method, path, status, code) in [
        (
            reqwest::Method::GET,
            "/no/such/route",
            404,
            "route_not_found",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/inspections",
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::GET,
            "/v2/models/kensa-demo/nope",
            404,
            "route_not_found",
        ),
    ] {
        let response = server
            .client
            .request(method.clone(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{method} {path}: JSON error body");
    }

    let ok = server.inspect(&sample, &[]).await;
    assert_eq!(
        ok.status(),
        200,
        "bad requests change nothing for good ones"
    );
}

/// A PNG whose header claims 100000 x 100000 pixels: refused from the header, quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_refused_fast() {
    let server = TestServer::start(&[]).await;
    let mut png = Vec::new();
    image::GrayImage::new(8, 8)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    // IHDR data starts at byte 16: width, height (big endian), then 5 bytes; CRC over type+data.
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let bomb = common::Sample {
        image: png,
        ..samples()[0].clone()
    };
    let started = Instant::now();
    let response = server.inspect(&bomb, &[]).await;
    assert_eq!(response.status(), 413);
    assert!(started.elapsed() < Duration::from_secs(2));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "image_too_large");
}
