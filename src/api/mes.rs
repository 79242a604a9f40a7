//! The MES API over the verdict store: reads after a cursor (with filters and long-poll), one
//! verdict by its key, its retained image, and Server-Sent Events from a cursor.
//!
//! Every read goes to the store in cursor (commit) order, so a consumer that keeps the last
//! cursor it processed and resumes after it misses nothing and sees nothing twice.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt as _};
use serde::Deserialize;

use super::http::AppState;
use crate::error::Error;
use crate::store::follow::{follow, wait_for};
use crate::store::{SharedStore, VerdictQuery};

/// Verdicts per read when the request names no limit.
const DEFAULT_LIMIT: usize = 100;
/// Longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The MES routes.
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

/// Query options of the reads.
#[derive(Debug, Default, Deserialize)]
struct ReadOptions {
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
    /// Long-poll: when nothing is there yet, wait up to this long (`30s`, `500ms` or seconds).
    wait: Option<String>,
}

impl ReadOptions {
    fn parse(uri: &Uri) -> Result<ReadOptions, Error> {
        Query::<ReadOptions>::try_from_uri(uri)
            .map(|Query(options)| options)
            .map_err(|rejection| Error::BadRequest(rejection.body_text()))
    }

    fn query(&self) -> VerdictQuery {
        VerdictQuery {
            after: self.since.unwrap_or(0),
            limit: self.limit.unwrap_or(DEFAULT_LIMIT),
            station: self.station.clone(),
            line: self.line.clone(),
            lot: self.lot.clone(),
            label: self.label.clone(),
            model: self.model.clone(),
            defect_only: self.defect_only,
        }
    }

    fn wait(&self) -> Result<Duration, Error> {
        let Some(wait) = self.wait.as_deref() else {
            return Ok(Duration::ZERO);
        };
        let parsed = match wait.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => humantime::parse_duration(wait).map_err(|e| {
                Error::BadRequest(format!("wait must be like 30s or 500ms, not {wait:?}: {e}"))
            })?,
        };
        Ok(parsed.min(MAX_WAIT))
    }
}

fn store(state: &AppState) -> Result<&SharedStore, Error> {
    state.inspector.store().ok_or(Error::Unavailable(
        "the verdict store is off (kensa runs with --store none)",
    ))
}

/// `GET /v1/verdicts`: `{"verdicts": [...], "next_cursor": N}`; pass `next_cursor` as `since`
/// next time.
async fn list(State(state): State<AppState>, uri: Uri) -> Result<Response, Error> {
    let store = store(&state)?;
    let options = ReadOptions::parse(&uri)?;
    let query = options.query();
    let wait = options.wait()?;
    let verdicts = if wait.is_zero() {
        store.list(&query).await?
    } else {
        tokio::select! {
            rows = wait_for(store, &query, wait) => rows?,
            () = state.shutdown.cancelled() => Vec::new(),
        }
    };
    let next_cursor = verdicts.last().map_or(query.after, |v| v.cursor);
    Ok(axum::Json(serde_json::json!({
        "verdicts": verdicts,
        "next_cursor": next_cursor,
    }))
    .into_response())
}

/// `GET /v1/verdicts/stream`: Server-Sent Events, one `verdict` event per stored verdict with
/// its cursor as the event id, from `since` (or the `Last-Event-ID` a reconnecting client
/// sends). Ends when the server drains; the client reconnects with its last id.
async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Error> {
    let store = store(&state)?.clone();
    let mut query = ReadOptions::parse(&uri)?.query();
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
    {
        query.after = last;
    }
    let events = follow(store, query)
        .map(|item| {
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
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `GET /v1/verdicts/{station_id}/{inspection_id}`: the stored verdict.
async fn one(
    State(state): State<AppState>,
    Path((station_id, inspection_id)): Path<(String, String)>,
) -> Result<Response, Error> {
    match store(&state)?.get(&station_id, &inspection_id).await? {
        Some(stored) => Ok(axum::Json(stored).into_response()),
        None => Err(Error::VerdictNotFound {
            station_id,
            inspection_id,
        }),
    }
}

/// `GET /v1/verdicts/{station_id}/{inspection_id}/image`: the retained image (image retention).
async fn image(
    State(state): State<AppState>,
    Path((station_id, inspection_id)): Path<(String, String)>,
) -> Result<Response, Error> {
    let store = store(&state)?;
    let Some(bytes) = store.image(&station_id, &inspection_id).await? else {
        if store.get(&station_id, &inspection_id).await?.is_none() {
            return Err(Error::VerdictNotFound {
                station_id,
                inspection_id,
            });
        }
        return Err(Error::ImageNotRetained {
            station_id,
            inspection_id,
        });
    };
    let mime = image::guess_format(&bytes).map_or("application/octet-stream", |f| f.to_mime_type());
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(mime))],
        bytes,
    )
        .into_response())
}
