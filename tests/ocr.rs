//! Parity of the service's OCR reader (`src/ocr`) with the Python reference
//! (`rapidocr_onnxruntime` 1.4.4) on the fixtures written by
//! `python -m kensa_pipeline.ocr_fixtures --out tests/fixtures/ocr [--reader overlay]`: the
//! same lines in the same order, the same text exactly, every corner within 2 px, for both
//! readers: PP-OCRv4 (graphs from `scripts/setup-ocr.sh`, which scripts/test.sh runs) and the
//! overlay-font reader committed in `models/ocr-overlay`.

use std::path::{Path, PathBuf};

use kensa::model::runtime::{Runtime, RuntimeOptions};
use kensa::ocr::{Bgr, OcrReader, OcrSettings};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    image: String,
    lines: Vec<Line>,
}

#[derive(Deserialize)]
struct Line {
    text: String,
    confidence: f32,
    #[serde(rename = "box")]
    bounds: [[f32; 2]; 4],
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The reader on the CPU with the PP-OCRv4 graphs from `.ocr/`.
pub fn reader(settings: OcrSettings) -> OcrReader {
    let dir = root().join(".ocr");
    let det = dir.join("ch_PP-OCRv4_det_infer.onnx");
    let rec = dir.join("ch_PP-OCRv4_rec_infer.onnx");
    assert!(
        det.exists() && rec.exists(),
        "run scripts/setup-ocr.sh first"
    );
    open(&det, &rec, settings)
}

/// The reader on the CPU with the overlay-font graphs from `models/ocr-overlay`.
fn overlay_reader() -> OcrReader {
    let dir = root().join("models/ocr-overlay");
    open(
        &dir.join("detector.onnx"),
        &dir.join("recogniser.onnx"),
        OcrSettings::default(),
    )
}

fn open(det: &Path, rec: &Path, settings: OcrSettings) -> OcrReader {
    let runtime =
        Runtime::init(&RuntimeOptions::cpu(1)).expect("ONNX Runtime (scripts/setup-ort.sh)");
    OcrReader::open(runtime, det, rec, 1, 1, settings).expect("OCR graphs open")
}

fn frame(path: &Path) -> Bgr {
    Bgr::from_image(&image::open(path).expect("fixture image"))
}

fn expected(file: &str) -> Expected {
    let text = std::fs::read_to_string(root().join("tests/fixtures/ocr").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let expected: Expected = serde_json::from_str(&text).expect("expected JSON");
    assert!(
        expected.cases.iter().any(|c| c.lines.is_empty()),
        "a frame without text"
    );
    assert!(
        expected.cases.iter().any(|c| c.lines.len() >= 2),
        "frames with several lines"
    );
    expected
}

/// Reads every fixture with `reader` and checks it against the reference's lines.
fn check_parity(reader: &OcrReader, expected: &Expected) {
    let dir = root().join("tests/fixtures/ocr");
    let mut worst = 0.0f32;
    for case in &expected.cases {
        let lines = reader.read(&frame(&dir.join(&case.image))).expect("read");
        let got: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        let want: Vec<&str> = case.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(got, want, "{}: texts", case.image);
        for (line, reference) in lines.iter().zip(&case.lines) {
            for (corner, (a, b)) in line.bounds.iter().zip(&reference.bounds).enumerate() {
                let off = (a[0] - b[0]).abs().max((a[1] - b[1]).abs());
                worst = worst.max(off);
                assert!(
                    off <= 2.0,
                    "{} {:?}: corner {corner} at {a:?}, reference {b:?}",
                    case.image,
                    line.text
                );
            }
            assert!(
                (line.confidence - reference.confidence).abs() < 0.02,
                "{} {:?}: confidence {} vs {}",
                case.image,
                line.text,
                line.confidence,
                reference.confidence
            );
        }
    }
    eprintln!("largest corner offset from the reference: {worst} px");
}

#[test]
fn reads_what_the_python_reference_reads() {
    check_parity(&reader(OcrSettings::default()), &expected("expected.json"));
}

#[test]
fn the_overlay_reader_reads_what_the_python_reference_reads() {
    check_parity(&overlay_reader(), &expected("expected-overlay.json"));
}

#[test]
fn a_frame_too_small_to_hold_text_reads_nothing() {
    let reader = reader(OcrSettings::default());
    let tiny = Bgr {
        width: 8,
        height: 8,
        data: vec![128; 8 * 8 * 3],
    };
    assert!(reader.read(&tiny).expect("read").is_empty());
}
