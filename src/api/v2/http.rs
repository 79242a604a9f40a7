//! The Open Inference Protocol over HTTP (`/v2/...`), with Triton's binary tensor extension:
//! a JSON header of `Inference-Header-Content-Length` bytes followed by the raw input tensors
//! named by their `binary_data_size` parameters, and raw outputs when the client asks for them.
//! Errors are `{"error": ...}` bodies from the one [`Error`] mapping.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::management;
use super::model::{self, EXTENSIONS, InferCall, InferOutcome, SERVER_NAME};
use super::tensors::{InputTensor, TensorData};
use crate::access::Caller;
use crate::api::extract::Path;
use crate::api::state::AppState;
use crate::error::Error;

/// Length of the JSON part of a request or response body that carries binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The `/v2` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v2/models/{name}/config", get(model_config))
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/models/{name}/stats", get(statistics))
        .route(
            "/v2/models/{name}/versions/{version}/stats",
            get(statistics),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/repository/models/{name}/unload", post(unload))
}

/// `GET /v2/models/{name}[/versions/{version}]/config`: the model as Triton configures one.
async fn model_config(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<Response, Error> {
    let config = management::model_config(&state.inspector, &path.name, &path.version)?;
    Ok(axum::Json(config.to_json()).into_response())
}

/// `GET /v2/models/stats`: statistics of every loaded version.
async fn all_statistics(State(state): State<AppState>) -> Result<Response, Error> {
    stats_response(management::statistics(&state.inspector, "", "")?)
}

/// `GET /v2/models/{name}[/versions/{version}]/stats`.
async fn statistics(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<Response, Error> {
    stats_response(management::statistics(
        &state.inspector,
        &path.name,
        &path.version,
    )?)
}

fn stats_response(stats: Vec<management::VersionStatistics>) -> Result<Response, Error> {
    let entries: Vec<serde_json::Value> = stats.iter().map(|s| s.to_json()).collect();
    Ok(axum::Json(serde_json::json!({ "model_stats": entries })).into_response())
}

/// Body of `POST /v2/repository/index` (may be empty).
#[derive(Debug, Default, Deserialize)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

/// `POST /v2/repository/index`: every version that serves or failed to load.
async fn repository_index(State(state): State<AppState>, body: Bytes) -> Result<Response, Error> {
    let asked: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(format!("repository index request: {e}")))?
    };
    let index = management::repository_index(&state.inspector, &state.models, asked.ready);
    Ok(axum::Json(index).into_response())
}

