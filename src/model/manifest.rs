//! The model manifest: the contract between the training pipeline (`models/pipeline`) and the
//! service. Its schema is documented in `models/README.md`; this module parses it and checks
//! everything that can be checked without opening the ONNX graphs.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::decision::DecisionSpec;
use crate::drift::ValidationDistribution;
use crate::ocr::spec::OcrSpec;

/// The schema version this service understands.
pub const SCHEMA_VERSION: u32 = 1;

/// The parsed `manifest.json` of one model version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema version; must equal [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Model name, as clients address it.
    pub name: String,
    /// Model version, as written by the pipeline.
    pub version: u64,
    /// Free text shown in `/v1/models`.
    #[serde(default)]
    pub description: String,
    /// When the pipeline wrote the model.
    #[serde(default)]
    pub created_at: String,
    /// Labels in logits order.
    pub labels: Vec<Label>,
    /// How images are prepared for the vision graph.
    pub image: ImageSpec,
    /// How notes are prepared for the text graph.
    pub text: TextSpec,
    /// The largest batch the graphs were exported and warmed up for.
    pub max_batch_size: usize,
    /// Shape of the attention map over image patches.
    pub attention_grid: Grid,
    /// The three graphs and their tensors.
    pub graphs: Graphs,
    /// Held-out metrics from training, passed through to clients.
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// Where the model came from, passed through to clients.
    #[serde(default)]
    pub provenance: serde_json::Value,
    /// Calibration and operating point (pass / fail / review); absent: arg-max verdicts only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionSpec>,
    /// What validation predictions looked like, for the drift gauges; absent: no drift gauge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_distribution: Option<ValidationDistribution>,
    /// Reading the text burnt into frames (graphs, region, how it joins the note); absent:
    /// the model sees the station's note only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocr: Option<OcrSpec>,
}

/// One class the head can output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Label {
    /// Machine name, used in verdicts and metrics.
    pub name: String,
    /// Name for operators' screens.
    pub display_name: String,
    /// True for the one "no defect" class.
    pub is_normal: bool,
}

/// Colour handling before resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// One channel, luma 0.299 R + 0.587 G + 0.114 B.
    Gray,
    /// Three channels; gray images are replicated.
    Rgb,
}

/// Resize filter; only Pillow-style antialiased bilinear is defined so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Pillow's BILINEAR convolution on float32, stretching to the target size.
    Bilinear,
}

/// Image preprocessing exactly as training did it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Target height in pixels.
    pub height: u32,
    /// Target width in pixels.
    pub width: u32,
    /// 1 (gray) or 3 (rgb).
    pub channels: usize,
    /// Colour conversion.
    pub color: ColorMode,
    /// Resize filter.
    pub resize: ResizeMode,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel divisor applied after the mean.
    pub std: Vec<f32>,
}

/// Note preprocessing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextSpec {
    /// The tokenizer file, relative to the model folder.
    pub tokenizer: String,
    /// Notes are truncated to this many tokens, special tokens included.
    pub max_tokens: usize,
    /// Token id used to pad a batch to its longest note.
    pub pad_id: u32,
}

/// A two-dimensional size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grid {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// The three graphs of a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Graphs {
    /// Image tower.
    pub vision: Graph,
    /// Note tower.
    pub text: Graph,
    /// PFA projections, CMAF fusion and classifier.
    pub head: Graph,
}

/// One ONNX file and the tensors it must expose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Graph {
    /// File name relative to the model folder.
    pub file: String,
    /// Expected inputs.
    pub inputs: Vec<TensorSpec>,
    /// Expected outputs.
    pub outputs: Vec<TensorSpec>,
}

/// Element type of a tensor, as the manifest spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    Float32,
    /// 64-bit signed integer.
    Int64,
}

/// A dimension: fixed, or named and dynamic ("batch", "tokens").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A dynamic axis.
    Dynamic(String),
}

/// Name, element type and shape of one tensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; dynamic axes by name.
    pub shape: Vec<Dim>,
}

/// The tensor names the service feeds and reads, fixed by the contract.
pub mod names {
    /// Vision input.
    pub const PIXEL_VALUES: &str = "pixel_values";
    /// Vision output: per-patch features.
    pub const PATCH_TOKENS: &str = "patch_tokens";
    /// Vision output: pooled image feature.
    pub const POOLED: &str = "pooled";
    /// Text input: token ids.
    pub const INPUT_IDS: &str = "input_ids";
    /// Text and head input: 1 for real tokens, 0 for padding.
    pub const ATTENTION_MASK: &str = "attention_mask";
    /// Text output: per-token features.
    pub const TOKEN_STATES: &str = "token_states";
    /// Head output: class scores.
    pub const LOGITS: &str = "logits";
    /// Head output: attention over image patches.
    pub const ATTENTION: &str = "attention";
}

