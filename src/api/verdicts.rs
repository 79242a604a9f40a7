//! `/v1/verdicts`: the MES reads over HTTP, a thin adapter over [`crate::verdicts`]: reads after
//! a cursor (with filters and long-poll), one verdict by its key, its retained image, and
//! Server-Sent Events from a cursor.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt as _};
use serde::Deserialize;

use super::extract::{Path, parse_query};
use super::state::AppState;
use crate::decision::Disposition;
use crate::error::Error;
use crate::store::VerdictQuery;
use crate::verdicts::Filters;

/// The verdict routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/verdicts", get(list))
        .route("/v1/verdicts/stream", get(stream))
        .route("/v1/verdicts/{station_id}/{inspection_id}", get(one))
        .route(
            "/v1/verdicts/{station_id}/{inspection_id}/image",
            get(image),
        )
}

/// Query options of the reads (and of the export, which adds its own).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ReadOptions {
    /// Only verdicts after this cursor (0 or absent: from the oldest kept).
    since: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    station: Option<String>,
    line: Option<String>,
    lot: Option<String>,
    label: Option<String>,
    model: Option<String>,
    #[serde(default)]
    defect_only: bool,
    disposition: Option<Disposition>,
    /// Only reviewed units (true) or units no one has reviewed (false).
    reviewed: Option<bool>,
    /// Long-poll: when nothing is there yet, wait up to this long (`30s`, `500ms` or seconds).
    wait: Option<String>,
}

impl ReadOptions {
    pub(super) fn query(&self) -> VerdictQuery {
        let filters = Filters {
            station: self.station.clone(),
            line: self.line.clone(),
            lot: self.lot.clone(),
            label: self.label.clone(),
            model: self.model.clone(),
            defect_only: self.defect_only,
            disposition: self.disposition,
            reviewed: self.reviewed,
        };
        filters.after(self.since.unwrap_or(0), self.limit)
    }

    fn wait(&self) -> Result<Duration, Error> {
        let Some(wait) = self.wait.as_deref() else {
            return Ok(Duration::ZERO);
        };
        match wait.parse::<u64>() {
            Ok(seconds) => Ok(Duration::from_secs(seconds)),
            Err(_) => humantime::parse_duration(wait).map_err(|e| {
                Error::BadRequest(format!("wait must be like 30s or 500ms, not {wait:?}: {e}"))
            }),
        }
    }
}

/// `GET /v1/verdicts`: `{"verdicts": [...], "next_cursor": N}`; pass `next_cursor` as `since`
/// next time.
async fn list(State(state): State<AppState>, uri: Uri) -> Result<Response, Error> {
    let options: ReadOptions = parse_query(&uri)?;
    let page = state
        .verdicts
        .page(&options.query(), options.wait()?)
        .await?;
    Ok(axum::Json(page).into_response())
}

/// `GET /v1/verdicts/stream`: Server-Sent Events, one `verdict` event per stored verdict with
/// its cursor as the event id, from `since` (or the `Last-Event-ID` a reconnecting client
/// sends). Ends with an `error` event when the server drains; the client reconnects with its
/// last id.
async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Error> {
    let mut query = parse_query::<ReadOptions>(&uri)?.query();
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
    {
        query.after = last;
    }
    let events = state.verdicts.follow(query)?.map(|item| {
        Ok(match item {
            Ok(stored) => match Event::default()
                .id(stored.cursor.to_string())
                .event("verdict")
                .json_data(&stored)
            {
                Ok(event) => event,
                Err(error) => Event::default().event("error").data(error.to_string()),
            },
            Err(error) => Event::default().event("error").data(error.to_string()),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `GET /v1/verdicts/{station_id}/{inspection_id}`: the stored verdict.
async fn one(
    State(state): State<AppState>,
    Path((station_id, inspection_id)): Path<(String, String)>,
) -> Result<Response, Error> {
    let stored = state.verdicts.get(&station_id, &inspection_id).await?;
    Ok(axum::Json(stored).into_response())
}

/// `GET /v1/verdicts/{station_id}/{inspection_id}/image`: the retained image (image retention).
async fn image(
    State(state): State<AppState>,
    Path((station_id, inspection_id)): Path<(String, String)>,
) -> Result<Response, Error> {
    let bytes = state.verdicts.image(&station_id, &inspection_id).await?;
    let mime = image::guess_format(&bytes).map_or("application/octet-stream", |f| f.to_mime_type());
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(mime))],
        bytes,
    )
        .into_response())
}
