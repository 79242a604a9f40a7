//! The reader: PP-OCR detection and recognition through ONNX Runtime on one frame. Blocking
//! (callers run it on a blocking thread); sessions come from a small pool, since
//! `Session::run` needs `&mut`.

use std::path::Path;
use std::sync::{Condvar, Mutex};

use anyhow::{Context, anyhow, bail};
use ort::session::Session;
use ort::value::{TensorRef, ValueType};

use super::ctc::Alphabet;
use super::db::{DbParams, boxes_from_map};
use super::geometry::{Point, distance, order_corners};
use super::raster::Bgr;
use super::{OcrLine, OcrSettings};
use crate::error::Error;
use crate::model::profile::OptimizationProfile;
use crate::model::runtime::{Provider, Runtime};

/// The recogniser's narrowest input, in units of its height (PP-OCR: 320 / 48).
const MIN_WIDTH_RATIO: f64 = 320.0 / 48.0;
/// A crop this much taller than wide is a vertical line and is turned (PP-OCR's rule).
const TALL_RATIO: f64 = 1.5;
/// Detection input sides are multiples of this.
const STRIDE: f64 = 32.0;

/// One detection and one recognition session.
struct Sessions {
    detector: Session,
    recogniser: Session,
}

/// Reads the text printed on frames with PP-OCR's detection and recognition graphs.
pub struct OcrReader {
    pool: Mutex<Vec<Sessions>>,
    freed: Condvar,
    alphabet: Alphabet,
    height: usize,
    settings: OcrSettings,
    provider: Provider,
}

impl std::fmt::Debug for OcrReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OcrReader")
            .field("height", &self.height)
            .field("classes", &self.alphabet.len())
            .field("settings", &self.settings)
            .field("provider", &self.provider)
            .finish()
    }
}

impl OcrReader {
    /// Opens `sets` pairs of sessions for the two graphs on the runtime's provider and reads
    /// the alphabet from the recogniser's metadata (`character`).
    pub fn open(
        runtime: &Runtime,
        detector: &Path,
        recogniser: &Path,
        sets: usize,
        intra_threads: usize,
        settings: OcrSettings,
    ) -> anyhow::Result<OcrReader> {
        let profile = OptimizationProfile::default();
        let mut pool = Vec::with_capacity(sets.max(1));
        let mut alphabet = None;
        let mut height = 48;
        let mut provider = Provider::Cpu;
        for _ in 0..sets.max(1) {
            let (det, det_provider) = runtime.open(detector, intra_threads, &profile)?;
            let (rec, _) = runtime.open(recogniser, intra_threads, &profile)?;
            provider = det_provider;
            if alphabet.is_none() {
                let character = rec
                    .metadata()
                    .map_err(|e| anyhow!("{e}"))?
                    .custom("character")
                    .with_context(|| {
                        format!("{} has no `character` metadata", recogniser.display())
                    })?;
                let found = Alphabet::from_metadata(&character);
                check_recogniser(&rec, &found, &mut height).with_context(|| {
                    format!("{} is not a PP-OCR recogniser", recogniser.display())
                })?;
                alphabet = Some(found);
            }
            pool.push(Sessions {
                detector: det,
                recogniser: rec,
            });
        }
        let alphabet = alphabet.context("no recogniser session")?;
        Ok(OcrReader {
            pool: Mutex::new(pool),
            freed: Condvar::new(),
            alphabet,
            height,
            settings,
            provider,
        })
    }

    /// The provider the graphs run on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The lines printed on `frame`, top to bottom and left to right; lines under the
    /// minimum confidence are left out; a frame without text gives none. Blocking.
    pub fn read(&self, frame: &Bgr) -> Result<Vec<OcrLine>, Error> {
        let mut sessions = self.take()?;
        let result = self.read_with(&mut sessions, frame);
        self.give_back(sessions);
        result
    }

    fn take(&self) -> Result<Sessions, Error> {
        let poisoned = |_| Error::Internal("OCR session pool poisoned".into());
        let mut pool = self.pool.lock().map_err(poisoned)?;
        loop {
            if let Some(sessions) = pool.pop() {
                return Ok(sessions);
            }
            pool = self.freed.wait(pool).map_err(poisoned)?;
        }
    }

