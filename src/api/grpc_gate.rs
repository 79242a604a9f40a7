//! The access gate in front of every gRPC service, reflection and health included: a tower
//! layer on the gRPC server that looks the method up in [`scopes::GRPC_METHODS`], checks the
//! `authorization` metadata (or the TLS client certificate) and hands the caller on to the
//! handlers in the request's extensions.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{Request, Response};
use tower::{Layer, Service};

use super::grpc_status;
use crate::access::{Gate, scopes};

/// The layer; see the module.
#[derive(Clone)]
pub struct GrpcGateLayer {
    gate: Arc<Gate>,
}

impl GrpcGateLayer {
    /// Guards every call with `gate`.
    pub fn new(gate: Arc<Gate>) -> GrpcGateLayer {
        GrpcGateLayer { gate }
    }
}

impl<S> Layer<S> for GrpcGateLayer {
    type Service = GrpcGate<S>;

    fn layer(&self, inner: S) -> GrpcGate<S> {
        GrpcGate {
            inner,
            gate: Arc::clone(&self.gate),
        }
    }
}

/// The gated service.
#[derive(Clone)]
pub struct GrpcGate<S> {
    inner: S,
    gate: Arc<Gate>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<Request<B>> for GrpcGate<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let requirement = scopes::grpc(request.uri().path());
        let admitted =
            self.gate
                .admit_request(requirement, request.headers(), request.extensions());
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(error) => {
                let response = grpc_status(&error).into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        request.extensions_mut().insert(admitted.caller.clone());
        // The clone that was polled ready serves this call (tower's clone-and-swap).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let response = inner.call(request).await;
            drop(admitted);
            response
        })
    }
}
