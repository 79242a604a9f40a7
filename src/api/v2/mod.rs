//! The Open Inference Protocol (KServe V2, as implemented by Triton, KServe and MLServer) over
//! HTTP and gRPC: [`model`] is what both bindings share, [`tensors`] the tensor encodings.

pub mod grpc;
pub mod http;
pub mod model;
pub mod tensors;