impl Manifest {
    /// Reads and validates `manifest.json` in `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid manifest", path.display()))?;
        manifest
            .validate()
            .with_context(|| format!("{} is inconsistent", path.display()))?;
        Ok(manifest)
    }

    /// Checks the manifest against itself and against the tensor contract.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.schema_version == SCHEMA_VERSION,
            "schema_version is {}, this kensa reads {}",
            self.schema_version,
            SCHEMA_VERSION
        );
        ensure!(!self.name.is_empty(), "name is empty");
        ensure!(self.labels.len() >= 2, "needs at least two labels");
        let normals = self.labels.iter().filter(|l| l.is_normal).count();
        ensure!(
            normals == 1,
            "exactly one label must be is_normal, found {normals}"
        );
        let mut seen = HashSet::new();
        for label in &self.labels {
            ensure!(
                seen.insert(&label.name),
                "label {:?} appears twice",
                label.name
            );
        }
        let image = &self.image;
        ensure!(
            image.height > 0 && image.width > 0,
            "image size must be positive"
        );
        let expected_channels = match image.color {
            ColorMode::Gray => 1,
            ColorMode::Rgb => 3,
        };
        ensure!(
            image.channels == expected_channels,
            "image.color {:?} needs {expected_channels} channels, manifest says {}",
            image.color,
            image.channels
        );
        ensure!(
            image.mean.len() == image.channels && image.std.len() == image.channels,
            "image.mean and image.std need one value per channel"
        );
        ensure!(
            image.std.iter().all(|s| *s > 0.0),
            "image.std must be positive"
        );
        ensure!(
            self.text.max_tokens >= 2,
            "text.max_tokens must be at least 2"
        );
        ensure!(
            self.max_batch_size >= 1,
            "max_batch_size must be at least 1"
        );
        ensure!(
            self.attention_grid.height > 0 && self.attention_grid.width > 0,
            "attention_grid must be positive"
        );
        if let Some(decision) = &self.decision {
            decision.validate()?;
        }
        if let Some(distribution) = &self.validation_distribution {
            distribution.validate()?;
        }
        if let Some(ocr) = &self.ocr {
            ocr.validate()?;
        }

        use names::*;
        let graphs = &self.graphs;
        graphs
            .vision
            .expect_tensors("vision", &[PIXEL_VALUES], &[PATCH_TOKENS, POOLED])?;
        graphs
            .text
            .expect_tensors("text", &[INPUT_IDS, ATTENTION_MASK], &[TOKEN_STATES])?;
        graphs.head.expect_tensors(
            "head",
            &[PATCH_TOKENS, POOLED, TOKEN_STATES, ATTENTION_MASK],
            &[LOGITS, ATTENTION],
        )?;

        let pixels = graphs.vision.input(PIXEL_VALUES)?;
        let expected = [
            Dim::Dynamic("batch".into()),
            Dim::Fixed(image.channels as i64),
            Dim::Fixed(i64::from(image.height)),
            Dim::Fixed(i64::from(image.width)),
        ];
        ensure!(
            pixels.shape == expected,
            "vision input {PIXEL_VALUES} has shape {:?}, the image section implies {:?}",
            pixels.shape,
            expected
        );
        let logits = graphs.head.output(LOGITS)?;
        ensure!(
            logits.shape.last() == Some(&Dim::Fixed(self.labels.len() as i64)),
            "head output {LOGITS} has shape {:?} but there are {} labels",
            logits.shape,
            self.labels.len()
        );
        let attention = graphs.head.output(ATTENTION)?;
        let grid = &self.attention_grid;
        ensure!(
            attention.shape.get(1..)
                == Some(
                    &[
                        Dim::Fixed(grid.height as i64),
                        Dim::Fixed(grid.width as i64)
                    ][..]
                ),
            "head output {ATTENTION} has shape {:?}, attention_grid says {}x{}",
            attention.shape,
            grid.height,
            grid.width
        );
        Ok(())
    }

    /// Index of the normal label in logits order.
    pub fn normal_index(&self) -> usize {
        self.labels.iter().position(|l| l.is_normal).unwrap_or(0)
    }
}

impl Graph {
    /// Checks that the manifest lists exactly the contract's tensor names.
    fn expect_tensors(&self, role: &str, inputs: &[&str], outputs: &[&str]) -> anyhow::Result<()> {
        for (kind, listed, expected) in [
            ("inputs", &self.inputs, inputs),
            ("outputs", &self.outputs, outputs),
        ] {
            let mut have: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
            let mut want = expected.to_vec();
            have.sort_unstable();
            want.sort_unstable();
            if have != want {
                bail!(
                    "{role} graph ({}) {kind} are {have:?}, expected {want:?}",
                    self.file
                );
            }
        }
        Ok(())
    }

    /// The input of that name.
    pub fn input(&self, name: &str) -> anyhow::Result<&TensorSpec> {
        self.inputs
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("{} has no input {name}", self.file))
    }

    /// The output of that name.
    pub fn output(&self, name: &str) -> anyhow::Result<&TensorSpec> {
        self.outputs
            .iter()
            .find(|t| t.name == name)
            .with_context(|| format!("{} has no output {name}", self.file))
    }
}
