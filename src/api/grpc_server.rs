//! Assembles the gRPC port: the native API, the Open Inference Protocol, the standard health
//! service (following readiness) and server reflection, with message limits from the body limit.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::grpc::{InspectionApi, InspectionServiceServer};
use super::proto::FILE_DESCRIPTOR_SET;
use super::state::AppState;
use super::v2::grpc::{GrpcInferenceServiceServer, InferenceApi};

/// The gRPC services and the handle that reports their health.
pub struct GrpcServices {
    /// Every service, ready to serve.
    pub routes: Routes,
    /// Flips `grpc.health.v1` between SERVING and NOT_SERVING.
    pub health: GrpcHealth,
}

/// Builds every gRPC service over what the HTTP handlers share; the body limit bounds each
/// message both ways, as it bounds an HTTP body. Health starts as NOT_SERVING.
pub async fn services(
    state: &AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<GrpcServices> {
    let max_message_bytes = state.max_body_bytes;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = GrpcHealth(reporter);
    health.set_ready(false).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let native = InspectionServiceServer::new(InspectionApi::new(
        Arc::clone(&state.inspector),
        state.verdicts.clone(),
        Arc::clone(&state.metrics),
        state.reviews.clone(),
        shutdown,
    ))
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes);
    let inference = GrpcInferenceServiceServer::new(InferenceApi::new(
        Arc::clone(&state.inspector),
        Arc::clone(&state.models),
    ))
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes);
    let routes = Routes::new(health_service)
        .add_service(native)
        .add_service(inference)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok(GrpcServices { routes, health })
}

/// The `grpc.health.v1` statuses of the server ("") and of each inference service.
#[derive(Clone)]
pub struct GrpcHealth(HealthReporter);

impl GrpcHealth {
    /// SERVING once the models are warm, NOT_SERVING before and while draining.
    pub async fn set_ready(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in [
            "",
            <InspectionServiceServer<InspectionApi> as NamedService>::NAME,
            <GrpcInferenceServiceServer<InferenceApi> as NamedService>::NAME,
        ] {
            self.0.set_service_status(service, status).await;
        }
    }
}
