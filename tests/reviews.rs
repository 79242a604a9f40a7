//! The review loop's service side through the real server (real ONNX Runtime, the demo model
//! with a decision section, image retention on): reviews over HTTP and gRPC, the review queue
//! filter, metrics, the line overview, the heat map of a stored verdict and the page's routes.

mod common;

use common::{Sample, TestServer, demo_with_decision, samples};
use kensa::api::proto::kensa_v1 as pb;
use kensa::api::proto::kensa_v1::inspection_service_client::InspectionServiceClient;
use serde_json::{Value, json};

async fn start(extra: &[&str]) -> (TestServer, tempfile::TempDir) {
    let model = demo_with_decision(common::review_decision());
    let repository = format!("--model-repository={}", model.path().display());
    let mut flags = vec![repository.as_str()];
    flags.extend_from_slice(extra);
    (TestServer::start(&flags).await, model)
}

fn sample(label: &str) -> Sample {
    samples()
        .into_iter()
        .find(|s| s.label == label)
        .expect("a fixture sample of that class")
}

/// Inspects `label`'s fixture as `inspection` on `station`, line L3; returns the verdict.
async fn inspect(server: &TestServer, station: &str, inspection: &str, label: &str) -> Value {
    let unit = sample(label);
    let response = server
        .post_unit(
            "",
            &unit.image,
            &[
                ("station_id", station),
                ("inspection_id", inspection),
                ("note", &unit.note),
                ("line", "L3"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn post_review(
    server: &TestServer,
    station: &str,
    inspection: &str,
    body: &Value,
) -> reqwest::Response {
    server
        .client
        .post(server.url(&format!("/v1/verdicts/{station}/{inspection}/review")))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_is_stored_beside_the_verdict_once_per_reviewer() {
    let (server, _model) = start(&["--retain-images"]).await;
    let verdict = inspect(&server, "aoi-07", "u1", "void").await;
    assert_eq!(verdict["disposition"], "review");

    let body = json!({"label": "void", "reviewer": "Aiko", "comment": "clear void"});
    let first = post_review(&server, "aoi-07", "u1", &body).await;
    assert_eq!(first.status(), 201);
    let review: Value = first.json().await.unwrap();
    assert_eq!(review["outcome"], "confirmed");
    assert_eq!(review["model_label"], "void");
    assert_eq!(review["line"], "L3");

    let again = post_review(&server, "aoi-07", "u1", &body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["x-kensa-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), review);

    let changed = json!({"label": "normal", "reviewer": "Aiko"});
    let conflict = post_review(&server, "aoi-07", "u1", &changed).await;
    assert_eq!(conflict.status(), 409);
    assert_eq!(conflict.json::<Value>().await.unwrap()["code"], "conflict");

    let second = json!({"label": "residue", "reviewer": "Kenji", "comment": "<b>smudge</b>"});
    assert_eq!(
        post_review(&server, "aoi-07", "u1", &second).await.status(),
        201
    );
    let stored: Value = server.get_json("/v1/verdicts/aoi-07/u1").await;
    assert_eq!(
        stored["label"], "void",
        "the model's verdict is never rewritten"
    );
    assert_eq!(stored["confidence"], verdict["confidence"]);
    assert_eq!(stored["disposition"], "review");
    assert_eq!(
        stored["review"]["label"], "residue",
        "the newest review shows"
    );
    assert_eq!(stored["review"]["outcome"], "overridden");
    assert_eq!(stored["review"]["comment"], "<b>smudge</b>");

    let confirmed = r#"kensa_reviews_total{station="aoi-07",outcome="confirmed"}"#;
    let overridden = r#"kensa_reviews_total{station="aoi-07",outcome="overridden"}"#;
    assert_eq!(server.metric(confirmed).await, Some(1.0));
    assert_eq!(server.metric(overridden).await, Some(1.0));
    let agreement = r#"kensa_review_agreement_ratio{model="kensa-demo",version="1"}"#;
    assert_eq!(server.metric(agreement).await, Some(0.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reviews_get_a_clear_4xx_and_change_nothing() {
    let (server, _model) = start(&[]).await;
    inspect(&server, "aoi-07", "u1", "void").await;
    let cases = [
        (
            json!({"label": "crack", "reviewer": "Aiko"}),
            400,
            "bad_request",
        ),
        (
            json!({"label": "void", "reviewer": " "}),
            400,
            "bad_request",
        ),
        (json!({"label": "void"}), 400, "bad_request"),
        (
            json!({"label": "void", "reviewer": "Aiko", "comment": "x".repeat(2001)}),
            400,
            "bad_request",
        ),
    ];
    for (body, status, code) in cases {
        let response = post_review(&server, "aoi-07", "u1", &body).await;
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(response.json::<Value>().await.unwrap()["code"], code);
    }
    let unknown = post_review(
        &server,
        "aoi-07",
        "nope",
        &json!({"label": "void", "reviewer": "Aiko"}),
    )
    .await;
    assert_eq!(unknown.status(), 404);
    let not_json = server
        .client
        .post(server.url("/v1/verdicts/aoi-07/u1/review"))
        .body("label=void")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let stored: Value = server.get_json("/v1/verdicts/aoi-07/u1").await;
    assert!(stored.get("review").is_none(), "{stored}");
    assert_eq!(
        server.metric("kensa_reviews_total").await,
        None,
        "no review was counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_queue_is_what_waits_oldest_first_and_grpc_reviews_the_same_way() {
    let (server, _model) = start(&["--retain-images"]).await;
    for (id, label) in [
        ("a", "void"),
        ("b", "normal"),
        ("c", "void"),
        ("d", "oversize"),
    ] {
        inspect(&server, "aoi-07", id, label).await;
    }
    let queue = "/v1/verdicts?disposition=review&reviewed=false";
    let waiting: Value = server.get_json(queue).await;
    let ids: Vec<&str> = waiting["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["inspection_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "c"]);

    let mut client = InspectionServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let answer = client
        .review_verdict(pb::ReviewVerdictRequest {
            station_id: "aoi-07".into(),
            inspection_id: "a".into(),
            label: "normal".into(),
            reviewer: "Aiko".into(),
            comment: "dust, not a void".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let review = answer.review.unwrap();
    assert!(!answer.replayed);
    assert_eq!(
        (review.label.as_str(), review.outcome.as_str()),
        ("normal", "overridden")
    );
    let waiting: Value = server.get_json(queue).await;
    assert_eq!(waiting["verdicts"].as_array().unwrap().len(), 1);
    assert_eq!(waiting["verdicts"][0]["inspection_id"], "c");

    let stored = client
        .get_verdict(pb::GetVerdictRequest {
            station_id: "aoi-07".into(),
            inspection_id: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.review.unwrap().comment, "dust, not a void");
    assert_eq!(stored.verdict.unwrap().label, "void");

    let conflict = client
        .review_verdict(pb::ReviewVerdictRequest {
            station_id: "aoi-07".into(),
            inspection_id: "a".into(),
            label: "void".into(),
            reviewer: "Aiko".into(),
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);
    let missing = client
        .review_verdict(pb::ReviewVerdictRequest {
            station_id: "aoi-07".into(),
            inspection_id: "zz".into(),
            label: "void".into(),
            reviewer: "Aiko".into(),
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_counts_each_station_and_names_its_newest_verdict() {
    let (server, _model) = start(&[]).await;
    for (station, id, label) in [
        ("aoi-01", "1", "normal"),
        ("aoi-01", "2", "void"),
        ("aoi-01", "3", "oversize"),
        ("aoi-02", "4", "void"),
    ] {
        inspect(&server, station, id, label).await;
    }
    let overview: Value = server.get_json("/v1/stations").await;
    assert_eq!(overview["cursor"], 4);
    assert_eq!(overview["bucket_ms"], 300_000);
    let stations = overview["stations"].as_array().unwrap();
    assert_eq!(stations.len(), 2);
    let first = &stations[0];
    assert_eq!(first["station_id"], "aoi-01");
    assert_eq!(first["line"], "L3");
    assert_eq!(first["latest"]["inspection_id"], "3");
    assert_eq!(
        first["window"],
        json!({"total": 3, "defects": 2, "pass": 1, "fail": 1, "review": 1})
    );
    let buckets = first["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 12);
    assert_eq!(buckets[11]["total"], 3, "all in the newest bucket");
    assert_eq!(stations[1]["window"]["review"], 1);

    let short: Value = server.get_json("/v1/stations?window=10m").await;
    assert_eq!(short["bucket_ms"], 50_000);
    for bad in ["/v1/stations?window=3d", "/v1/stations?window=soon"] {
        let response = server.client.get(server.url(bad)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_verdict_has_its_heat_map_when_its_image_was_kept() {
    let (server, _model) = start(&["--retain-images"]).await;
    inspect(&server, "aoi-07", "kept", "void").await;
    let response = server
        .client
        .get(server.url("/v1/verdicts/aoi-07/kept/heatmap"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let png = response.bytes().await.unwrap();
    let picture = image::load_from_memory(&png).unwrap();
    assert!(picture.width() >= 384, "drawn at a readable size");

    let (plain, _model) = start(&[]).await;
    inspect(&plain, "aoi-07", "gone", "void").await;
    let response = plain
        .client
        .get(plain.url("/v1/verdicts/aoi-07/gone/heatmap"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "image_not_retained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_from_the_binary_with_a_strict_policy() {
    let server = TestServer::start(&["--store=none"]).await;
    let page = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(html.contains("/ui/app.js") && !html.contains("<script>"));
    // Every row of the access table is a route the server serves.
    for (method, path, _) in kensa::access::scopes::HTTP_ROUTES {
        let path = path
            .replace("{station_id}", "aoi-07")
            .replace("{inspection_id}", "none")
            .replace("{name}", "kensa-demo")
            .replace("{version}", "1");
        let request = match *method {
            "GET" => server.client.get(server.url(&path)),
            _ => server.client.post(server.url(&path)).json(&json!({})),
        };
        let response = request.send().await.unwrap();
        if path.ends_with("/stream") {
            assert_eq!(response.status(), 200, "{method} {path}");
            continue;
        }
        let text = response.text().await.unwrap();
        assert!(!text.contains("route_not_found"), "{method} {path}: {text}");
    }
}
