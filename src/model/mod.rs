//! Models: the manifest contract, ONNX Runtime sessions, and the loaded repository.

pub mod manifest;
pub mod pipeline;
pub mod registry;
pub mod runtime;
