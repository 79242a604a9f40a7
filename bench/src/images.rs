//! Realistic inputs: AOI-like grayscale JPEGs at station frame sizes with notes of realistic
//! length, written once and reused, and loading whatever images a run is pointed at.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use image::codecs::jpeg::JpegEncoder;
use image::{GrayImage, Luma};

/// Station frame sizes the bench generates: a small camera, and 5 and 12 megapixel frames.
pub const FRAME_SIZES: [(u32, u32); 3] = [(640, 640), (2448, 2048), (4096, 3072)];

/// Frames of each size written by `--make-images`.
const FRAMES_PER_SIZE: usize = 8;

/// JPEG quality of the generated frames (what AOI cameras commonly save).
const JPEG_QUALITY: u8 = 90;

/// One image and note to send.
pub struct Sample {
    /// The encoded image file.
    pub image: Vec<u8>,
    /// The note sent with it.
    pub note: String,
    /// File name, for multipart.
    pub name: String,
}

/// The folder of one frame size under `root`.
pub fn size_dir(root: &Path, (width, height): (u32, u32)) -> PathBuf {
    root.join(format!("{width}x{height}"))
}

/// Writes `FRAMES_PER_SIZE` frames of every size in [`FRAME_SIZES`] under `root`, each size in
/// its own folder with a `samples.jsonl` of image and note; sizes already there are kept.
pub fn make_images(root: &Path) -> anyhow::Result<()> {
    for size in FRAME_SIZES {
        let dir = size_dir(root, size);
        if dir.join("samples.jsonl").is_file() {
            continue;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut lines = String::new();
        for index in 0..FRAMES_PER_SIZE {
            let name = format!("frame_{index}.jpg");
            let frame = aoi_frame(size, index as u64);
            let mut bytes = Vec::new();
            JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY).encode_image(&frame)?;
            std::fs::write(dir.join(&name), &bytes)?;
            let line = serde_json::json!({"image": name, "note": note(index as u64, 200)});
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        std::fs::write(dir.join("samples.jsonl"), lines)?;
        println!(
            "kensa-bench: wrote {FRAMES_PER_SIZE} frames to {}",
            dir.display()
        );
    }
    Ok(())
}

/// A deterministic AOI-like frame: a substrate lit unevenly, a grid of vias (dark rings with a
/// lighter floor), the occasional defect (a void or residue blob), and sensor noise.
fn aoi_frame((width, height): (u32, u32), seed: u64) -> GrayImage {
    let mut random = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let pitch = (width.min(height) / 8).max(16) as f32;
    let radius = pitch * 0.3;
    let (w, h) = (width as f32, height as f32);
    let defect = (
        pitch * (1.5 + (random.next() % 5) as f32),
        pitch * (1.5 + (random.next() % 5) as f32),
    );
    GrayImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let light = 0.42 + 0.12 * (fx / w) - 0.08 * (fy / h);
        let (cx, cy) = (
            (fx / pitch).floor() * pitch + pitch / 2.0,
            (fy / pitch).floor() * pitch + pitch / 2.0,
        );
        let r = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
        let via = if r < radius * 0.8 {
            0.18
        } else if r < radius {
            -0.25
        } else {
            0.0
        };
        let blob = if ((fx - defect.0).powi(2) + (fy - defect.1).powi(2)).sqrt() < radius * 0.4 {
            -0.2
        } else {
            0.0
        };
        let noise = random.gaussian() * 0.012;
        let value = (light + via + blob + noise).clamp(0.0, 1.0);
        Luma([(value * 255.0).round() as u8])
    })
}

/// A note of `chars` characters like those AOI machines record: lot, strip, unit, via,
/// measurements, then a remark padded with operator words.
pub fn note(seed: u64, chars: usize) -> String {
    let mut random = XorShift(seed.wrapping_add(7) | 1);
    let mut note = format!(
        "lot L24{:02}-{:02} strip {} unit R{}C{:02} via {}-{}; dia {}.{}um, depth {}.{}um, \
         offset {}.{}um; aoi call: DEPTH_HI; remark:",
        random.next() % 60,
        random.next() % 20,
        random.next() % 24,
        random.next() % 9,
        random.next() % 16,
        random.next() % 6,
        random.next() % 6,
        50 + random.next() % 20,
        random.next() % 10,
        30 + random.next() % 20,
        random.next() % 10,
        random.next() % 12,
        random.next() % 10,
    );
    const WORDS: [&str; 8] = [
        "re-inspect",
        "hole",
        "looks",
        "big",
        "residue",
        "near",
        "rim",
        "operator",
    ];
    while note.chars().count() < chars {
        note.push(' ');
        note.push_str(WORDS[(random.next() % WORDS.len() as u64) as usize]);
    }
    note.chars().take(chars).collect()
}

/// Reads a folder (recursively, PNG/JPEG/BMP/TIFF) or a `samples.jsonl`; `note_chars` replaces
/// every note with one of that many characters.
pub fn load_samples(source: &Path, note_chars: Option<usize>) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    if source.is_file() {
        let base = source.parent().unwrap_or(Path::new("."));
        let text = std::fs::read_to_string(source)
            .with_context(|| format!("cannot read {}", source.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)?;
            let image = value["image"]
                .as_str()
                .context("a sample line has no image")?;
            let path = base.join(image);
            samples.push(Sample {
                image: std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                note: value["note"].as_str().unwrap_or_default().to_string(),
                name: image.to_string(),
            });
        }
    } else {
        let mut stack = vec![source.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if is_image(&path) {
                    samples.push(Sample {
                        image: std::fs::read(&path)?,
                        note: String::new(),
                        name: path.display().to_string(),
                    });
                }
            }
        }
        samples.sort_by(|a, b| a.name.cmp(&b.name));
    }
    if samples.is_empty() {
        bail!("no images found in {}", source.display());
    }
    if let Some(chars) = note_chars {
        for (index, sample) in samples.iter_mut().enumerate() {
            sample.note = note(index as u64, chars);
        }
    }
    Ok(samples)
}

fn is_image(path: &Path) -> bool {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(
        extension.as_str(),
        "png" | "jpg" | "jpeg" | "bmp" | "tif" | "tiff"
    )
}

/// A small deterministic generator, so the same frames come out on every machine.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Roughly normal: the sum of four uniforms, centred and scaled to unit variance.
    fn gaussian(&mut self) -> f32 {
        let sum: f32 = (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum();
        (sum - 2.0) * 1.732
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_have_the_length_asked_for() {
        for chars in [0, 200, 4096] {
            assert_eq!(note(3, chars).chars().count(), chars);
        }
        assert!(note(3, 200).starts_with("lot L24"));
    }

    #[test]
    fn frames_are_deterministic() {
        assert_eq!(aoi_frame((64, 48), 1), aoi_frame((64, 48), 1));
        assert_ne!(aoi_frame((64, 48), 1), aoi_frame((64, 48), 2));
    }
}
