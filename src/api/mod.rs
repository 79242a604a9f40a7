//! Front doors: thin adapters from a wire format to the [`Inspector`](crate::inspector::Inspector).

pub mod grpc;
pub mod grpc_server;
pub mod http;
pub mod mes;
pub mod proto;
pub mod v2;

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
