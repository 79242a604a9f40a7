//! What the Open Inference Protocol sees of a kensa model, shared by the HTTP and gRPC
//! bindings: its metadata, its readiness, and inference from named tensors to named tensors,
//! each image going through the [`Inspector`] as its own request.

use std::sync::Arc;

use bytes::Bytes;

use super::tensors::{BYTES, FP32, InputTensor, OutputData, OutputTensor};
use crate::access::Caller;
use crate::error::Error;
use crate::inspector::{InspectionRequest, Inspector};
use crate::model::registry::LoadedModel;
use crate::verdict::Verdict;

/// The server name in server metadata.
pub const SERVER_NAME: &str = "kensa";
/// Protocol extensions kensa implements.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];
/// The platform in model metadata: kensa's own three-graph ONNX pipeline.
pub const PLATFORM: &str = "kensa_onnx";
/// Station id of a request that sends no `station_id` input.
pub const DEFAULT_STATION: &str = "oip";

/// The encoded image file, one per batch element (required).
pub const IMAGE: &str = "image";
/// The note, UTF-8 (optional; empty when absent).
pub const NOTE: &str = "note";
/// Which station asks (optional).
pub const STATION_ID: &str = "station_id";
/// The station's id for the unit (optional; generated when absent).
pub const INSPECTION_ID: &str = "inspection_id";

/// Predicted label name, `[N]`.
pub const LABEL: &str = "label";
/// Probability of the predicted label, `[N]`.
pub const CONFIDENCE: &str = "confidence";
/// Every label's probability in the manifest's label order, `[N, C]`.
pub const PROBABILITIES: &str = "probabilities";
/// Attention over the image patches, `[N, H, W]`.
pub const ATTENTION: &str = "attention";
/// `pass`, `fail` or `review`, `[N]`; empty strings for a model without a decision rule.
pub const DISPOSITION: &str = "disposition";

const INPUTS: [&str; 4] = [IMAGE, NOTE, STATION_ID, INSPECTION_ID];

/// The one input a client must send; generic load tools (perf_analyzer) send only inputs not
/// marked optional.
const REQUIRED_INPUT: &str = IMAGE;

/// The outputs, in the order they are listed and returned by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    Label,
    Confidence,
    Probabilities,
    Attention,
    InspectionId,
    Disposition,
}

const OUTPUTS: [Output; 6] = [
    Output::Label,
    Output::Confidence,
    Output::Probabilities,
    Output::Attention,
    Output::InspectionId,
    Output::Disposition,
];

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::Label => LABEL,
            Output::Confidence => CONFIDENCE,
            Output::Probabilities => PROBABILITIES,
            Output::Attention => ATTENTION,
            Output::InspectionId => INSPECTION_ID,
            Output::Disposition => DISPOSITION,
        }
    }

    fn datatype(self) -> &'static str {
        match self {
            Output::Label | Output::InspectionId | Output::Disposition => BYTES,
            Output::Confidence | Output::Probabilities | Output::Attention => FP32,
        }
    }

    /// The shape for a batch of `n` (-1 in metadata).
    fn shape(self, model: &LoadedModel, n: i64) -> Vec<i64> {
        let grid = model.manifest.attention_grid;
        match self {
            Output::Label | Output::Confidence | Output::InspectionId | Output::Disposition => {
                vec![n]
            }
            Output::Probabilities => vec![n, model.manifest.labels.len() as i64],
            Output::Attention => vec![n, grid.height as i64, grid.width as i64],
        }
    }

    fn named(name: &str) -> Result<Output, Error> {
        OUTPUTS
            .into_iter()
            .find(|o| o.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = OUTPUTS.iter().map(|o| o.name()).collect();
                Error::BadRequest(format!("unknown output {name:?}; outputs are {names:?}"))
            })
    }
}

/// Name, datatype and shape of one tensor; -1 is the batch dimension.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: &'static str,
    /// Its datatype.
    pub datatype: &'static str,
    /// Its shape.
    pub shape: Vec<i64>,
    /// An input a request may leave out (Triton's `optional: true`); written only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// A model as model metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelSpec {
    /// The model's name.
    pub name: String,
    /// Every loaded version.
    pub versions: Vec<String>,
    /// See [`PLATFORM`].
    pub platform: &'static str,
    /// The inputs it takes.
    pub inputs: Vec<TensorSpec>,
    /// The outputs it gives.
    pub outputs: Vec<TensorSpec>,
}

