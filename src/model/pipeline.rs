//! The three graphs of one model run as one unit on a batch: vision and text encoders side by
//! side, then the PFA+CMAF head on both.

use std::path::Path;

use anyhow::{Context, bail};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::manifest::{DType, Dim, Graph, Manifest, TensorSpec, names};
use super::runtime::{Provider, Runtime};
use crate::batching::{BatchInput, BatchOutput, BatchRunner};
use crate::error::Error;

/// Blank images and pad-token notes of `tokens` tokens: compute cost without real data, for
/// warm-up and timing.
pub fn blank_batch(manifest: &Manifest, size: usize, tokens: usize) -> BatchInput {
    let image = &manifest.image;
    BatchInput {
        size,
        pixels: vec![0.0; size * image.channels * image.height as usize * image.width as usize],
        input_ids: vec![i64::from(manifest.text.pad_id); size * tokens],
        attention_mask: vec![1; size * tokens],
        tokens,
    }
}

/// One set of sessions for the three graphs. `Session::run` needs `&mut`, so the service keeps
/// a pool of these and gives each batch one set.
pub struct ModelSessions {
    vision: Session,
    text: Session,
    head: Session,
    image_shape: [usize; 3],
    labels: usize,
    grid_cells: usize,
}

impl ModelSessions {
    /// Opens the three graphs in `dir` and checks them against the manifest.
    pub fn open(
        runtime: &Runtime,
        dir: &Path,
        manifest: &Manifest,
    ) -> anyhow::Result<(Self, Provider)> {
        let open = |graph: &Graph| -> anyhow::Result<(Session, Provider)> {
            let file = dir.join(&graph.file);
            if !file.is_file() {
                bail!("{} is missing", file.display());
            }
            let (session, provider) = runtime.open(&file)?;
            check_graph(&session, graph)
                .with_context(|| format!("{} does not match manifest.json", file.display()))?;
            Ok((session, provider))
        };
        let (vision, provider) = open(&manifest.graphs.vision)?;
        let (text, _) = open(&manifest.graphs.text)?;
        let (head, _) = open(&manifest.graphs.head)?;
        let image = &manifest.image;
        Ok((
            ModelSessions {
                vision,
                text,
                head,
                image_shape: [image.channels, image.height as usize, image.width as usize],
                labels: manifest.labels.len(),
                grid_cells: manifest.attention_grid.height * manifest.attention_grid.width,
            },
            provider,
        ))
    }
}

impl BatchRunner for ModelSessions {
    /// Runs one batch through vision ∥ text, then the head.
    ///
    /// The two encoders are independent sessions, so they run on two threads at once; on a GPU
    /// provider this overlaps their kernels, on CPU it fills the cores one operator leaves idle.
    fn run(&mut self, batch: &BatchInput) -> Result<BatchOutput, Error> {
        let [c, h, w] = self.image_shape;
        let n = batch.size;
        if batch.pixels.len() != n * c * h * w || batch.input_ids.len() != n * batch.tokens {
            return Err(Error::Internal(format!(
                "batch of {n} has inconsistent tensor sizes"
            )));
        }
        let (vision, text) = (&mut self.vision, &mut self.text);
        let (vision_out, text_out) = std::thread::scope(|scope| {
            let text_job = scope.spawn(|| run_text(text, batch));
            let vision_out = run_vision(vision, batch, [c, h, w]);
            let text_out = text_job
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("text encoder thread panicked".into())));
            (vision_out, text_out)
        });
        let (patches, pooled) = vision_out?;
        let states = text_out?;

        let outputs = self
            .head
            .run(ort::inputs![
                names::PATCH_TOKENS => tensor(&patches.shape, &patches.data)?,
                names::POOLED => tensor(&pooled.shape, &pooled.data)?,
                names::TOKEN_STATES => tensor(&states.shape, &states.data)?,
                names::ATTENTION_MASK => tensor(&[n, batch.tokens], &batch.attention_mask)?,
            ])
            .map_err(inference)?;
        let logits = extract(&outputs, names::LOGITS, n * self.labels)?;
        let attention = extract(&outputs, names::ATTENTION, n * self.grid_cells)?;
        Ok(BatchOutput { logits, attention })
    }
}

/// An encoder output on its way to the head: values and shape.
struct Features {
    data: Vec<f32>,
    shape: Vec<usize>,
}

