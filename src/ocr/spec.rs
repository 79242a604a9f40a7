//! The manifest's optional `ocr` section: which graphs read the frame, where to look, which
//! lines count, and how the text read joins the station's note. A manifest without it serves
//! as before.

use anyhow::ensure;
use serde::{Deserialize, Serialize};

use super::OcrSettings;

/// The `ocr` section of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcrSpec {
    /// Text detection graph (PP-OCR DB), relative to the model folder.
    pub detector: String,
    /// Text recognition graph (PP-OCR CRNN/SVTR with its alphabet in the `character`
    /// metadata), relative to the model folder.
    pub recogniser: String,
    /// Where the overlay is: the whole frame (default) or one box of it.
    #[serde(default)]
    pub region: OcrRegion,
    /// Lines read with less confidence are left out (0 to 1; PP-OCR's 0.5 by default).
    #[serde(default = "default_min_confidence")]
    pub min_confidence: f32,
    /// How the text read joins the station's note.
    #[serde(default)]
    pub join: NoteJoin,
    /// The frame (or region) is shrunk for detection until its longer side is at most this.
    #[serde(default = "default_max_side")]
    pub max_side: usize,
}

/// Where the reader looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OcrRegion {
    /// The whole frame.
    #[default]
    Whole,
    /// One box, in pixels of the frame as sent (cut to the frame).
    #[serde(untagged)]
    Box {
        /// Left edge.
        x: u32,
        /// Top edge.
        y: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
}

/// How the text read joins the station's note into the note the model sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoteJoin {
    /// Text read, then the station's note.
    #[default]
    Prepend,
    /// The station's note, then the text read.
    Append,
    /// The text read only when the station sent no note.
    WhenEmpty,
}

fn default_min_confidence() -> f32 {
    OcrSettings::default().min_confidence
}

fn default_max_side() -> usize {
    OcrSettings::default().max_side
}

impl OcrSpec {
    /// Checks what can be checked without the graphs.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.detector.is_empty() && !self.recogniser.is_empty(),
            "ocr.detector and ocr.recogniser name the two graphs"
        );
        ensure!(
            (0.0..=1.0).contains(&self.min_confidence),
            "ocr.min_confidence must be between 0 and 1"
        );
        ensure!(
            (32..=4096).contains(&self.max_side),
            "ocr.max_side must be between 32 and 4096"
        );
        if let OcrRegion::Box { width, height, .. } = self.region {
            ensure!(width > 0 && height > 0, "ocr.region needs a positive size");
        }
        Ok(())
    }

    /// The reader's settings: the reference's, with this section's confidence and size.
    pub fn settings(&self) -> OcrSettings {
        OcrSettings {
            min_confidence: self.min_confidence,
            max_side: self.max_side,
            ..OcrSettings::default()
        }
    }
}

impl NoteJoin {
    /// The note the model sees, from the station's note and the text read.
    pub fn join(self, note: &str, read: &str) -> String {
        let (note_trim, read_trim) = (note.trim(), read.trim());
        match self {
            _ if read_trim.is_empty() => note.to_owned(),
            NoteJoin::WhenEmpty if !note_trim.is_empty() => note.to_owned(),
            NoteJoin::WhenEmpty => read.to_owned(),
            _ if note_trim.is_empty() => read.to_owned(),
            NoteJoin::Prepend => format!("{read}; {note}"),
            NoteJoin::Append => format!("{note}; {read}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_parses_with_defaults_and_a_box() {
        let spec: OcrSpec = serde_json::from_value(serde_json::json!({
            "detector": "det.onnx", "recogniser": "rec.onnx"
        }))
        .unwrap();
        assert_eq!(spec.region, OcrRegion::Whole);
        assert_eq!(spec.join, NoteJoin::Prepend);
        assert_eq!(spec.min_confidence, 0.5);
        spec.validate().unwrap();
        let boxed: OcrSpec = serde_json::from_value(serde_json::json!({
            "detector": "d", "recogniser": "r", "join": "when-empty",
            "region": {"x": 0, "y": 0, "width": 320, "height": 64}
        }))
        .unwrap();
        assert_eq!(boxed.join, NoteJoin::WhenEmpty);
        assert_eq!(
            boxed.region,
            OcrRegion::Box {
                x: 0,
                y: 0,
                width: 320,
                height: 64
            }
        );
        let whole: OcrSpec = serde_json::from_value(serde_json::json!({
            "detector": "d", "recogniser": "r", "region": "whole"
        }))
        .unwrap();
        assert_eq!(whole.region, OcrRegion::Whole);
    }

    #[test]
    fn bad_sections_are_refused() {
        let parse = |v: serde_json::Value| serde_json::from_value::<OcrSpec>(v);
        assert!(parse(serde_json::json!({"detector": "d"})).is_err());
        assert!(
            parse(serde_json::json!({"detector": "d", "recogniser": "r", "join": "x"})).is_err()
        );
        let spec =
            parse(serde_json::json!({"detector": "d", "recogniser": "r", "min_confidence": 2.0}))
                .unwrap();
        assert!(spec.validate().is_err());
    }

    #[test]
    fn the_text_read_joins_the_note_as_asked() {
        assert_eq!(
            NoteJoin::Prepend.join("remark: ok", "LOT L1"),
            "LOT L1; remark: ok"
        );
        assert_eq!(
            NoteJoin::Append.join("remark: ok", "LOT L1"),
            "remark: ok; LOT L1"
        );
        assert_eq!(
            NoteJoin::WhenEmpty.join("remark: ok", "LOT L1"),
            "remark: ok"
        );
        assert_eq!(NoteJoin::WhenEmpty.join(" ", "LOT L1"), "LOT L1");
        assert_eq!(NoteJoin::Prepend.join("", "LOT L1"), "LOT L1");
        assert_eq!(NoteJoin::Append.join("remark: ok", ""), "remark: ok");
    }
}
