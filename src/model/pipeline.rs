//! The three graphs of one model run as one unit on a batch: vision and text encoders side by
//! side, then the PFA+CMAF head on both.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ort::session::{Session, SessionOutputs};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use super::manifest::{DType, Dim, Graph, Manifest, TensorSpec, names};
use super::profile::OptimizationProfile;
use super::runtime::{Provider, Runtime};
use crate::batching::{BatchInput, BatchOutput, BatchRunner, GraphTimes};
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
    parallel_encoders: bool,
}

impl ModelSessions {
    /// Opens the three graphs in `dir` with `intra_threads` threads each and checks them
    /// against the manifest; TensorRT builds its engines for batches up to `max_batch_size`.
    pub fn open(
        runtime: &Runtime,
        dir: &Path,
        manifest: &Manifest,
        intra_threads: usize,
        max_batch_size: usize,
    ) -> anyhow::Result<(Self, Provider)> {
        let open = |graph: &Graph| -> anyhow::Result<(Session, Provider)> {
            let file = dir.join(&graph.file);
            if !file.is_file() {
                bail!("{} is missing", file.display());
            }
            let shapes = OptimizationProfile::for_graph(graph, max_batch_size, manifest);
            let (session, provider) = runtime.open(&file, intra_threads, &shapes)?;
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
                parallel_encoders: false,
            },
            provider,
        ))
    }

    /// Runs the vision and text encoders of a batch on two threads at once (worth it only with
    /// cores to spare, or on a GPU), instead of one after the other on the batch's thread.
    pub fn with_parallel_encoders(mut self, parallel: bool) -> Self {
        self.parallel_encoders = parallel;
        self
    }
}

impl BatchRunner for ModelSessions {
    /// Runs one batch through vision and text, then the head; the encoders' outputs go into
    /// the head as ONNX Runtime values, never copied out.
    fn run(&mut self, batch: &BatchInput) -> Result<BatchOutput, Error> {
        let [c, h, w] = self.image_shape;
        let n = batch.size;
        if batch.pixels.len() != n * c * h * w || batch.input_ids.len() != n * batch.tokens {
            return Err(Error::Internal(format!(
                "batch of {n} has inconsistent tensor sizes"
            )));
        }
        let (vision, text) = (&mut self.vision, &mut self.text);
        let encode_image = move || timed(move || run_vision(vision, batch, [c, h, w]));
        let encode_note = move || timed(move || run_text(text, batch));
        let (vision_out, text_out) = if self.parallel_encoders {
            std::thread::scope(|scope| {
                let text_job = scope.spawn(encode_note);
                let vision_out = encode_image();
                let text_out = text_job.join().unwrap_or_else(|_| {
                    Err(Error::Internal("text encoder thread panicked".into()))
                });
                (vision_out, text_out)
            })
        } else {
            (encode_image(), encode_note())
        };
        let (image_features, vision_time) = vision_out?;
        let (note_features, text_time) = text_out?;

        let head_started = Instant::now();
        let outputs = self
            .head
            .run(ort::inputs![
                names::PATCH_TOKENS => output(&image_features, names::PATCH_TOKENS)?,
                names::POOLED => output(&image_features, names::POOLED)?,
                names::TOKEN_STATES => output(&note_features, names::TOKEN_STATES)?,
                names::ATTENTION_MASK => tensor(&[n, batch.tokens], &batch.attention_mask)?,
            ])
            .map_err(inference)?;
        let logits = extract(&outputs, names::LOGITS, n * self.labels)?;
        let attention = extract(&outputs, names::ATTENTION, n * self.grid_cells)?;
        Ok(BatchOutput {
            rows: n,
            logits,
            attention,
            graph_times: GraphTimes {
                vision: vision_time,
                text: text_time,
                head: head_started.elapsed(),
            },
        })
    }
}

/// Runs `job` and says how long it took.
fn timed<T>(job: impl FnOnce() -> Result<T, Error>) -> Result<(T, Duration), Error> {
    let started = Instant::now();
    let value = job()?;
    Ok((value, started.elapsed()))
}

fn run_vision<'s>(
    session: &'s mut Session,
    batch: &BatchInput,
    [c, h, w]: [usize; 3],
) -> Result<SessionOutputs<'s>, Error> {
    session
        .run(ort::inputs![names::PIXEL_VALUES => tensor(&[batch.size, c, h, w], &batch.pixels)?])
        .map_err(inference)
}

fn run_text<'s>(session: &'s mut Session, batch: &BatchInput) -> Result<SessionOutputs<'s>, Error> {
    let shape = [batch.size, batch.tokens];
    session
        .run(ort::inputs![
            names::INPUT_IDS => tensor(&shape, &batch.input_ids)?,
            names::ATTENTION_MASK => tensor(&shape, &batch.attention_mask)?,
        ])
        .map_err(inference)
}

/// One named output of an encoder, to be fed to the head as it is.
fn output<'o>(outputs: &'o SessionOutputs<'_>, name: &str) -> Result<&'o DynValue, Error> {
    outputs
        .get(name)
        .ok_or_else(|| Error::Inference(format!("graph gave no output {name}")))
}

fn tensor<'a, T>(shape: &[usize], data: &'a [T]) -> Result<TensorRef<'a, T>, Error>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    TensorRef::from_array_view((shape.to_vec(), data)).map_err(inference)
}

fn extract(outputs: &SessionOutputs<'_>, name: &str, expected: usize) -> Result<Vec<f32>, Error> {
    let (_, data) = output(outputs, name)?
        .try_extract_tensor::<f32>()
        .map_err(inference)?;
    if data.len() != expected {
        return Err(Error::Inference(format!(
            "{name} has {} values, expected {expected}",
            data.len()
        )));
    }
    Ok(data.to_vec())
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
