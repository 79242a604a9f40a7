//! The Open Inference Protocol's model-management and introspection parts that tritonclient
//! calls, shared by the HTTP and gRPC bindings: model configuration, statistics, the
//! repository index, and load/unload. kensa serves what its repository folder holds, so a load
//! reads the whole repository again (as SIGHUP does) and an unload is refused with what to do.

use super::model::{self, PLATFORM, TensorSpec};
use super::tensors::FP32;
use crate::error::Error;
use crate::inspector::Inspector;
use crate::model::lifecycle::ModelLifecycle;
use crate::model::stats::StatsSnapshot;

/// Backend name in a model's configuration.
pub const BACKEND: &str = "kensa";

/// One tensor of a model's configuration: dims are those of one batch element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigTensor {
    /// Its name.
    pub name: &'static str,
    /// `TYPE_STRING` or `TYPE_FP32`.
    pub data_type: &'static str,
    /// Shape of one batch element.
    pub dims: Vec<i64>,
    /// An input a request may leave out.
    pub optional: bool,
}

/// A model's configuration as Triton describes one.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model's name.
    pub name: String,
    /// Largest batch the batcher forms.
    pub max_batch_size: usize,
    /// Longest a batch waits to fill, in microseconds.
    pub max_queue_delay_us: u64,
    /// Its inputs.
    pub inputs: Vec<ConfigTensor>,
    /// Its outputs.
    pub outputs: Vec<ConfigTensor>,
}

impl ModelConfig {
    /// The configuration as Triton's HTTP API writes it.
    pub fn to_json(&self) -> serde_json::Value {
        let tensors = |tensors: &[ConfigTensor], inputs: bool| -> Vec<serde_json::Value> {
            tensors
                .iter()
                .map(|t| {
                    let mut value = serde_json::json!({
                        "name": t.name,
                        "data_type": t.data_type,
                        "dims": t.dims,
                    });
                    if inputs {
                        value["optional"] = t.optional.into();
                    }
                    value
                })
                .collect()
        };
        serde_json::json!({
            "name": self.name,
            "platform": PLATFORM,
            "backend": BACKEND,
            "max_batch_size": self.max_batch_size,
            "input": tensors(&self.inputs, true),
            "output": tensors(&self.outputs, false),
            "dynamic_batching": {
                "max_queue_delay_microseconds": self.max_queue_delay_us,
            },
        })
    }
}

fn config_tensor(spec: TensorSpec) -> ConfigTensor {
    ConfigTensor {
        name: spec.name,
        data_type: if spec.datatype == FP32 {
            "TYPE_FP32"
        } else {
            "TYPE_STRING"
        },
        dims: match spec.shape.get(1..) {
            Some(rest) if !rest.is_empty() => rest.to_vec(),
            _ => vec![1],
        },
        optional: spec.optional,
    }
}

/// The named model's configuration.
pub fn model_config(
    inspector: &Inspector,
    name: &str,
    version: &str,
) -> Result<ModelConfig, Error> {
    let loaded = model::resolve(inspector, name, version)?;
    let spec = model::model_metadata(inspector, name, version)?;
    let queue = loaded.queue.config();
    Ok(ModelConfig {
        name: loaded.name.clone(),
        max_batch_size: queue.max_batch_size,
        max_queue_delay_us: u64::try_from(queue.max_delay.as_micros()).unwrap_or(u64::MAX),
        inputs: spec.inputs.into_iter().map(config_tensor).collect(),
        outputs: spec.outputs.into_iter().map(config_tensor).collect(),
    })
}

/// One version's statistics.
#[derive(Debug, Clone)]
pub struct VersionStatistics {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Its counters.
    pub stats: StatsSnapshot,
    /// Batches run.
    pub execution_count: u64,
}

impl VersionStatistics {
    /// As Triton's HTTP API writes one entry of `model_stats`.
    pub fn to_json(&self) -> serde_json::Value {
        let zero = serde_json::json!({"count": 0, "ns": 0});
        serde_json::json!({
            "name": self.name,
            "version": self.version,
            "last_inference": self.stats.last_inference_ms,
            "inference_count": self.stats.success.count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.stats.success,
                "fail": self.stats.fail,
                "queue": self.stats.queue,
                "compute_input": zero,
                "compute_infer": self.stats.compute,
                "compute_output": zero,
            },
            "batch_stats": [],
        })
    }
}

/// Statistics of every version of `name` (every model when empty), or of one version.
pub fn statistics(
    inspector: &Inspector,
    name: &str,
    version: &str,
) -> Result<Vec<VersionStatistics>, Error> {
    let models = inspector
        .readiness()
        .models()
        .ok_or(Error::Unavailable("models are loading"))?;
    let chosen = if name.is_empty() {
        models.iter().cloned().collect()
    } else if version.is_empty() {
        let versions: Vec<_> = models.iter().filter(|m| m.name == name).cloned().collect();
        if versions.is_empty() {
            return Err(Error::ModelNotFound(name.to_string()));
        }
        versions
    } else {
        vec![model::resolve(inspector, name, version)?]
    };
    Ok(chosen
        .iter()
        .map(|m| VersionStatistics {
            name: m.name.clone(),
            version: m.version.to_string(),
            stats: m.stats.snapshot(),
            execution_count: m.queue.stats().batches(),
        })
        .collect())
}

/// One row of the repository index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why a version is unavailable; empty when ready.
    pub reason: String,
}

/// Every version that serves, and every version folder that failed to load (unless
/// `ready_only`).
pub fn repository_index(
    inspector: &Inspector,
    lifecycle: &ModelLifecycle,
    ready_only: bool,
) -> Vec<IndexEntry> {
    let mut index: Vec<IndexEntry> = inspector
        .readiness()
        .models()
        .map(|models| {
            models
                .iter()
                .map(|m| IndexEntry {
                    name: m.name.clone(),
                    version: m.version.to_string(),
                    state: "READY",
                    reason: String::new(),
                })
                .collect()
        })
        .unwrap_or_default();
    if !ready_only {
        for failure in lifecycle.failures() {
            if !failure.previous_serving {
                index.push(IndexEntry {
                    name: failure.model,
                    version: failure.version.to_string(),
                    state: "UNAVAILABLE",
                    reason: failure.error,
                });
            }
        }
        index.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    }
    index
}

/// Reads the repository again; fine when `name` serves afterwards, otherwise why not.
pub async fn load(
    inspector: &Inspector,
    lifecycle: &ModelLifecycle,
    name: &str,
) -> Result<(), Error> {
    let report = lifecycle.reload().await?;
    if let Some(failure) = report.failed.iter().find(|f| f.model == name) {
        return Err(Error::BadRequest(format!(
            "{name} version {} failed to load: {}",
            failure.version, failure.error
        )));
    }
    model::model_ready(inspector, name, "").map(|_| ())
}

/// What an unload request gets.
pub fn unload(name: &str) -> Error {
    Error::BadRequest(format!(
        "kensa serves what the model repository holds: to unload {name}, move its version \
         folders out of the repository and reload (SIGHUP, POST /v1/models/reload or the poll)"
    ))
}
