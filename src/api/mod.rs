//! Front doors: thin adapters from a wire format to the [`Inspector`](crate::inspector::Inspector)
//! (inspections) and to [`Verdicts`](crate::verdicts::Verdicts) (stored verdicts).
//!
//! HTTP: [`http`] assembles [`inspections`], [`verdicts`], [`export`], [`operator`] (the page,
//! reviews, the line overview), [`ops`] and [`v2::http`] over the shared [`state`], reading query
//! strings and paths through [`extract`]. gRPC:
//! [`grpc_server`] assembles [`grpc`] and [`v2::grpc`] (with [`codec`]), guarded by
//! [`grpc_gate`].

pub mod codec;
pub mod export;
pub mod extract;
pub mod grpc;
pub mod grpc_gate;
pub mod grpc_metrics;
pub mod grpc_reviews;
pub mod grpc_server;
pub mod http;
pub mod inspections;
pub mod operator;
pub mod ops;
pub mod page;
pub mod proto;
pub mod request_id;
pub mod state;
pub mod v2;
pub mod verdicts;

use crate::error::Error;

/// The gRPC status of an error, logged as the HTTP answer is (see [`Error::log`]).
pub(crate) fn grpc_status(error: &Error) -> tonic::Status {
    error.log();
    tonic::Status::from(error)
}