    fn give_back(&self, sessions: Sessions) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(sessions);
            self.freed.notify_one();
        }
    }

    fn read_with(&self, sessions: &mut Sessions, frame: &Bgr) -> Result<Vec<OcrLine>, Error> {
        if frame.width == 0 || frame.height == 0 {
            return Ok(Vec::new());
        }
        let boxes = self.detect(&mut sessions.detector, frame)?;
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let crops: Vec<Bgr> = boxes.iter().map(|b| crop_line(frame, b)).collect();
        let decoded = self.recognise(&mut sessions.recogniser, &crops)?;
        let minimum = self.settings.min_confidence;
        Ok(boxes
            .into_iter()
            .zip(decoded)
            .filter(|(_, line)| line.confidence >= minimum)
            .map(|(corners, line)| OcrLine {
                text: line.text,
                confidence: line.confidence,
                bounds: corners.map(|[x, y]| [x as f32, y as f32]),
            })
            .collect())
    }

    /// Text boxes on `frame`, sorted into reading order.
    fn detect(&self, session: &mut Session, frame: &Bgr) -> Result<Vec<[Point; 4]>, Error> {
        let Some((width, height)) = detector_size(frame, self.settings.max_side) else {
            return Ok(Vec::new());
        };
        let resized = frame.resize_linear(width, height);
        let plane = width * height;
        let mut input = vec![0f32; 3 * plane];
        for (i, pixel) in resized.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                input[c * plane + i] = (f32::from(pixel[c]) / 255.0 - 0.5) / 0.5;
            }
        }
        let tensor = TensorRef::from_array_view(([1usize, 3, height, width], input.as_slice()))
            .map_err(inference)?;
        let outputs = session.run(ort::inputs![tensor]).map_err(inference)?;
        let (_, map) = outputs[0].try_extract_tensor::<f32>().map_err(inference)?;
        if map.len() != plane {
            return Err(Error::Inference(format!(
                "text detector gave {} values for a {width}x{height} input",
                map.len()
            )));
        }
        let params = DbParams {
            threshold: self.settings.threshold,
            box_threshold: self.settings.box_threshold,
            unclip_ratio: self.settings.unclip_ratio,
            ..DbParams::default()
        };
        let found = boxes_from_map(map, (width, height), (frame.width, frame.height), &params);
        let mut kept: Vec<[Point; 4]> = found
            .iter()
            .map(|corners| clip_box(corners, frame.width, frame.height))
            .filter(|b| distance(b[0], b[1]) as i64 > 3 && distance(b[0], b[3]) as i64 > 3)
            .collect();
        reading_order(&mut kept);
        Ok(kept)
    }

    /// Recognises `crops` in batches of similar width (PP-OCR's arrangement, so each line sees
    /// the same padding as in the reference).
    fn recognise(
        &self,
        session: &mut Session,
        crops: &[Bgr],
    ) -> Result<Vec<super::ctc::Decoded>, Error> {
        let ratio = |c: &Bgr| c.width as f64 / c.height as f64;
        let mut order: Vec<usize> = (0..crops.len()).collect();
        order.sort_by(|&a, &b| ratio(&crops[a]).total_cmp(&ratio(&crops[b])));
        let mut out = vec![None; crops.len()];
        let height = self.height;
        for chunk in order.chunks(self.settings.batch.max(1)) {
            let widest = chunk
                .iter()
                .map(|&i| ratio(&crops[i]))
                .fold(MIN_WIDTH_RATIO, f64::max);
            let width = (height as f64 * widest) as usize;
            let plane = height * width;
            let mut input = vec![0f32; chunk.len() * 3 * plane];
            for (row, &i) in chunk.iter().enumerate() {
                let crop = &crops[i];
                let fitted = ((height as f64 * ratio(crop)).ceil() as usize).clamp(1, width);
                let resized = crop.resize_linear(fitted, height);
                let base = row * 3 * plane;
                for y in 0..height {
                    for x in 0..fitted {
                        let pixel = &resized.data[(y * fitted + x) * 3..(y * fitted + x) * 3 + 3];
                        for c in 0..3 {
                            input[base + c * plane + y * width + x] =
                                (f32::from(pixel[c]) / 255.0 - 0.5) / 0.5;
                        }
                    }
                }
            }
            let shape = [chunk.len(), 3, height, width];
            let tensor =
                TensorRef::from_array_view((shape, input.as_slice())).map_err(inference)?;
            let outputs = session.run(ort::inputs![tensor]).map_err(inference)?;
            let (dims, scores) = outputs[0].try_extract_tensor::<f32>().map_err(inference)?;
            let classes = self.alphabet.len();
            if dims.len() != 3 || dims[0] as usize != chunk.len() || dims[2] as usize != classes {
                return Err(Error::Inference(format!(
                    "text recogniser gave shape {dims:?} for {} lines and {classes} classes",
                    chunk.len()
                )));
            }
            let per_line = scores.len() / chunk.len();
            for (row, &i) in chunk.iter().enumerate() {
                let line = &scores[row * per_line..(row + 1) * per_line];
                out[i] = Some(self.alphabet.decode(line, classes));
            }
        }
        out.into_iter()
            .map(|d| d.ok_or_else(|| Error::Internal("a text line was not recognised".into())))
            .collect()
    }
}

