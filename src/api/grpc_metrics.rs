//! Request metrics for the gRPC port, as a tower layer on the tonic server: the same
//! `kensa_requests_total`, `kensa_request_duration_seconds` and `kensa_errors_total` as the
//! HTTP port, labelled with the protocol (`grpc`, `v2-grpc`, `grpc-health`,
//! `grpc-reflection`) and the full method name.
//!
//! A gRPC status travels in the response trailers (or, for an immediate error, in the
//! headers), so the response body is wrapped and the call is counted when its trailers pass
//! by; a stream the client abandons counts as `CANCELLED`. Latency is measured to the
//! response head, which for a unary call is its whole time and for a stream its start.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::error::GRPC_CODE_KEY;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};

/// Wraps every gRPC service in [`GrpcMetrics`].
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`GrpcMetricsLayer`] makes.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResponseBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let route = request.uri().path().to_string();
        let started = Instant::now();
        let metrics = Arc::clone(&self.metrics);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let call = Call {
                protocol: protocol(&route),
                route,
                metrics,
            };
            call.metrics
                .request_seconds
                .get_or_create(&RouteLabels {
                    protocol: call.protocol.to_string(),
                    route: call.route.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            let (parts, body) = response.into_parts();
            let early = Outcome::from_headers(&parts.headers);
            Ok(http::Response::from_parts(
                parts,
                MeteredBody {
                    inner: body,
                    call: Some(call),
                    early,
                },
            ))
        })
    }
}

/// The protocol label of a gRPC method path.
fn protocol(route: &str) -> &'static str {
    if route.starts_with("/inference.") {
        "v2-grpc"
    } else if route.starts_with("/grpc.health.") {
        "grpc-health"
    } else if route.starts_with("/grpc.reflection.") {
        "grpc-reflection"
    } else {
        "grpc"
    }
}

/// One call waiting for its outcome.
struct Call {
    protocol: &'static str,
    route: String,
    metrics: Arc<Metrics>,
}

impl Call {
    fn record(self, outcome: Outcome) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                protocol: self.protocol.to_string(),
                route: self.route,
                method: "POST".to_string(),
                status: outcome.status.to_string(),
            })
            .inc();
        if let Some(code) = outcome.code {
            self.metrics.count_error(self.protocol, &code);
        } else if outcome.status != "OK" && outcome.status != "CANCELLED" {
            self.metrics.count_error(self.protocol, "transport");
        }
    }
}

/// How a call ended: the gRPC status name and kensa's error code when there is one.
struct Outcome {
    status: &'static str,
    code: Option<String>,
}

impl Outcome {
    /// The outcome a `grpc-status` header or trailer states, if any.
    fn from_headers(headers: &HeaderMap) -> Option<Outcome> {
        let status = headers
            .get("grpc-status")?
            .to_str()
            .ok()?
            .parse::<i32>()
            .ok()?;
        Some(Outcome {
            status: status_name(status),
            code: headers
                .get(GRPC_CODE_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        })
    }
}

/// The canonical name of a gRPC status code.
fn status_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

pin_project_lite::pin_project! {
    /// A response body that records its call's outcome when the trailers pass, the body ends,
    /// or the client goes away first.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
        early: Option<Outcome>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(call) = this.call.take() {
                let outcome = this.early.take().unwrap_or(Outcome {
                    status: "CANCELLED",
                    code: None,
                });
                call.record(outcome);
            }
        }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    let outcome = Outcome::from_headers(trailers).unwrap_or(Outcome {
                        status: "OK",
                        code: None,
                    });
                    call.record(outcome);
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.record(this.early.take().unwrap_or(Outcome {
                        status: "OK",
                        code: None,
                    }));
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = this.call.take() {
                    call.record(Outcome {
                        status: "INTERNAL",
                        code: None,
                    });
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_get_their_canonical_names() {
        assert_eq!(status_name(0), "OK");
        assert_eq!(status_name(3), "INVALID_ARGUMENT");
        assert_eq!(status_name(16), "UNAUTHENTICATED");
        assert_eq!(status_name(42), "UNKNOWN");
        assert_eq!(
            protocol("/inference.GRPCInferenceService/ModelInfer"),
            "v2-grpc"
        );
        assert_eq!(protocol("/kensa.v1.InspectionService/Inspect"), "grpc");
    }
}
