//! The operator's routes: liveness, readiness, the loaded models and Prometheus metrics.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use super::state::AppState;
use crate::decision::DecisionPolicy;
use crate::error::Error;
use crate::model::batch_cap::BatchCap;
use crate::model::manifest::Label;
use crate::model::threading::ThreadingPlan;

/// The ops routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/reload", post(reload))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
    /// How `max_batch_size` was chosen: given, or measured at warm-up (with the rates).
    batch_cap: &'a BatchCap,
    max_queue_delay_ms: f64,
    batch_buckets: &'a [usize],
    threading: ThreadingPlan,
    description: &'a str,
    metrics: &'a serde_json::Value,
    /// The newest version's pass / fail / review rule with its overrides; null without one.
    decision: Option<&'a DecisionPolicy>,
    /// When the newest version started serving.
    loaded_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /v1/models`: every model with its versions, labels, provider, and how it batches and
/// threads (so an operator sees what kensa chose for the machine).
async fn models(State(state): State<AppState>) -> Response {
    let readiness = state.inspector.readiness();
    let ready = readiness.is_ready();
    let Some(repository) = readiness.models() else {
        return axum::Json(serde_json::json!({
            "models": [],
            "load_failures": state.models.failures(),
        }))
        .into_response();
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
            batch_cap: &model.batch_cap,
            max_queue_delay_ms: model.queue.config().max_delay.as_secs_f64() * 1000.0,
            batch_buckets: model.buckets.sizes(),
            threading: model.threading,
            description: &model.manifest.description,
            metrics: &model.manifest.metrics,
            decision: model.decision.as_ref(),
            loaded_at: model.loaded_at,
        });
    }
    axum::Json(serde_json::json!({
        "models": summaries,
        "load_failures": state.models.failures(),
        "version_policy": state.models.version_policy().to_string(),
        "version_routes": repository.routes(),
    }))
    .into_response()
}

/// `POST /v1/models/reload`: reads the model repository again now and answers what changed
/// (`loaded`, `unloaded`, `unchanged`, `failed`); a version that fails leaves what served.
async fn reload(State(state): State<AppState>) -> Result<Response, Error> {
    let report = state.models.reload().await?;
    Ok(axum::Json(report).into_response())
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

/// `GET /metrics`: the Prometheus text format 0.0.4, or OpenMetrics when the scraper's
/// `Accept` asks for it (Prometheus does; `promtool` and `curl` get the classic format).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.render_openmetrics(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.render_prometheus(),
        )
            .into_response()
    }
}