/// The detector's input size: at most `max_side` on the longer side, each side rounded to a
/// multiple of 32 (halves to even, as Python's `round`); `None` when a side rounds to zero.
pub fn detector_size(frame: &Bgr, max_side: usize) -> Option<(usize, usize)> {
    let (w, h) = (frame.width as f64, frame.height as f64);
    let longer = w.max(h);
    let ratio = if longer > max_side as f64 {
        max_side as f64 / longer
    } else {
        1.0
    };
    let fit = |side: f64| ((side * ratio).trunc() / STRIDE).round_ties_even() * STRIDE;
    let (width, height) = (fit(w), fit(h));
    (width > 0.0 && height > 0.0).then_some((width as usize, height as usize))
}

/// Corners ordered and cut to whole pixels inside the frame (PP-OCR's `clip_det_res`).
fn clip_box(corners: &[Point; 4], width: usize, height: usize) -> [Point; 4] {
    order_corners(corners).map(|[x, y]| {
        [
            x.clamp(0.0, width as f64 - 1.0).trunc(),
            y.clamp(0.0, height as f64 - 1.0).trunc(),
        ]
    })
}

/// Top to bottom, then left to right within lines whose tops are within 10 pixels (PP-OCR's
/// `sorted_boxes`).
fn reading_order(boxes: &mut [[Point; 4]]) {
    boxes.sort_by(|a, b| {
        a[0][1]
            .total_cmp(&b[0][1])
            .then(a[0][0].total_cmp(&b[0][0]))
    });
    for i in 0..boxes.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            if (boxes[j + 1][0][1] - boxes[j][0][1]).abs() < 10.0
                && boxes[j + 1][0][0] < boxes[j][0][0]
            {
                boxes.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

/// The line inside `corners`, straightened to a rectangle and turned when it stands upright.
fn crop_line(frame: &Bgr, corners: &[Point; 4]) -> Bgr {
    let [a, b, c, d] = *corners;
    let width = distance(a, b).max(distance(c, d)) as usize;
    let height = distance(a, d).max(distance(b, c)) as usize;
    let quad = corners.map(|[x, y]| [x as f32, y as f32]);
    let crop = frame.warp_quad(&quad, width.max(1), height.max(1));
    if crop.height as f64 / crop.width as f64 >= TALL_RATIO {
        crop.rotate_ccw()
    } else {
        crop
    }
}

/// Checks the recogniser's input (N x 3 x H x W, H fixed or 48) and that its classes match the
/// alphabet.
fn check_recogniser(
    session: &Session,
    alphabet: &Alphabet,
    height: &mut usize,
) -> anyhow::Result<()> {
    let (Some(input), Some(output)) = (session.inputs().first(), session.outputs().first()) else {
        bail!("it needs one input and one output");
    };
    if let ValueType::Tensor { shape, .. } = input.dtype() {
        if shape.len() != 4 || shape[1] != 3 {
            bail!("its input is {shape:?}, not N x 3 x H x W");
        }
        if shape[2] > 0 {
            *height = shape[2] as usize;
        }
    }
    if let ValueType::Tensor { shape, .. } = output.dtype()
        && let Some(&classes) = shape.last()
        && classes > 0
        && classes as usize != alphabet.len()
    {
        bail!(
            "it scores {classes} classes, its `character` metadata makes {}",
            alphabet.len()
        );
    }
    Ok(())
}

fn inference(error: ort::Error) -> Error {
    Error::Inference(format!("OCR: {error}"))
}
