//! kensa (検査): an online defect-classification service for AOI production lines.
//!
//! Stations send an image and a note; kensa answers with a verdict from a PFA+CMAF model
//! (vision encoder, text encoder, fusion head) served by ONNX Runtime with dynamic batching.
//! The request path is: [`api`] adapters → [`inspector::Inspector`] → [`batching`] queue and
//! worker → [`model::pipeline`] → [`verdict::Verdict`] → [`store`]; readers of stored verdicts
//! go through [`verdicts::Verdicts`]; people review them through [`reviews::Reviews`], see the
//! lines through [`stations::Stations`] and export them as training data with [`export`].

#![warn(missing_docs)]

pub mod access;
pub mod api;
pub mod batching;
pub mod config;
pub mod decision;
pub mod drift;
pub mod edge;
pub mod error;
pub mod export;
pub mod heatmap;
pub mod inspector;
pub mod metrics;
pub mod model;
pub mod ocr;
pub mod preprocess;
pub mod publish;
pub mod reviews;
pub mod server;
pub mod stations;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod transport;
pub mod verdict;
pub mod verdicts;
