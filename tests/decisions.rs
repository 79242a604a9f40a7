//! Calibrated pass / fail / review decisions: a manifest's `decision` section through the real
//! server, with per-station and per-line overrides from the configuration file, on every path
//! a verdict travels (HTTP, store, MES reads, gRPC, metrics, heat map).

mod common;

use std::time::Duration;

use common::{TestServer, demo_with_decision, label_names, samples};
use futures::StreamExt as _;
use kensa::api::proto::kensa_v1 as pb;
use kensa::api::proto::kensa_v1::inspection_service_client::InspectionServiceClient;
use serde_json::{Value, json};

const TEMPERATURE: f32 = 2.0;
const PASS: f32 = 0.6;
const FAIL: f32 = 0.5;

/// What the rule says for calibrated probabilities in label order (normal first).
fn expected(probabilities: &[f32], pass: f32, fail: f32) -> (&'static str, Option<usize>) {
    let (top, p) = probabilities
        .iter()
        .enumerate()
        .skip(1)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    if probabilities[0] >= pass {
        ("pass", None)
    } else if *p >= fail {
        ("fail", Some(top))
    } else {
        ("review", None)
    }
}

async fn start() -> (TestServer, tempfile::TempDir, tempfile::TempDir) {
    let model = demo_with_decision(json!({
        "temperature": TEMPERATURE,
        "pass_threshold": PASS,
        "fail_threshold": FAIL,
        "target_missed_defect_rate": 0.01,
        "validation": {"split": "test fixture", "n": 10}
    }));
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("kensa.toml");
    std::fs::write(
        &file,
        "[[thresholds]]\nline = \"L9\"\npass-threshold = 0.0\n\
         [[thresholds]]\nstation = \"strict\"\npass-threshold = 1.0\nfail-threshold = 1.0\n",
    )
    .unwrap();
    let server = TestServer::start(&[
        &format!("--model-repository={}", model.path().display()),
        &format!("--config={}", file.display()),
    ])
    .await;
    (server, model, config)
}

async fn post(server: &TestServer, sample: &common::Sample, fields: &[(&str, &str)]) -> Value {
    let mut all = vec![("note", sample.note.as_str())];
    all.extend_from_slice(fields);
    let response = server.post_unit("", &sample.image, &all).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_rule_disposes_every_verdict_on_every_path() {
    let (server, _model, _config) = start().await;
    let names = label_names();
    let mut fails = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, sample) in samples().iter().enumerate() {
        let id = format!("u{i}");
        let verdict = post(
            &server,
            sample,
            &[
                ("station_id", "aoi-07"),
                ("inspection_id", &id),
                ("line", "L3"),
            ],
        )
        .await;
        let probabilities: Vec<f32> = names
            .iter()
            .map(|n| verdict["probabilities"][n].as_f64().unwrap() as f32)
            .collect();
        let want = common::calibrate(&sample.probabilities, TEMPERATURE);
        for (got, want) in probabilities.iter().zip(&want) {
            assert!(
                (got - want).abs() < 1e-4,
                "{}: {got} vs {want}",
                sample.name
            );
        }
        let (disposition, defect) = expected(&probabilities, PASS, FAIL);
        assert_eq!(verdict["disposition"], disposition, "{}", sample.name);
        let decision = &verdict["decision"];
        assert_eq!(decision["thresholds_from"], "manifest");
        assert_eq!(decision["temperature"], TEMPERATURE as f64);
        assert_eq!(
            decision["defect_class"].as_str(),
            defect.map(|i| names[i].as_str())
        );
        fails += usize::from(disposition == "fail");
        seen.insert(disposition);
    }
    assert!(
        seen.len() >= 2,
        "the fixture samples span dispositions: {seen:?}"
    );

    // Overrides: a line whose units all pass, a station that sends everything to review.
    let sample = &samples()[2];
    let lenient = post(&server, sample, &[("station_id", "aoi-08"), ("line", "L9")]).await;
    assert_eq!(lenient["disposition"], "pass");
    assert_eq!(lenient["decision"]["thresholds_from"], "line L9");
    let strict = post(&server, sample, &[("station_id", "strict"), ("line", "L9")]).await;
    assert_eq!(
        strict["disposition"], "review",
        "a station entry wins over its line"
    );
    assert_eq!(strict["decision"]["thresholds_from"], "station strict");

    // Stored and filtered by the MES reads; a bad filter is a 400.
    let page: Value = server
        .get_json("/v1/verdicts?station=aoi-07&disposition=fail")
        .await;
    let stored = page["verdicts"].as_array().unwrap();
    assert_eq!(stored.len(), fails);
    assert!(stored.iter().all(|v| v["disposition"] == "fail"));
    let response = server
        .client
        .get(server.url("/v1/verdicts?disposition=maybe"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // gRPC: the verdict carries it, and WatchVerdicts filters on it.
    let mut grpc = InspectionServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let answer = grpc
        .inspect(pb::InspectRequest {
            station_id: "strict".into(),
            image: sample.image.clone().into(),
            note: sample.note.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.disposition, "review");
    assert_eq!(answer.decision.unwrap().thresholds_from, "station strict");
    let mut watch = grpc
        .watch_verdicts(pb::WatchVerdictsRequest {
            cursor: "0".into(),
            disposition: "review".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.verdict.unwrap().disposition, "review");
    let bad = grpc
        .watch_verdicts(pb::WatchVerdictsRequest {
            disposition: "maybe".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Metrics count by disposition; /v1/models shows the rule and its overrides.
    let metrics = server.get_text("/metrics").await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("kensa_verdicts_total{") && l.contains("disposition=\"fail\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, fails as f64);
    let models: Value = server.get_json("/v1/models").await;
    let decision = &models["models"][0]["decision"];
    assert_eq!(decision["pass_threshold"], PASS as f64);
    assert_eq!(decision["overrides"].as_array().unwrap().len(), 2);

    // The heat map's caption band wears the disposition's colour.
    let response = server
        .post_unit(
            "?format=png",
            &sample.image,
            &[("note", &sample.note), ("station_id", "strict")],
        )
        .await;
    let png = response.bytes().await.unwrap();
    let picture = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(picture.get_pixel(picture.width() - 1, 1).0, [230, 140, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_decision_rule_verdicts_keep_the_arg_max_alone() {
    let model = demo_with_decision(serde_json::Value::Null);
    let server =
        TestServer::start(&[&format!("--model-repository={}", model.path().display())]).await;
    let sample = &samples()[0];
    let verdict = post(&server, sample, &[("station_id", "aoi-07")]).await;
    assert!(verdict.get("disposition").is_none(), "{verdict}");
    assert!(verdict.get("decision").is_none());
    for (got, want) in label_names().iter().zip(&sample.probabilities) {
        let got = verdict["probabilities"][got].as_f64().unwrap() as f32;
        assert!((got - want).abs() < 1e-4, "uncalibrated: {got} vs {want}");
    }
    let metrics = server.get_text("/metrics").await;
    assert!(metrics.contains("disposition=\"none\""), "{metrics}");
}
