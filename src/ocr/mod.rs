//! OCR of the text AOI machines burn into their frames (unit id, measurements, call codes),
//! so a unit's numbers reach the model even when the station sends no note.
//!
//! PP-OCRv4's detection and recognition graphs (from the `rapidocr-onnxruntime` 1.4.4 wheel,
//! `scripts/setup-ocr.sh`) run through ONNX Runtime; everything around them is here and
//! follows the Python reference (`rapidocr_onnxruntime.RapidOCR`, no angle classifier), proven
//! by `tests/ocr.rs` on the fixtures of `models/pipeline/kensa_pipeline/ocr_fixtures.py`:
//! [`raster`] (OpenCV's resize and perspective crop), [`db`] (boxes from the probability
//! map), [`geometry`], [`ctc`] (alphabet and greedy decoding) and [`reader`] (the sessions).

pub mod ctc;
pub mod db;
pub mod geometry;
pub mod raster;
pub mod reader;
pub mod spec;

use serde::{Deserialize, Serialize};

pub use raster::Bgr;
pub use reader::OcrReader;

/// One line of text read on a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcrLine {
    /// The characters read.
    pub text: String,
    /// Mean probability of the characters (0 to 1).
    pub confidence: f32,
    /// Corners in frame pixels: top-left, top-right, bottom-right, bottom-left.
    #[serde(rename = "box")]
    pub bounds: [[f32; 2]; 4],
}

/// What the reader found on one frame: every line kept, and their text joined.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OcrRead {
    /// The lines' text in reading order, one line each, joined by line breaks.
    pub text: String,
    /// Each line with its box and confidence.
    pub lines: Vec<OcrLine>,
}

impl OcrRead {
    /// The read made of `lines`.
    pub fn from_lines(lines: Vec<OcrLine>) -> OcrRead {
        let text = lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        OcrRead { text, lines }
    }
}

/// Knobs of the reader; the defaults are the Python reference's, so both read the same.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OcrSettings {
    /// Frames are shrunk for detection until their longer side is at most this.
    pub max_side: usize,
    /// Detector probability above which a pixel is text.
    pub threshold: f32,
    /// Mean probability a box needs to be kept.
    pub box_threshold: f32,
    /// How far boxes grow around the detected text (DB's unclip ratio).
    pub unclip_ratio: f32,
    /// Lines recognised with less confidence are dropped.
    pub min_confidence: f32,
    /// Lines recognised in one run of the recogniser.
    pub batch: usize,
}

impl Default for OcrSettings {
    fn default() -> Self {
        OcrSettings {
            max_side: 960,
            threshold: 0.3,
            box_threshold: 0.5,
            unclip_ratio: 1.6,
            min_confidence: 0.5,
            batch: 6,
        }
    }
}

/// Reads the text inside `region` of `image`, boxes in pixels of the whole frame. Blocking.
pub fn read_frame(
    reader: &OcrReader,
    region: spec::OcrRegion,
    image: &::image::DynamicImage,
) -> Result<OcrRead, crate::error::Error> {
    let frame = Bgr::from_image(image);
    let (frame, dx, dy) = match region {
        spec::OcrRegion::Whole => (frame, 0.0, 0.0),
        spec::OcrRegion::Box {
            x,
            y,
            width,
            height,
        } => (
            frame.crop(x as usize, y as usize, width as usize, height as usize),
            x as f32,
            y as f32,
        ),
    };
    let mut lines = reader.read(&frame)?;
    for line in &mut lines {
        for corner in &mut line.bounds {
            corner[0] += dx;
            corner[1] += dy;
        }
    }
    Ok(OcrRead::from_lines(lines))
}
