//! The hot functions of one request, timed in isolation so a regression shows up as a diff of
//! numbers: decode + preprocess per frame size, tokenize, batch assembly, verdict JSON, and
//! reading a frame's overlay with the committed overlay-font reader (its graphs included).
//!
//! `cargo bench --bench hot` runs them; CI only builds them (timings need a quiet machine).

use std::path::{Path, PathBuf};

use chrono::Utc;
use kensa::batching::BatchInput;
use kensa::model::manifest::Manifest;
use kensa::model::runtime::{Runtime, RuntimeOptions};
use kensa::ocr::{Bgr, OcrReader, OcrSettings};
use kensa::preprocess::image::{ImageLimits, prepare_image};
use kensa::preprocess::text::NoteTokenizer;
use kensa::verdict::{Scores, Timings, Verdict};

fn main() {
    divan::main();
}

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
}

fn manifest() -> Manifest {
    Manifest::load(&demo()).expect("demo manifest")
}

const LIMITS: ImageLimits = ImageLimits {
    max_bytes: usize::MAX,
    max_pixels: u64::MAX,
};

/// A note as long as AOI machines write them (about 200 characters).
const NOTE: &str = "lot L2438-12 strip 5 unit R2C03 via 1-3; dia 53.6um, depth 48.6um, offset 0.1um; \
                    aoi call: DEPTH_HI; remark: re-inspect, hole looks big near the rim, operator \
                    review requested";

/// Decode, resize and normalise one grayscale JPEG frame to the demo model's input.
#[divan::bench(args = ["640x640", "2448x2048", "4096x3072"])]
fn decode_and_preprocess(bencher: divan::Bencher, frame: &str) {
    let file = demo().join(format!("fixtures/preprocess/frame_{frame}.jpg"));
    let bytes = std::fs::read(&file).expect("frame fixture");
    let spec = manifest().image;
    bencher.bench(|| prepare_image(divan::black_box(&bytes), &spec, &LIMITS).expect("decodes"));
}

#[divan::bench]
fn tokenize(bencher: divan::Bencher) {
    let manifest = manifest();
    let tokenizer =
        NoteTokenizer::load(&demo().join(&manifest.text.tokenizer), &manifest.text).expect("tok");
    bencher.bench(|| tokenizer.encode(divan::black_box(NOTE)).expect("encodes"));
}

/// Stacking 16 prepared requests into a batch's reused buffers.
#[divan::bench]
fn batch_assembly(bencher: divan::Bencher) {
    let manifest = manifest();
    let image = &manifest.image;
    let pixels = vec![0.5f32; image.channels * image.height as usize * image.width as usize];
    let note: Vec<i64> = (0..48).collect();
    let images: Vec<&[f32]> = vec![pixels.as_slice(); 16];
    let notes: Vec<&[i64]> = vec![note.as_slice(); 16];
    let mut batch = BatchInput::default();
    bencher.bench_local(|| batch.refill(divan::black_box(&images), &notes, 0, 16));
}

/// Softmax, verdict and its JSON, as answered for every request.
#[divan::bench]
fn verdict_json(bencher: divan::Bencher) {
    let manifest = manifest();
    let logits = [0.1f32, 2.5, -1.0, 0.3, 0.7];
    let attention: Vec<f32> = (0..49).map(|i| i as f32 / 49.0).collect();
    bencher.bench(|| {
        let scores = Scores::from_outputs(&logits, 1.0, &attention, manifest.attention_grid);
        let label = &manifest.labels[scores.index];
        let verdict = Verdict {
            inspection_id: "L2438-12-S5-R2C03".into(),
            station_id: "aoi-07".into(),
            model: manifest.name.clone(),
            model_version: manifest.version,
            label: label.name.clone(),
            display_label: label.display_name.clone(),
            is_defect: !label.is_normal,
            confidence: scores.confidence(),
            probabilities: scores.by_label(&manifest),
            attention: scores.attention,
            timings: Timings::default(),
            batch_size: 8,
            received_at: Utc::now(),
            metadata: [("line".to_string(), "L3".to_string())].into(),
            disposition: None,
            decision: None,
            ocr: None,
            model_note: None,
        };
        serde_json::to_vec(&verdict).expect("serialises")
    });
}

/// One read of a two-line overlay on a 320x240 frame (`tests/fixtures/ocr/two_lines.png`) with
/// `models/ocr-overlay`, one thread: detection, crops, recognition and decoding.
#[divan::bench]
fn ocr_read_overlay(bencher: divan::Bencher) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let runtime =
        Runtime::init(&RuntimeOptions::cpu(1)).expect("ONNX Runtime (scripts/setup-ort.sh)");
    let graphs = root.join("models/ocr-overlay");
    let reader = OcrReader::open(
        runtime,
        &graphs.join("detector.onnx"),
        &graphs.join("recogniser.onnx"),
        1,
        1,
        OcrSettings::default(),
    )
    .expect("overlay reader");
    let image = image::open(root.join("tests/fixtures/ocr/two_lines.png")).expect("fixture");
    let frame = Bgr::from_image(&image);
    bencher.bench_local(|| reader.read(divan::black_box(&frame)).expect("reads"));
}
