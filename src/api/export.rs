//! `GET /v1/verdicts/export`: stored verdicts as the pipeline's training dataset, streamed (a
//! thin adapter over [`crate::export`]; the filters are those of `GET /v1/verdicts`).

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::extract::parse_query;
use super::state::AppState;
use super::verdicts::ReadOptions;
use crate::error::Error;
use crate::export::{ExportRequest, Format, export};

/// The export route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/verdicts/export", get(download))
}

/// What the export adds to the read filters.
#[derive(Debug, Deserialize)]
struct ExportOptions {
    /// `csv` or `jsonl` (default).
    format: Option<Format>,
    /// A tar with the images, `labels.json` and the table.
    #[serde(default)]
    images: bool,
}

/// `GET /v1/verdicts/export?since=&format=csv|jsonl&images=true&...`.
async fn download(State(state): State<AppState>, uri: Uri) -> Result<Response, Error> {
    let read: ReadOptions = parse_query(&uri)?;
    let options: ExportOptions = parse_query(&uri)?;
    let format = options.format.unwrap_or(Format::Jsonl);
    let query = read.query();
    let labels = if options.images {
        let models = state
            .inspector
            .readiness()
            .models()
            .ok_or(Error::Unavailable(
                "models are loading; labels.json needs them",
            ))?;
        let model = models.get(query.filters.model.as_deref(), None)?;
        model.manifest.labels.clone()
    } else {
        Vec::new()
    };
    let (content_type, extension) = if options.images {
        ("application/x-tar", "tar")
    } else {
        (format.content_type(), format.extension())
    };
    let disposition = format!(
        "attachment; filename=\"kensa-verdicts-after-{}.{extension}\"",
        query.after
    );
    let body = Body::from_stream(export(
        state.verdicts.clone(),
        ExportRequest {
            query,
            format,
            images: options.images,
            labels,
        },
    ));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
