//! Models: the manifest contract, ONNX Runtime sessions, and the loaded repository.

pub mod batch_cap;
pub mod lifecycle;
pub mod manifest;
pub mod pipeline;
pub mod profile;
pub mod registry;
pub mod routing;
pub mod runtime;
pub mod stats;
pub mod threading;