/// An inference request in protocol terms.
#[derive(Debug, Default)]
pub struct InferCall {
    /// The model's name.
    pub model_name: String,
    /// The version; empty for the newest.
    pub model_version: String,
    /// The client's request id, echoed back.
    pub id: String,
    /// The input tensors.
    pub inputs: Vec<InputTensor>,
    /// The outputs wanted, in order; every output when empty.
    pub outputs: Vec<String>,
    /// Who asks, as the access gate found.
    pub caller: Caller,
}

/// An inference response in protocol terms.
#[derive(Debug)]
pub struct InferOutcome {
    /// The model that answered.
    pub model_name: String,
    /// Its version.
    pub model_version: String,
    /// The request's id.
    pub id: String,
    /// The output tensors, in the order asked for.
    pub outputs: Vec<OutputTensor>,
}

/// The loaded model a protocol request names; an empty version means the newest.
pub fn resolve(
    inspector: &Inspector,
    name: &str,
    version: &str,
) -> Result<Arc<LoadedModel>, Error> {
    let models = inspector
        .readiness()
        .models()
        .ok_or(Error::Unavailable("models are loading"))?;
    let version = if version.is_empty() {
        None
    } else {
        Some(
            version
                .parse::<u64>()
                .map_err(|_| Error::ModelNotFound(format!("{name} version {version}")))?,
        )
    };
    models.get(Some(name), version)
}

/// Whether the server takes inference requests.
pub fn server_ready(inspector: &Inspector) -> bool {
    inspector.readiness().is_ready()
}

/// Whether the named model takes inference requests; an error when there is no such model.
pub fn model_ready(inspector: &Inspector, name: &str, version: &str) -> Result<bool, Error> {
    resolve(inspector, name, version)?;
    Ok(server_ready(inspector))
}

/// The named model's versions, inputs and outputs.
pub fn model_metadata(
    inspector: &Inspector,
    name: &str,
    version: &str,
) -> Result<ModelSpec, Error> {
    let model = resolve(inspector, name, version)?;
    let versions = inspector
        .readiness()
        .models()
        .map(|models| models.versions(&model.name))
        .unwrap_or_default();
    Ok(ModelSpec {
        name: model.name.clone(),
        versions: versions.iter().map(u64::to_string).collect(),
        platform: PLATFORM,
        inputs: INPUTS
            .iter()
            .map(|name| TensorSpec {
                name,
                datatype: BYTES,
                shape: vec![-1, 1],
                optional: *name != REQUIRED_INPUT,
            })
            .collect(),
        outputs: OUTPUTS
            .iter()
            .map(|output| TensorSpec {
                name: output.name(),
                datatype: output.datatype(),
                shape: output.shape(&model, -1),
                optional: false,
            })
            .collect(),
    })
}

/// Runs every image of the batch through the inspector concurrently (so the batcher batches
/// them) and stacks the verdicts into output tensors. The batch is all or nothing: the first
/// failing element fails the request (the protocol has no per-element errors) and then no
/// element is stored.
pub async fn infer(inspector: &Inspector, call: InferCall) -> Result<InferOutcome, Error> {
    let model = resolve(inspector, &call.model_name, &call.model_version)?;
    let wanted: Vec<Output> = if call.outputs.is_empty() {
        OUTPUTS.to_vec()
    } else {
        call.outputs
            .iter()
            .map(|name| Output::named(name))
            .collect::<Result<_, _>>()?
    };
    let requests = inspections(&model, call.inputs, &call.caller)?;
    let verdicts: Vec<Verdict> = inspector
        .inspect_all(requests)
        .await?
        .into_iter()
        .map(|inspected| inspected.verdict)
        .collect();
    Ok(InferOutcome {
        model_name: model.name.clone(),
        model_version: model.version.to_string(),
        id: call.id,
        outputs: wanted
            .into_iter()
            .map(|wanted| output(&model, wanted, &verdicts))
            .collect(),
    })
}

