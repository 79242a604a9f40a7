//! TensorRT optimization profiles, declared from the manifest.
//!
//! TensorRT builds an engine per range of input shapes. Left to itself, ONNX Runtime's
//! TensorRT provider rebuilds an engine whenever a batch arrives with a shape outside what it
//! has seen (seconds to minutes each); declaring the whole range once (batch 1 to the largest
//! batch, notes of 1 to `max_tokens` tokens) builds one engine per graph at start, which the
//! engine cache then keeps across restarts.

use super::manifest::{Dim, Graph, Manifest};

/// The `trt_profile_{min,opt,max}_shapes` values of one graph.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OptimizationProfile {
    /// Smallest shapes, `name:1x1x224x224,...`.
    pub min: String,
    /// Shapes the engine is tuned for: the largest batch and longest note.
    pub opt: String,
    /// Largest shapes.
    pub max: String,
}

impl OptimizationProfile {
    /// The profile of `graph`: its first (batch) axis from 1 to `max_batch_size`, any other
    /// dynamic axis (the note's tokens) from 1 to the manifest's `max_tokens`.
    pub fn for_graph(graph: &Graph, max_batch_size: usize, manifest: &Manifest) -> Self {
        let max_tokens = manifest.text.max_tokens as i64;
        let max_batch = max_batch_size.max(1) as i64;
        let shapes = |pick: &dyn Fn(usize, i64) -> i64| -> String {
            graph
                .inputs
                .iter()
                .map(|input| {
                    let dims: Vec<String> = input
                        .shape
                        .iter()
                        .enumerate()
                        .map(|(axis, dim)| match dim {
                            Dim::Fixed(size) => size.to_string(),
                            Dim::Dynamic(_) if axis == 0 => pick(axis, max_batch).to_string(),
                            Dim::Dynamic(_) => pick(axis, max_tokens).to_string(),
                        })
                        .collect();
                    format!("{}:{}", input.name, dims.join("x"))
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        OptimizationProfile {
            min: shapes(&|_, _| 1),
            opt: shapes(&|_, largest| largest),
            max: shapes(&|_, largest| largest),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn profiles_span_batch_one_to_the_largest_and_every_note_length() {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
        let manifest = Manifest::load(&demo).unwrap();
        let image = &manifest.image;
        let pixels = format!("{}x{}x{}", image.channels, image.height, image.width);
        let vision = OptimizationProfile::for_graph(&manifest.graphs.vision, 8, &manifest);
        assert_eq!(vision.min, format!("pixel_values:1x{pixels}"));
        assert_eq!(vision.max, format!("pixel_values:8x{pixels}"));
        let text = OptimizationProfile::for_graph(&manifest.graphs.text, 16, &manifest);
        assert_eq!(text.min, "input_ids:1x1,attention_mask:1x1");
        let tokens = manifest.text.max_tokens;
        assert_eq!(
            text.opt,
            format!("input_ids:16x{tokens},attention_mask:16x{tokens}")
        );
        assert_eq!(text.max, text.opt);
    }
}
