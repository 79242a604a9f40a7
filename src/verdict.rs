//! The verdict a station receives: the model's answer, how sure it is, and where it looked.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Disposition};
use crate::model::manifest::{Grid, Manifest};
use crate::ocr::OcrRead;

/// The answer to one inspection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// The station's id for this inspection (generated when the station sent none).
    pub inspection_id: String,
    /// Which station asked.
    pub station_id: String,
    /// Model that answered.
    pub model: String,
    /// Its version.
    pub model_version: u64,
    /// Predicted label (machine name).
    pub label: String,
    /// Predicted label for operators' screens.
    pub display_label: String,
    /// True unless the predicted label is the normal class.
    pub is_defect: bool,
    /// Probability of the predicted label.
    pub confidence: f32,
    /// Probability of every label.
    pub probabilities: BTreeMap<String, f32>,
    /// Where the model looked.
    pub attention: AttentionMap,
    /// Where the time went.
    pub timings: Timings,
    /// How many requests shared the inference batch.
    pub batch_size: usize,
    /// When kensa received the request.
    pub received_at: DateTime<Utc>,
    /// Whatever the station sent along (line, lot_id, unit_position, recipe, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// What the line does with the unit, when the model has a decision rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disposition: Option<Disposition>,
    /// How the disposition was reached: thresholds, their origin, the defect class of a fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The text read on the frame, when the model reads it (its manifest has an `ocr` section
    /// and OCR is on); a frame without text gives an empty read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocr: Option<OcrRead>,
    /// The note the model saw (the station's note joined with the text read), when OCR ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_note: Option<String>,
}

/// Attention over the image patches, row-major, summing to 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttentionMap {
    /// Patches per row.
    pub width: usize,
    /// Patch rows.
    pub height: usize,
    /// `width * height` weights.
    pub values: Vec<f32>,
}

/// Milliseconds spent in each stage, written to 0.01 ms in JSON (finer digits are float noise,
/// not information).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// Waiting for a batch.
    #[serde(serialize_with = "hundredths")]
    pub queue_ms: f64,
    /// Decode, resize, tokenize.
    #[serde(serialize_with = "hundredths")]
    pub preprocess_ms: f64,
    /// The batch in the graphs.
    #[serde(serialize_with = "hundredths")]
    pub inference_ms: f64,
    /// Reading the text on the frame (part of preprocessing; absent when OCR did not run).
    #[serde(
        default,
        serialize_with = "hundredths",
        skip_serializing_if = "not_measured"
    )]
    pub ocr_ms: f64,
    /// From receipt to verdict.
    #[serde(serialize_with = "hundredths")]
    pub total_ms: f64,
}

impl Timings {
    /// Milliseconds of a duration.
    pub fn ms(duration: std::time::Duration) -> f64 {
        duration.as_secs_f64() * 1000.0
    }
}

fn not_measured(ms: &f64) -> bool {
    *ms == 0.0
}

fn hundredths<S: serde::Serializer>(ms: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((ms * 100.0).round() / 100.0)
}

/// The model-dependent part of a verdict, computed from one row of the head's output.
#[derive(Debug, Clone)]
pub struct Scores {
    /// Index of the predicted label.
    pub index: usize,
    /// Softmax of the logits divided by the temperature, in label order.
    pub probabilities: Vec<f32>,
    /// Attention renormalized to sum to 1.
    pub attention: AttentionMap,
}

impl Scores {
    /// Softmax of `logits / temperature` (1: the plain softmax; the manifest's decision
    /// section calibrates it), arg-max and attention normalization of one output row.
    pub fn from_outputs(logits: &[f32], temperature: f32, attention: &[f32], grid: Grid) -> Scores {
        let scaled: Vec<f32> = logits.iter().map(|l| l / temperature).collect();
        let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = scaled.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let probabilities: Vec<f32> = exps.iter().map(|e| e / sum).collect();
        let index = probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        let total: f32 = attention.iter().map(|v| v.max(0.0)).sum();
        let values = if total > 0.0 {
            attention.iter().map(|v| v.max(0.0) / total).collect()
        } else {
            vec![1.0 / attention.len().max(1) as f32; attention.len()]
        };
        Scores {
            index,
            probabilities,
            attention: AttentionMap {
                width: grid.width,
                height: grid.height,
                values,
            },
        }
    }

    /// The predicted label's probability.
    pub fn confidence(&self) -> f32 {
        self.probabilities.get(self.index).copied().unwrap_or(0.0)
    }

    /// Probabilities keyed by label name.
    pub fn by_label(&self, manifest: &Manifest) -> BTreeMap<String, f32> {
        manifest
            .labels
            .iter()
            .zip(&self.probabilities)
            .map(|(label, p)| (label.name.clone(), *p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_picks_the_largest_logit_and_sums_to_one() {
        let grid = Grid {
            height: 1,
            width: 2,
        };
        let scores = Scores::from_outputs(&[0.0, 3.0, 1.0], 1.0, &[1.0, 3.0], grid);
        assert_eq!(scores.index, 1);
        let sum: f32 = scores.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!((scores.confidence() - 0.8437947).abs() < 1e-5);
        assert_eq!(scores.attention.values, vec![0.25, 0.75]);
    }

    #[test]
    fn timings_are_written_to_a_hundredth_of_a_millisecond() {
        let timings = Timings {
            total_ms: 12.300000190734863,
            queue_ms: 0.004,
            ..Timings::default()
        };
        let json = serde_json::to_string(&timings).unwrap();
        assert!(json.contains("\"total_ms\":12.3"), "{json}");
        assert!(json.contains("\"queue_ms\":0.0"), "{json}");
    }

    #[test]
    fn temperature_flattens_without_changing_the_winner() {
        let grid = Grid {
            height: 1,
            width: 1,
        };
        let sharp = Scores::from_outputs(&[0.0, 3.0, 1.0], 1.0, &[1.0], grid);
        let calm = Scores::from_outputs(&[0.0, 3.0, 1.0], 2.0, &[1.0], grid);
        assert_eq!(sharp.index, calm.index);
        assert!(calm.confidence() < sharp.confidence());
        let expected = 1.0 / (1.0 + (-1.5f32).exp() + (-1.0f32).exp());
        assert!((calm.confidence() - expected).abs() < 1e-6);
    }

    #[test]
    fn degenerate_attention_becomes_uniform() {
        let grid = Grid {
            height: 2,
            width: 2,
        };
        let scores = Scores::from_outputs(&[1.0, 1.0], 1.0, &[0.0; 4], grid);
        assert_eq!(scores.attention.values, vec![0.25; 4]);
    }
}
