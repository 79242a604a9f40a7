//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`). Inputs come as
//! `raw_input_contents` (what tritonclient sends) or typed `bytes_contents`; outputs always go
//! out as `raw_output_contents`, like Triton's. Errors are statuses from the one [`Error`]
//! mapping.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::model::{self, EXTENSIONS, InferCall, SERVER_NAME};
use super::tensors::{InputTensor, TensorData};
use crate::access::Caller;
use crate::api::grpc_status;
use crate::api::proto::inference as pb;
use crate::error::Error;
use crate::inspector::Inspector;

pub use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The `inference.GRPCInferenceService` implementation.
pub struct InferenceApi {
    inspector: Arc<Inspector>,
}

impl InferenceApi {
    /// Serves the protocol through `inspector`.
    pub fn new(inspector: Arc<Inspector>) -> Self {
        InferenceApi { inspector }
    }
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for InferenceApi {
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