fn run_vision(
    session: &mut Session,
    batch: &BatchInput,
    [c, h, w]: [usize; 3],
) -> Result<(Features, Features), Error> {
    let outputs = session
        .run(ort::inputs![names::PIXEL_VALUES => tensor(&[batch.size, c, h, w], &batch.pixels)?])
        .map_err(inference)?;
    let patches = extract_with_shape(&outputs, names::PATCH_TOKENS)?;
    let pooled = extract_with_shape(&outputs, names::POOLED)?;
    Ok((patches, pooled))
}

fn run_text(session: &mut Session, batch: &BatchInput) -> Result<Features, Error> {
    let shape = [batch.size, batch.tokens];
    let outputs = session
        .run(ort::inputs![
            names::INPUT_IDS => tensor(&shape, &batch.input_ids)?,
            names::ATTENTION_MASK => tensor(&shape, &batch.attention_mask)?,
        ])
        .map_err(inference)?;
    extract_with_shape(&outputs, names::TOKEN_STATES)
}

fn tensor<'a, T>(shape: &[usize], data: &'a [T]) -> Result<TensorRef<'a, T>, Error>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    TensorRef::from_array_view((shape.to_vec(), data)).map_err(inference)
}

fn extract_with_shape(
    outputs: &ort::session::SessionOutputs<'_>,
    name: &str,
) -> Result<Features, Error> {
    let value = outputs
        .get(name)
        .ok_or_else(|| Error::Inference(format!("graph gave no output {name}")))?;
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(inference)?;
    let shape = shape
        .iter()
        .map(|d| usize::try_from(*d).unwrap_or(0))
        .collect();
    Ok(Features {
        data: data.to_vec(),
        shape,
    })
}

fn extract(
    outputs: &ort::session::SessionOutputs<'_>,
    name: &str,
    expected: usize,
) -> Result<Vec<f32>, Error> {
    let Features { data, .. } = extract_with_shape(outputs, name)?;
    if data.len() != expected {
        return Err(Error::Inference(format!(
            "{name} has {} values, expected {expected}",
            data.len()
        )));
    }
    Ok(data)
}

fn inference(error: ort::Error) -> Error {
    Error::Inference(error.to_string())
}

/// Compares a session's real inputs and outputs with what the manifest promises.
fn check_graph(session: &Session, graph: &Graph) -> anyhow::Result<()> {
    for (kind, actual, declared) in [
        ("input", session.inputs(), &graph.inputs),
        ("output", session.outputs(), &graph.outputs),
    ] {
        let actual_names: Vec<&str> = actual.iter().map(|o| o.name()).collect();
        for spec in declared {
            let outlet = actual
                .iter()
                .find(|o| o.name() == spec.name)
                .with_context(|| {
                    format!("has no {kind} {:?} (it has {actual_names:?})", spec.name)
                })?;
            check_tensor(kind, spec, outlet.dtype())?;
        }
        if actual.len() != declared.len() {
            bail!(
                "has {kind}s {actual_names:?}, manifest lists {}",
                declared.len()
            );
        }
    }
    Ok(())
}

fn check_tensor(kind: &str, spec: &TensorSpec, actual: &ValueType) -> anyhow::Result<()> {
    let ValueType::Tensor { ty, shape, .. } = actual else {
        bail!("{kind} {} is not a tensor", spec.name);
    };
    let expected_ty = match spec.dtype {
        DType::Float32 => TensorElementType::Float32,
        DType::Int64 => TensorElementType::Int64,
    };
    if *ty != expected_ty {
        bail!(
            "{kind} {} is {ty:?}, manifest says {:?}",
            spec.name,
            spec.dtype
        );
    }
    if shape.len() != spec.shape.len() {
        bail!(
            "{kind} {} has rank {}, manifest says shape {:?}",
            spec.name,
            shape.len(),
            spec.shape
        );
    }
    for (axis, (actual, declared)) in shape.iter().zip(&spec.shape).enumerate() {
        match declared {
            Dim::Fixed(size) if *actual != *size => bail!(
                "{kind} {} axis {axis} is {actual}, manifest says {size}",
                spec.name
            ),
            Dim::Dynamic(name) if *actual >= 0 => bail!(
                "{kind} {} axis {axis} is fixed at {actual}, manifest says dynamic {name:?}",
                spec.name
            ),
            _ => {}
        }
    }
    Ok(())
}
