//! The operator's HTTP routes: the page ([`super::page`]), the line overview, reviews, and the
//! heat map of a stored verdict. What each needs is in [`crate::access::scopes::HTTP_ROUTES`].

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::extract::{Path, Query};
use super::page;
use super::state::AppState;
use crate::access::Caller;
use crate::error::Error;
use crate::reviews::ReviewRequest;
use crate::stations::DEFAULT_WINDOW;

/// Largest review body: a label, a name and a comment of at most 2000 characters.
const MAX_REVIEW_BODY: usize = 64 << 10;

/// The operator routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(page::routes())
        .route("/v1/stations", get(stations))
        .route(
            "/v1/verdicts/{station_id}/{inspection_id}/review",
            post(review),
        )
        .route(
            "/v1/verdicts/{station_id}/{inspection_id}/heatmap",
            get(heatmap),
        )
}

/// Query options of the overview.
#[derive(Debug, Default, Deserialize)]
struct OverviewOptions {
    /// How far back the counts reach (`1h` by default, at most `24h`).
    window: Option<String>,
}

/// `GET /v1/stations`: every station with its newest verdict and its counts over the window.
async fn stations(
    State(state): State<AppState>,
    Query(options): Query<OverviewOptions>,
) -> Result<Response, Error> {
    let window = match options.window.as_deref() {
        None => DEFAULT_WINDOW,
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            Error::BadRequest(format!("window must be like 1h or 30m, not {text:?}: {e}"))
        })?,
    };
    let overview = state.stations.overview(window).await?;
    Ok(axum::Json(overview).into_response())
}

/// `POST /v1/verdicts/{station_id}/{inspection_id}/review` with `{label, reviewer, comment}`:
/// 201 with the stored review, or 200 when this reviewer had given exactly this review.
async fn review(
    State(state): State<AppState>,
    Path((station_id, inspection_id)): Path<(String, String)>,
    request: Request,
) -> Result<Response, Error> {
    let caller = Caller::of(request.extensions());
    let body: Bytes = state.body_within(request, MAX_REVIEW_BODY).await?;
    let asked: ReviewRequest = serde_json::from_slice(&body).map_err(|e| {
        Error::BadRequest(format!(
            "a review is JSON {{\"label\", \"reviewer\", \"comment\"}}: {e}"
        ))
    })?;
    let reviewed = state
        .reviews
        .review(&station_id, &inspection_id, asked.by(&caller))
        .await?;
    let mut headers = HeaderMap::new();
    let status = if reviewed.replayed {
        headers.insert("x-kensa-replayed", HeaderValue::from_static("true"));
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, headers, axum::Json(reviewed.review)).into_response())
}

/// `GET /v1/verdicts/{station_id}/{inspection_id}/heatmap`: the stored verdict's attention drawn
/// over its retained image (404 `image_not_retained` without one).
async fn heatmap(
    State(state): State<AppState>,
    Path((station_id, inspection_id)): Path<(String, String)>,
) -> Result<Response, Error> {
    let stored = state.verdicts.get(&station_id, &inspection_id).await?;
    let image = state.verdicts.image(&station_id, &inspection_id).await?;
    let png = state
        .inspector
        .render_heatmap(&Bytes::from(image), &stored.verdict)
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            // A stored verdict and its image never change.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=86400"),
            ),
        ],
        png,
    )
        .into_response())
}
