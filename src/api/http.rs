//! The native HTTP API (`/v1`), health probes and metrics; the Open Inference Protocol's
//! `/v2` routes are merged in from [`super::v2::http`] so they share state and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use tokio_util::sync::CancellationToken;

use crate::batching::Priority;
use crate::error::Error;
use crate::inspector::{Inspected, InspectionRequest, Inspector};
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
use crate::model::manifest::Label;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The hallway.
    pub inspector: Arc<Inspector>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Cancelled when the server drains; ends long-polls and event streams so draining does
    /// not wait for them.
    pub shutdown: CancellationToken,
}

/// The HTTP routes with metrics on every one.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/inspections", post(inspect))
        .route("/v1/models", get(models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(super::mes::routes())
        .merge(super::v2::http::routes())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from(&self);
        if status.is_server_error() {
            tracing::error!(error = %self, code = self.code(), "request failed");
        }
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: self.to_string(),
                code: self.code(),
            }),
        )
            .into_response();
        if let Some(after) = self.retry_after() {
            let seconds = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// The body of every error response.
#[derive(Serialize)]
struct ErrorBody {
    error: String,
    code: &'static str,
}

/// Options of `POST /v1/inspections` given in the query string.
#[derive(Debug, Default, Deserialize)]
struct InspectQuery {
    /// Include the attention heat map as a base64 PNG in the verdict.
    #[serde(default)]
    heatmap: bool,
    /// `png`: answer with the heat map image itself, the verdict in `X-Kensa-*` headers.
    format: Option<String>,
    /// `async`: answer 202 at once; the verdict is stored when done.
    mode: Option<String>,
}

/// `POST /v1/inspections`: multipart form or JSON in, verdict out.
async fn inspect(
    State(state): State<AppState>,
    Query(query): Query<InspectQuery>,
    request: Request,
) -> Result<Response, Error> {
    let as_png = match query.format.as_deref() {
        None | Some("json") => false,
        Some("png") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "format must be json or png, not {other:?}"
            )));
        }
    };
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = read_body(request, state.max_body_bytes).await?;
    let mut inspection = if content_type.starts_with("multipart/form-data") {
        from_multipart(&content_type, body).await?
    } else if content_type.starts_with("application/json") || content_type.is_empty() {
        from_json(&body)?
    } else {
        return Err(Error::BadRequest(format!(
            "content type must be multipart/form-data or application/json, not {content_type:?}"
        )));
    };
    let asynchronous = match query.mode.as_deref() {
        None | Some("sync") => false,
        Some("async") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "mode must be sync or async, not {other:?}"
            )));
        }
    };
    if asynchronous {
        if as_png || query.heatmap {
            return Err(Error::BadRequest(
                "mode=async stores the verdict; it cannot answer with a heat map".into(),
            ));
        }
        return submit(&state, inspection).await;
    }
    inspection.heatmap = query.heatmap || as_png;
    let Inspected {
        verdict,
        cursor,
        replayed,
    } = state.inspector.inspect_recorded(inspection).await?;
    let mut headers = HeaderMap::new();
    if let Some(cursor) = cursor {
        headers.insert("x-kensa-cursor", HeaderValue::from(cursor));
    }
    if replayed {
        headers.insert("x-kensa-replayed", HeaderValue::from_static("true"));
    }
    if as_png {
        let encoded = verdict
            .heatmap_png
            .as_deref()
            .ok_or_else(|| Error::Internal("the verdict came without its heat map".into()))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| Error::Internal(format!("heat map encoding: {e}")))?;
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        for (name, value) in [
            ("x-kensa-inspection-id", verdict.inspection_id.clone()),
            ("x-kensa-label", verdict.label.clone()),
            ("x-kensa-confidence", format!("{:.6}", verdict.confidence)),
            ("x-kensa-is-defect", verdict.is_defect.to_string()),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        return Ok((headers, png).into_response());
    }
    Ok((headers, axum::Json(verdict)).into_response())
}

/// `POST /v1/inspections?mode=async`: 202 with the key at once (200 with the stored verdict
/// when the key already has one).
async fn submit(state: &AppState, inspection: InspectionRequest) -> Result<Response, Error> {
    let submitted = state.inspector.submit(inspection).await?;
    let location = format!(
        "/v1/verdicts/{}/{}",
        path_segment(&submitted.station_id),
        path_segment(&submitted.inspection_id)
    );
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    let (status, state_name, cursor) = match &submitted.stored {
        Some(stored) => (StatusCode::OK, "stored", stored.cursor),
        None => (StatusCode::ACCEPTED, "accepted", None),
    };
    let body = serde_json::json!({
        "station_id": submitted.station_id,
        "inspection_id": submitted.inspection_id,
        "status": state_name,
        "cursor": cursor,
        "verdict": submitted.stored.map(|s| s.verdict),
        "location": location,
    });
    Ok((status, headers, axum::Json(body)).into_response())
}

/// Percent-encodes one path segment (ids may hold `/`, spaces and the like).
fn path_segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads the whole body, refusing with 413 past `limit` without buffering more than that.
pub(crate) async fn read_body(request: Request, limit: usize) -> Result<Bytes, Error> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared
        && size > limit
    {
        return Err(Error::PayloadTooLarge {
            what: "request body",
            size,
            limit,
        });
    }
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|error| {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_large {
                Error::PayloadTooLarge {
                    what: "request body",
                    size: limit + 1,
                    limit,
                }
            } else {
                Error::BadRequest(format!("could not read the request body: {error}"))
            }
        })
}

