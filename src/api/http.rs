//! The HTTP port: every route module assembled into one router, with the access gate and
//! request metrics on every route and the JSON error format for paths and methods no route
//! takes.

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use tower_http::trace::TraceLayer;

use super::state::AppState;
use super::{export, inspections, operator, ops, request_id, v2, verdicts};
use crate::access::scopes;
use crate::error::{Error, ErrorCode};
use crate::metrics::{RequestLabels, RouteLabels};

/// The HTTP routes: inspections, verdict reads and export, the operator's page and reviews,
/// ops, and the Open Inference Protocol's `/v2`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(inspections::routes())
        .merge(verdicts::routes())
        .merge(export::routes())
        .merge(operator::routes())
        .merge(ops::routes())
        .merge(v2::http::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(request_id::propagate_layer())
        .layer(TraceLayer::new_for_http().make_span_with(request_id::request_span))
        .layer(request_id::set_layer())
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> Error {
    Error::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn wrong_method(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// Lets a request through the access gate (its route's row in [`scopes::HTTP_ROUTES`], the
/// caller's token or client certificate, the rate and in-flight limits) and hands the caller on
/// to the handler.
async fn guard(State(state): State<AppState>, mut request: Request<Body>, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let requirement = scopes::http(request.method().as_str(), route.as_deref());
    let admitted = state
        .gate
        .admit_request(requirement, request.headers(), request.extensions());
    match admitted {
        Ok(admitted) => {
            request.extensions_mut().insert(admitted.caller.clone());
            let response = next.run(request).await;
            drop(admitted);
            response
        }
        Err(error) => error.into_response(),
    }
}

/// Counts and times every request by its route template, and counts error answers by code.
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
    let protocol = if route.starts_with("/v2") {
        "v2-http"
    } else {
        "http"
    };
    let method = request.method().to_string();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            protocol: protocol.to_string(),
            route: route.clone(),
            method,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    metrics
        .request_seconds
        .get_or_create(&RouteLabels {
            protocol: protocol.to_string(),
            route,
        })
        .observe(started.elapsed().as_secs_f64());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        metrics.count_error(protocol, code);
    }
    response
}
