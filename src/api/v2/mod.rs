//! The Open Inference Protocol (KServe V2, as implemented by Triton, KServe and MLServer) over
//! HTTP and gRPC: [`model`] is what both bindings share for inference and metadata,
//! [`management`] for configuration, statistics and the repository, [`tensors`] the tensor
//! encodings.

pub mod grpc;
pub mod http;
pub mod management;
pub mod model;
pub mod tensors;
