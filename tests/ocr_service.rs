//! OCR inside the service: a model whose manifest has an `ocr` section reads the text burnt
//! into each frame, hands it to the model as (part of) the note, and every read path returns
//! what was read and the note the model saw; `--disable-ocr` serves the same model as before.
//! Needs the graphs from `scripts/setup-ocr.sh` (scripts/test.sh runs it).

mod common;

use std::path::{Path, PathBuf};

use common::{TestServer, demo_dir};
use kensa::api::proto::kensa_v1 as pb;
use kensa::api::proto::kensa_v1::inspection_service_client::InspectionServiceClient;
use serde_json::{Value, json};

const DETECTOR: &str = "ch_PP-OCRv4_det_infer.onnx";
const RECOGNISER: &str = "ch_PP-OCRv4_rec_infer.onnx";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/ocr").join(name)).expect("OCR fixture")
}

/// What the Python reference read on a fixture, line by line.
fn reference_texts(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("tests/fixtures/ocr/expected.json")).unwrap();
    let expected: Value = serde_json::from_str(&text).unwrap();
    let case = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["image"] == name)
        .expect("fixture case");
    case["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

/// The demo model's files and the two OCR graphs linked into a temp folder, its manifest with
/// `ocr` as its ocr section.
fn demo_with_ocr(ocr: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(demo_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "manifest.json" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let graphs = root().join(".ocr");
    for name in [DETECTOR, RECOGNISER] {
        let source = graphs.join(name);
        assert!(source.exists(), "run scripts/setup-ocr.sh first");
        std::os::unix::fs::symlink(&source, dir.path().join(name)).unwrap();
    }
    let text = std::fs::read_to_string(demo_dir().join("manifest.json")).unwrap();
    let mut manifest: Value = serde_json::from_str(&text).unwrap();
    manifest["ocr"] = ocr;
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    dir
}

async fn start(model: &Path, extra: &[&str]) -> TestServer {
    let mut args = vec![format!("--model-repository={}", model.display())];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start(&args).await
}

async fn inspect(server: &TestServer, image: &[u8], id: &str, note: &str) -> Value {
    let fields = [
        ("station_id", "aoi-07"),
        ("inspection_id", id),
        ("note", note),
    ];
    let response = server.post_unit("", image, &fields).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_reads_the_overlay_and_every_path_says_what_it_saw() {
    let model = demo_with_ocr(json!({
        "detector": DETECTOR,
        "recogniser": RECOGNISER,
        "join": "when-empty",
        "min_confidence": 0.5
    }));
    let server = start(model.path(), &[]).await;

    // A bare frame: the text read is the note.
    let verdict = inspect(&server, &fixture("two_lines.png"), "bare", "").await;
    let want = reference_texts("two_lines.png");
    let lines = verdict["ocr"]["lines"].as_array().unwrap();
    let got: Vec<&str> = lines.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(verdict["ocr"]["text"], want.join("\n"));
    assert_eq!(verdict["model_note"], want.join("\n"));
    for line in lines {
        assert_eq!(line["box"].as_array().unwrap().len(), 4);
        assert!(line["confidence"].as_f64().unwrap() >= 0.5);
    }
    assert!(verdict["timings"]["ocr_ms"].as_f64().unwrap() > 0.0);

    // A station note wins with when-empty; the text read is still reported.
    let noted = inspect(&server, &fixture("two_lines.png"), "noted", "remark: ok").await;
    assert_eq!(noted["model_note"], "remark: ok");
    assert_eq!(noted["ocr"]["text"], want.join("\n"));

    // A frame without text: an empty read, not an error.
    let blank = inspect(&server, &fixture("no_text.png"), "blank", "").await;
    assert_eq!(blank["ocr"], json!({"text": "", "lines": []}));
    assert_eq!(blank["model_note"], "");

    // The store returns both (HTTP and gRPC).
    let stored: Value = server.get_json("/v1/verdicts/aoi-07/bare").await;
    assert_eq!(stored["ocr"], verdict["ocr"]);
    assert_eq!(stored["model_note"], verdict["model_note"]);
    assert_eq!(stored["note"], "");
    let mut grpc = InspectionServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let message = grpc
        .get_verdict(pb::GetVerdictRequest {
            station_id: "aoi-07".into(),
            inspection_id: "bare".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(message.model_note, want.join("\n"));
    let read = message.ocr.unwrap();
    assert_eq!(read.lines.len(), want.len());
    assert_eq!(read.lines[0].r#box.len(), 8);

    let metrics = server.get_text("/metrics").await;
    assert!(
        metrics.contains("kensa_ocr_duration_seconds_count{model=\"kensa-demo\",version=\"1\"} 3"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("ocr"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The model saw exactly the note it reports: the same frame with that note typed in,
    // OCR off, gets the same probabilities.
    let off = start(model.path(), &["--disable-ocr"]).await;
    let typed = inspect(&off, &fixture("two_lines.png"), "typed", &want.join("\n")).await;
    assert!(typed.get("ocr").is_none() && typed.get("model_note").is_none());
    assert!(typed["timings"].get("ocr_ms").is_none());
    assert_eq!(typed["probabilities"], verdict["probabilities"]);
    let bare_off = inspect(&off, &fixture("two_lines.png"), "bare-off", "").await;
    assert!(bare_off.get("ocr").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_limits_the_read_and_boxes_stay_in_frame_pixels() {
    // bottom_band.png (384 x 256) has its two lines in the lower 60 rows.
    let model = demo_with_ocr(json!({
        "detector": DETECTOR,
        "recogniser": RECOGNISER,
        "region": {"x": 0, "y": 180, "width": 384, "height": 76},
        "join": "prepend"
    }));
    let server = start(model.path(), &[]).await;
    let verdict = inspect(&server, &fixture("bottom_band.png"), "band", "remark: ok").await;
    let lines = verdict["ocr"]["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    for line in lines {
        for corner in line["box"].as_array().unwrap() {
            assert!(corner[1].as_f64().unwrap() >= 180.0);
        }
    }
    let read = verdict["ocr"]["text"].as_str().unwrap();
    assert_eq!(verdict["model_note"], format!("{read}; remark: ok"));

    // The same region on a frame whose text is at the top reads nothing.
    let top = inspect(&server, &fixture("two_lines.png"), "top", "remark: ok").await;
    assert_eq!(top["ocr"]["lines"], json!([]));
    assert_eq!(top["model_note"], "remark: ok");
}
