//! Request ids and the request span on both ports: an `x-request-id` header (HTTP) or metadata
//! entry (gRPC) is taken from the client or generated, returned with the answer, and carried
//! by the span every log line of the request is written in, so a station's complaint, a log
//! line and a trace meet on one id.

use axum::http::{HeaderName, Request};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::telemetry;

/// The header (HTTP) and metadata key (gRPC) of the request id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets a request id on requests that came without one.
pub fn set_layer() -> SetRequestIdLayer<MakeRequestUuid> {
    SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid)
}

/// Copies the request id into the response.
pub fn propagate_layer() -> PropagateRequestIdLayer {
    PropagateRequestIdLayer::new(REQUEST_ID)
}

/// The span of one request, carrying its id, method and path, in the caller's trace when
/// the request names one.
pub fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    telemetry::continue_remote_trace(&span, request.headers());
    span
}
