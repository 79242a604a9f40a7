//! Front doors: thin adapters from a wire format to the [`Inspector`](crate::inspector::Inspector)
//! (inspections) and to [`Verdicts`](crate::verdicts::Verdicts) (stored verdicts).
//!
//! HTTP: [`http`] assembles [`inspections`], [`verdicts`], [`ops`] and [`v2::http`] over the
//! shared [`state`]. gRPC: [`grpc_server`] assembles [`grpc`] and [`v2::grpc`] (with
//! [`codec`]), guarded by [`grpc_gate`].

pub mod codec;
pub mod grpc;
pub mod grpc_gate;
pub mod grpc_server;
pub mod http;
pub mod inspections;
pub mod ops;
pub mod proto;
pub mod state;
pub mod v2;
pub mod verdicts;

use crate::error::Error;

/// The gRPC status of an error, logging it first when it is the server's fault (the gRPC twin of
/// the HTTP adapter's error response).
pub(crate) fn grpc_status(error: &Error) -> tonic::Status {
    let status = tonic::Status::from(error);
    if status.code() == tonic::Code::Internal {
        tracing::error!(%error, code = error.code(), "gRPC request failed");
    }
    status
}