/// Fields of the JSON form of an inspection; unknown string fields become metadata.
#[derive(Debug, Deserialize)]
struct JsonInspection {
    station_id: Option<String>,
    inspection_id: Option<String>,
    image: Option<String>,
    #[serde(default)]
    note: String,
    model: Option<String>,
    model_version: Option<u64>,
    #[serde(default)]
    priority: Priority,
    deadline_ms: Option<u64>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

fn from_json(body: &[u8]) -> Result<InspectionRequest, Error> {
    let parsed: JsonInspection = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))?;
    let image = parsed
        .image
        .ok_or_else(|| Error::BadRequest("image (base64) is required".into()))?;
    let image = base64::engine::general_purpose::STANDARD
        .decode(image.trim())
        .map_err(|e| Error::BadRequest(format!("image is not valid base64: {e}")))?;
    let mut metadata = parsed.metadata;
    for (key, value) in parsed.extra {
        match value {
            serde_json::Value::String(s) => {
                metadata.insert(key, s);
            }
            serde_json::Value::Number(n) => {
                metadata.insert(key, n.to_string());
            }
            _ => {
                return Err(Error::BadRequest(format!(
                    "field {key:?} must be a string or a number"
                )));
            }
        }
    }
    Ok(InspectionRequest {
        model: parsed.model,
        model_version: parsed.model_version,
        station_id: parsed.station_id.unwrap_or_default(),
        inspection_id: parsed.inspection_id,
        image: image.into(),
        note: parsed.note,
        metadata,
        priority: parsed.priority,
        deadline: parsed.deadline_ms.map(Duration::from_millis),
        heatmap: false,
    })
}

async fn from_multipart(content_type: &str, body: Bytes) -> Result<InspectionRequest, Error> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| Error::BadRequest(format!("bad multipart content type: {e}")))?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut request = InspectionRequest::default();
    let mut image = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| Error::BadRequest(format!("malformed multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let data = field
            .bytes()
            .await
            .map_err(|e| Error::BadRequest(format!("malformed multipart field {name:?}: {e}")))?;
        if name == "image" {
            image = Some(data);
            continue;
        }
        let text = String::from_utf8(data.to_vec())
            .map_err(|_| Error::BadRequest(format!("field {name:?} is not UTF-8 text")))?;
        match name.as_str() {
            "note" => request.note = text,
            "station_id" => request.station_id = text,
            "inspection_id" => request.inspection_id = Some(text),
            "model" => request.model = Some(text),
            "model_version" => request.model_version = Some(parse_field(&name, &text)?),
            "deadline_ms" => {
                request.deadline = Some(Duration::from_millis(parse_field(&name, &text)?))
            }
            "priority" => {
                request.priority = match text.as_str() {
                    "urgent" => Priority::Urgent,
                    "normal" => Priority::Normal,
                    other => {
                        return Err(Error::BadRequest(format!(
                            "priority must be urgent or normal, not {other:?}"
                        )));
                    }
                }
            }
            "" => return Err(Error::BadRequest("a multipart field has no name".into())),
            _ => {
                request.metadata.insert(name, text);
            }
        }
    }
    request.image =
        image.ok_or_else(|| Error::BadRequest("a file part named image is required".into()))?;
    Ok(request)
}

fn parse_field<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, Error> {
    text.trim().parse().map_err(|_| {
        Error::BadRequest(format!(
            "field {name:?} must be a non-negative integer, not {text:?}"
        ))
    })
}

/// One entry of `GET /v1/models`.
#[derive(Serialize)]
struct ModelSummary<'a> {
    name: &'a str,
    versions: Vec<u64>,
    labels: &'a [Label],
    provider: String,
    ready: bool,
    max_batch_size: usize,
    description: &'a str,
    metrics: &'a serde_json::Value,
}

/// `GET /v1/models`: every model with its versions, labels and provider.
async fn models(State(state): State<AppState>) -> Response {
    let readiness = state.inspector.readiness();
    let ready = readiness.is_ready();
    let Some(repository) = readiness.models() else {
        return axum::Json(serde_json::json!({ "models": [] })).into_response();
    };
    let mut summaries: Vec<ModelSummary<'_>> = Vec::new();
    for model in repository.iter() {
        if summaries.last().is_some_and(|s| s.name == model.name) {
            summaries.pop();
        }
        summaries.push(ModelSummary {
            name: &model.name,
            versions: repository.versions(&model.name),
            labels: &model.manifest.labels,
            provider: model.provider.to_string(),
            ready,
            max_batch_size: model.queue.config().max_batch_size,
            description: &model.manifest.description,
            metrics: &model.manifest.metrics,
        });
    }
    axum::Json(serde_json::json!({ "models": summaries })).into_response()
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 once every model is warmed up, 503 before and while draining.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.inspector.readiness().is_ready() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(repository) = state.inspector.readiness().models() {
        for model in repository.iter() {
            state
                .metrics
                .queue_depth
                .get_or_create(&model.labels())
                .set(model.queue.depth() as i64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Counts and times every request by its route template.
async fn record_metrics(
    State(state): State<AppState>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route: route.clone(),
            method,
            status: response.status().as_u16(),
        })
        .inc();
    state
        .metrics
        .http_seconds
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}
