//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`). Inputs come as
//! `raw_input_contents` (what tritonclient sends) or typed `bytes_contents`; outputs always go
//! out as `raw_output_contents`, like Triton's. Errors are statuses from the one [`Error`]
//! mapping.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::management::{self, BACKEND};
use super::model::{self, EXTENSIONS, InferCall, PLATFORM, SERVER_NAME};
use super::tensors::{InputTensor, TensorData};
use crate::access::Caller;
use crate::api::grpc_status;
use crate::api::proto::inference as pb;
use crate::error::Error;
use crate::inspector::Inspector;
use crate::model::lifecycle::ModelLifecycle;

pub use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The `inference.GRPCInferenceService` implementation.
pub struct InferenceApi {
    inspector: Arc<Inspector>,
    models: Arc<ModelLifecycle>,
}

impl InferenceApi {
    /// Serves the protocol through `inspector`; `models` answers the repository calls.
    pub fn new(inspector: Arc<Inspector>, models: Arc<ModelLifecycle>) -> Self {
        InferenceApi { inspector, models }
    }
}

fn data_type(name: &str) -> i32 {
    let kind = if name == "TYPE_FP32" {
        pb::model_config::DataType::TypeFp32
    } else {
        pb::model_config::DataType::TypeString
    };
    kind as i32
}

fn duration(stat: crate::model::stats::StatDuration) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: stat.count,
        ns: stat.ns,
    })
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for InferenceApi {
    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let request = request.into_inner();
        let config = management::model_config(&self.inspector, &request.name, &request.version)
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(pb::ModelConfig {
                name: config.name,
                platform: PLATFORM.to_string(),
                backend: BACKEND.to_string(),
                max_batch_size: i32::try_from(config.max_batch_size).unwrap_or(i32::MAX),
                input: config
                    .inputs
                    .into_iter()
                    .map(|t| pb::model_config::Input {
                        name: t.name.to_string(),
                        data_type: data_type(t.data_type),
                        dims: t.dims,
                        optional: t.optional,
                    })
                    .collect(),
                output: config
                    .outputs
                    .into_iter()
                    .map(|t| pb::model_config::Output {
                        name: t.name.to_string(),
                        data_type: data_type(t.data_type),
                        dims: t.dims,
                    })
                    .collect(),
                dynamic_batching: Some(pb::model_config::DynamicBatching {
                    preferred_batch_size: Vec::new(),
                    max_queue_delay_microseconds: config.max_queue_delay_us,
                }),
            }),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        let stats = management::statistics(&self.inspector, &request.name, &request.version)
            .map_err(|e| grpc_status(&e))?;
        let zero = crate::model::stats::StatDuration::default();
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: stats
                .into_iter()
                .map(|s| pb::ModelStatistics {
                    name: s.name,
                    version: s.version,
                    last_inference: s.stats.last_inference_ms,
                    inference_count: s.stats.success.count,
                    execution_count: s.execution_count,
                    inference_stats: Some(pb::InferStatistics {
                        success: duration(s.stats.success),
                        fail: duration(s.stats.fail),
                        queue: duration(s.stats.queue),
                        compute_input: duration(zero),
                        compute_infer: duration(s.stats.compute),
                        compute_output: duration(zero),
                    }),
                })
                .collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let ready = request.into_inner().ready;
        let index = management::repository_index(&self.inspector, &self.models, ready);
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: index
                .into_iter()
                .map(|e| pb::repository_index_response::ModelIndex {
                    name: e.name,
                    version: e.version,
                    state: e.state.to_string(),
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let name = request.into_inner().model_name;
        management::load(&self.inspector, &self.models, &name)
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let name = request.into_inner().model_name;
        Err(grpc_status(&management::unload(&name)))
    }

    async fn server_live(
        &self,
        _request: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = model::server_ready(&self.inspector);
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = model::model_ready(&self.inspector, &request.name, &request.version)
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let spec = model::model_metadata(&self.inspector, &request.name, &request.version)
            .map_err(|e| grpc_status(&e))?;
        let tensors = |specs: Vec<model::TensorSpec>| {
            specs
                .into_iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name.to_string(),
                    datatype: t.datatype.to_string(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: spec.name,
            versions: spec.versions,
            platform: spec.platform.to_string(),
            inputs: tensors(spec.inputs),
            outputs: tensors(spec.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let caller = Caller::of(request.extensions());
        let call = infer_call(request.into_inner(), caller).map_err(|e| grpc_status(&e))?;
        let outcome = model::infer(&self.inspector, call)
            .await
            .map_err(|e| grpc_status(&e))?;
        let raw_output_contents = outcome.outputs.iter().map(|o| o.raw().into()).collect();
        let outputs = outcome
            .outputs
            .into_iter()
            .map(|o| pb::model_infer_response::InferOutputTensor {
                name: o.name.to_string(),
                datatype: o.datatype().to_string(),
                shape: o.shape,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::ModelInferResponse {
            model_name: outcome.model_name,
            model_version: outcome.model_version,
            id: outcome.id,
            outputs,
            raw_output_contents,
            ..Default::default()
        }))
    }
}

/// The protocol-level request: raw contents pair with inputs by position.
fn infer_call(request: pb::ModelInferRequest, caller: Caller) -> Result<InferCall, Error> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(Error::BadRequest(format!(
            "{} raw_input_contents for {} inputs",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let inputs = request
        .inputs
        .into_iter()
        .map(|input| {
            let data = match (raw.next(), input.contents) {
                (Some(bytes), _) => TensorData::Raw(bytes),
                (None, Some(contents)) => TensorData::Elements(contents.bytes_contents),
                (None, None) => TensorData::Missing,
            };
            InputTensor {
                name: input.name,
                datatype: input.datatype,
                shape: input.shape,
                data,
            }
        })
        .collect();
    Ok(InferCall {
        model_name: request.model_name,
        model_version: request.model_version,
        id: request.id,
        inputs,
        outputs: request.outputs.into_iter().map(|o| o.name).collect(),
        caller,
    })
}