/// One inspection per batch element, after checking every input's name, datatype and shape.
fn inspections(
    model: &LoadedModel,
    inputs: Vec<InputTensor>,
    caller: &Caller,
) -> Result<Vec<InspectionRequest>, Error> {
    let mut images = None;
    let mut notes = None;
    let mut stations = None;
    let mut ids = None;
    let mut batch = None;
    for input in inputs {
        let slot = match input.name.as_str() {
            IMAGE => &mut images,
            NOTE => &mut notes,
            STATION_ID => &mut stations,
            INSPECTION_ID => &mut ids,
            other => {
                return Err(Error::BadRequest(format!(
                    "unknown input {other:?}; inputs are {INPUTS:?}"
                )));
            }
        };
        if slot.is_some() {
            return Err(Error::BadRequest(format!(
                "input {} is given twice",
                input.name
            )));
        }
        if input.datatype != BYTES {
            return Err(Error::BadRequest(format!(
                "input {} must be BYTES, not {}",
                input.name, input.datatype
            )));
        }
        let size = match input.shape.as_slice() {
            [size] | [size, 1] if *size > 0 => *size as usize,
            [0] | [0, 1] => {
                return Err(Error::BadRequest(format!(
                    "input {} is an empty batch (shape [0])",
                    input.name
                )));
            }
            shape => {
                return Err(Error::BadRequest(format!(
                    "input {} must have shape [N] or [N, 1] (one element per image), not {shape:?}",
                    input.name
                )));
            }
        };
        match batch {
            Some(n) if n != size => {
                return Err(Error::BadRequest(format!(
                    "input {} has {size} elements but the batch has {n}",
                    input.name
                )));
            }
            _ => batch = Some(size),
        }
        let name = input.name.clone();
        let elements = input.byte_elements(name == IMAGE)?;
        if elements.len() != size {
            return Err(Error::BadRequest(format!(
                "input {name} has shape [{size}] but {} elements",
                elements.len()
            )));
        }
        *slot = Some(elements);
    }
    let images = images.ok_or_else(|| Error::BadRequest(format!("input {IMAGE} is required")))?;
    let text = |name: &str, i: usize, bytes: &Bytes| {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::BadRequest(format!("input {name} element {i} is not UTF-8")))
    };
    images
        .into_iter()
        .enumerate()
        .map(|(i, image)| {
            Ok(InspectionRequest {
                model: Some(model.name.clone()),
                model_version: Some(model.version),
                station_id: match &stations {
                    Some(stations) => text(STATION_ID, i, &stations[i])?,
                    None => DEFAULT_STATION.to_string(),
                },
                inspection_id: ids
                    .as_ref()
                    .map(|ids| text(INSPECTION_ID, i, &ids[i]))
                    .transpose()?,
                image,
                note: notes
                    .as_ref()
                    .map(|notes| text(NOTE, i, &notes[i]))
                    .transpose()?
                    .unwrap_or_default(),
                caller: caller.clone(),
                ..InspectionRequest::default()
            })
        })
        .collect()
}

/// One output tensor stacked over the batch's verdicts.
fn output(model: &LoadedModel, wanted: Output, verdicts: &[Verdict]) -> OutputTensor {
    let text = |field: fn(&Verdict) -> &str| {
        OutputData::Bytes(
            verdicts
                .iter()
                .map(|v| field(v).as_bytes().to_vec())
                .collect(),
        )
    };
    let data = match wanted {
        Output::Label => text(|v| &v.label),
        Output::InspectionId => text(|v| &v.inspection_id),
        Output::Disposition => text(|v| v.disposition.map_or("", |d| d.as_str())),
        Output::Confidence => OutputData::Fp32(verdicts.iter().map(|v| v.confidence).collect()),
        Output::Probabilities => OutputData::Fp32(
            verdicts
                .iter()
                .flat_map(|v| {
                    model
                        .manifest
                        .labels
                        .iter()
                        .map(|l| v.probabilities.get(&l.name).copied().unwrap_or(0.0))
                })
                .collect(),
        ),
        Output::Attention => OutputData::Fp32(
            verdicts
                .iter()
                .flat_map(|v| v.attention.values.iter().copied())
                .collect(),
        ),
    };
    OutputTensor {
        name: wanted.name(),
        shape: wanted.shape(model, verdicts.len() as i64),
        data,
    }
}
