//! `POST /v1/inspections`: a multipart form or a JSON body in, a verdict (or the heat map PNG,
//! or a 202 for `mode=async`) out.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::extract::Query;
use super::state::AppState;
use crate::access::Caller;
use crate::batching::Priority;
use crate::error::Error;
use crate::inspector::{Inspected, InspectionRequest};
use crate::metrics::ModelLabels;
use crate::verdict::Verdict;

/// The inspection route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/inspections", post(inspect))
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

/// The JSON answer: the verdict, with its heat map as base64 when asked for.
#[derive(Serialize)]
struct VerdictBody<'a> {
    #[serde(flatten)]
    verdict: &'a Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    heatmap_png: Option<String>,
}

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
    let asynchronous = match query.mode.as_deref() {
        None | Some("sync") => false,
        Some("async") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "mode must be sync or async, not {other:?}"
            )));
        }
    };
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let caller = Caller::of(request.extensions());
    let parse_started = Instant::now();
    let body = state.body(request).await?;
    let mut inspection = if content_type.starts_with("multipart/form-data") {
        from_multipart(&content_type, body).await?
    } else if content_type.starts_with("application/json") || content_type.is_empty() {
        from_json(&body)?
    } else {
        return Err(Error::BadRequest(format!(
            "content type must be multipart/form-data or application/json, not {content_type:?}"
        )));
    };
    inspection.caller = caller;
    if asynchronous {
        if as_png || query.heatmap {
            return Err(Error::BadRequest(
                "mode=async stores the verdict; it cannot answer with a heat map".into(),
            ));
        }
        return submit(&state, inspection).await;
    }
    inspection.heatmap = query.heatmap || as_png;
    let parse_time = parse_started.elapsed();
    let Inspected {
        verdict,
        cursor,
        replayed,
        heatmap_png,
    } = state.inspector.inspect(inspection).await?;
    let mut headers = HeaderMap::new();
    headers.insert("x-kensa-cursor", HeaderValue::from(cursor));
    if replayed {
        headers.insert("x-kensa-replayed", HeaderValue::from_static("true"));
    }
    if as_png {
        let png = heatmap_png
            .ok_or_else(|| Error::Internal("the verdict came without its heat map".into()))?;
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
    let respond_started = Instant::now();
    let body = VerdictBody {
        verdict: &verdict,
        heatmap_png: heatmap_png.map(|png| base64::engine::general_purpose::STANDARD.encode(png)),
    };
    let response = (headers, axum::Json(body)).into_response();
    let labels = ModelLabels {
        model: verdict.model.clone(),
        version: verdict.model_version.to_string(),
    };
    state.metrics.observe_stage(&labels, "parse", parse_time);
    state
        .metrics
        .observe_stage(&labels, "respond", respond_started.elapsed());
    Ok(response)
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
        Some(stored) => (StatusCode::OK, "stored", Some(stored.cursor)),
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

/// The inspection a JSON body asks for (the image as base64); public so the fuzz target reaches
/// it without a server.
pub fn from_json(body: &[u8]) -> Result<InspectionRequest, Error> {
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
        caller: Caller::nobody(),
    })
}

/// The multipart parts kensa reads itself; any other text part is carried as metadata.
const PARTS: &str = "image (the file), note, station_id, inspection_id, model, model_version, \
                     deadline_ms, priority; any other text part is kept as metadata";

/// The inspection a multipart form asks for; each part at most once. Public so the fuzz target
/// reaches it without a server.
pub async fn from_multipart(content_type: &str, body: Bytes) -> Result<InspectionRequest, Error> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| Error::BadRequest(format!("bad multipart content type: {e}")))?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut request = InspectionRequest::default();
    let mut image = None;
    let mut seen = HashSet::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| Error::BadRequest(format!("malformed multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        if !name.is_empty() && !seen.insert(name.clone()) {
            return Err(Error::BadRequest(format!(
                "part {name:?} appears twice; send each part once"
            )));
        }
        let is_file = field.file_name().is_some();
        let data = field
            .bytes()
            .await
            .map_err(|e| Error::BadRequest(format!("malformed multipart field {name:?}: {e}")))?;
        if name == "image" {
            image = Some(data);
            continue;
        }
        if name.is_empty() {
            return Err(Error::BadRequest(format!(
                "a multipart part has no name; the parts are: {PARTS}"
            )));
        }
        if is_file {
            return Err(Error::BadRequest(format!(
                "unknown file part {name:?}: the image goes in a part named \"image\" \
                 (curl -F image=@unit.png); the parts are: {PARTS}"
            )));
        }
        let text = String::from_utf8(data.to_vec()).map_err(|_| {
            Error::BadRequest(format!(
                "part {name:?} is not UTF-8 text (only the image part may be binary); the \
                 parts are: {PARTS}"
            ))
        })?;
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
            _ => {
                request.metadata.insert(name, text);
            }
        }
    }
    request.image = image.ok_or_else(|| {
        Error::BadRequest(format!(
            "a file part named image is required; the parts are: {PARTS}"
        ))
    })?;
    Ok(request)
}

fn parse_field<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, Error> {
    text.trim().parse().map_err(|_| {
        Error::BadRequest(format!(
            "field {name:?} must be a non-negative integer, not {text:?}"
        ))
    })
}