/// `POST /v2/repository/models/{name}/load`: reads the repository again.
async fn load(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, Error> {
    management::load(&state.inspector, &state.models, &name).await?;
    Ok(axum::Json(serde_json::json!({})).into_response())
}

/// `POST /v2/repository/models/{name}/unload`: refused, with what to do instead.
async fn unload(Path(name): Path<String>) -> Error {
    management::unload(&name)
}

/// A model address from the path; no version means the newest.
#[derive(Debug, Deserialize)]
struct ModelPath {
    name: String,
    #[serde(default)]
    version: String,
}

/// The protocol's health answers: 200 for true, 400 (a 4xx, as the protocol asks) for false.
fn health(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// `GET /v2/health/live`.
async fn live() -> StatusCode {
    StatusCode::OK
}

/// `GET /v2/health/ready`: ready once every model is warm, not while draining.
async fn server_ready(State(state): State<AppState>) -> StatusCode {
    health(model::server_ready(&state.inspector))
}

/// `GET /v2`.
async fn server_metadata() -> Response {
    axum::Json(serde_json::json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
    .into_response()
}

/// `GET /v2/models/{name}[/versions/{version}]`.
async fn model_metadata(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<Response, Error> {
    let spec = model::model_metadata(&state.inspector, &path.name, &path.version)?;
    Ok(axum::Json(spec).into_response())
}

/// `GET /v2/models/{name}[/versions/{version}]/ready`.
async fn model_ready(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
) -> Result<StatusCode, Error> {
    model::model_ready(&state.inspector, &path.name, &path.version).map(health)
}

type Parameters = serde_json::Map<String, serde_json::Value>;

/// The JSON part of an inference request.
#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: String,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// `POST /v2/models/{name}[/versions/{version}]/infer`.
async fn infer(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    request: Request,
) -> Result<Response, Error> {
    let header_length = request
        .headers()
        .get(HEADER_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| Error::BadRequest(format!("{HEADER_LENGTH} must be a byte count")))
        })
        .transpose()?;
    let caller = Caller::of(request.extensions());
    let body = state.body(request).await?;
    let decoded = decode_infer(header_length, body)?;
    let outcome = model::infer(
        &state.inspector,
        InferCall {
            model_name: path.name,
            model_version: path.version,
            id: decoded.id.clone(),
            inputs: decoded.inputs,
            outputs: decoded.outputs.clone(),
            caller,
        },
    )
    .await?;
    Ok(respond(outcome, |name| {
        decoded.all_binary || decoded.binary_outputs.iter().any(|b| b == name)
    }))
}

/// An inference request body, decoded: what the protocol layer needs, and which outputs go
/// back raw.
#[derive(Debug)]
pub struct DecodedInfer {
    /// The client's request id.
    pub id: String,
    /// The input tensors, their data still encoded.
    pub inputs: Vec<InputTensor>,
    /// The outputs asked for, in order.
    pub outputs: Vec<String>,
    binary_outputs: Vec<String>,
    all_binary: bool,
}

/// Splits a body into its JSON header (`header_length` bytes, or all of it) and the binary
/// inputs after it, each claimed by an input's `binary_data_size`; refuses lengths that run past
/// the body and bytes no input claims. Public so the fuzz target reaches it without a server.
pub fn decode_infer(header_length: Option<usize>, body: Bytes) -> Result<DecodedInfer, Error> {
    let (json, mut binary) = match header_length {
        Some(length) if length > body.len() => {
            return Err(Error::BadRequest(format!(
                "{HEADER_LENGTH} is {length} but the body has {} bytes",
                body.len()
            )));
        }
        Some(length) => (body.slice(..length), body.slice(length..)),
        None => (body, Bytes::new()),
    };
    let parsed: InferRequest = serde_json::from_slice(&json)
        .map_err(|e| Error::BadRequest(format!("invalid inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for input in parsed.inputs {
        let data = match (size_parameter(&input.name, &input.parameters)?, input.data) {
            (Some(size), _) if size > binary.len() => {
                return Err(Error::BadRequest(format!(
                    "input {}: binary_data_size is {size} but only {} binary bytes remain",
                    input.name,
                    binary.len()
                )));
            }
            (Some(size), _) => TensorData::Raw(binary.split_to(size)),
            (None, Some(data)) => TensorData::Json(data),
            (None, None) => TensorData::Missing,
        };
        inputs.push(InputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(Error::BadRequest(format!(
            "{} binary bytes follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    let binary_by_default = flag(&parsed.parameters, "binary_data_output")?;
    let mut binary_outputs = Vec::new();
    for output in &parsed.outputs {
        if flag(&output.parameters, "binary_data")?.unwrap_or(binary_by_default.unwrap_or(false)) {
            binary_outputs.push(output.name.clone());
        }
    }
    let all_binary = parsed.outputs.is_empty() && binary_by_default.unwrap_or(false);
    Ok(DecodedInfer {
        id: parsed.id,
        inputs,
        outputs: parsed.outputs.into_iter().map(|o| o.name).collect(),
        binary_outputs,
        all_binary,
    })
}

/// An input's `binary_data_size` parameter.
fn size_parameter(name: &str, parameters: &Parameters) -> Result<Option<usize>, Error> {
    parameters
        .get("binary_data_size")
        .map(|value| {
            value
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "input {name}: binary_data_size must be a non-negative integer"
                    ))
                })
        })
        .transpose()
}

/// A boolean parameter.
fn flag(parameters: &Parameters, key: &str) -> Result<Option<bool>, Error> {
    parameters
        .get(key)
        .map(|value| {
            value
                .as_bool()
                .ok_or_else(|| Error::BadRequest(format!("parameter {key} must be true or false")))
        })
        .transpose()
}

/// The response: JSON alone, or JSON followed by the binary outputs.
fn respond(outcome: InferOutcome, binary: impl Fn(&str) -> bool) -> Response {
    let mut blobs = Vec::new();
    let outputs: Vec<serde_json::Value> = outcome
        .outputs
        .iter()
        .map(|output| {
            let mut json = serde_json::json!({
                "name": output.name,
                "datatype": output.datatype(),
                "shape": output.shape,
            });
            if binary(output.name) {
                let raw = output.raw();
                json["parameters"] = serde_json::json!({ "binary_data_size": raw.len() });
                blobs.push(raw);
            } else {
                json["data"] = output.json_data();
            }
            json
        })
        .collect();
    let mut header = serde_json::json!({
        "model_name": outcome.model_name,
        "model_version": outcome.model_version,
        "outputs": outputs,
    });
    if !outcome.id.is_empty() {
        header["id"] = serde_json::Value::String(outcome.id);
    }
    let header = header.to_string().into_bytes();
    if blobs.is_empty() {
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            header,
        )
            .into_response();
    }
    let header_length = HeaderValue::from(header.len());
    let mut body = header;
    for blob in blobs {
        body.extend_from_slice(&blob);
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                header_length,
            ),
        ],
        body,
    )
        .into_response()
}
