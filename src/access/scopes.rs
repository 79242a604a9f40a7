//! What each operation requires, declared in one table per protocol: every HTTP route and every
//! gRPC method is looked up here and nowhere else, so adding a route means adding one row.

use std::fmt;

/// A permission a client token carries (or, for [`Requirement`], what an operation asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit inspections (native API and the Open Inference Protocol).
    Station,
    /// Read verdicts: lists, streams, exports, retained images.
    Mes,
    /// Review verdicts and use the operator page.
    Operator,
    /// Load, unload and reload models; configuration.
    Admin,
    /// Scrape `/metrics` when `--metrics-auth token`.
    Metrics,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Station => "station",
            Scope::Mes => "mes",
            Scope::Operator => "operator",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        })
    }
}

/// What an operation asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Anyone, without a token: liveness and readiness probes.
    Open,
    /// Any known client, whatever its scopes: model metadata, reflection.
    Known,
    /// A client holding this scope.
    Scope(Scope),
    /// `/metrics`: open or the `metrics` scope, as `--metrics-auth` says.
    Metrics,
}

use Requirement::{Known, Open};

const STATION: Requirement = Requirement::Scope(Scope::Station);
const MES: Requirement = Requirement::Scope(Scope::Mes);
const OPERATOR: Requirement = Requirement::Scope(Scope::Operator);
const ADMIN: Requirement = Requirement::Scope(Scope::Admin);

/// Every HTTP route (method, axum route template) and what it requires. The operator page's
/// shell is open (it holds no data and asks for a token when the API answers 401); what it shows
/// is read with the `mes` scope and a review needs `operator`.
pub const HTTP_ROUTES: &[(&str, &str, Requirement)] = &[
    ("POST", "/v1/inspections", STATION),
    ("GET", "/", Open),
    ("GET", "/ui/app.js", Open),
    ("GET", "/ui/app.css", Open),
    ("GET", "/v1/stations", MES),
    ("GET", "/v1/verdicts/export", MES),
    (
        "GET",
        "/v1/verdicts/{station_id}/{inspection_id}/heatmap",
        MES,
    ),
    (
        "POST",
        "/v1/verdicts/{station_id}/{inspection_id}/review",
        OPERATOR,
    ),
    ("GET", "/v1/verdicts", MES),
    ("GET", "/v1/verdicts/stream", MES),
    ("GET", "/v1/verdicts/{station_id}/{inspection_id}", MES),
    (
        "GET",
        "/v1/verdicts/{station_id}/{inspection_id}/image",
        MES,
    ),
    ("GET", "/v1/models", Known),
    ("POST", "/v1/models/reload", ADMIN),
    ("GET", "/healthz", Open),
    ("GET", "/readyz", Open),
    ("GET", "/metrics", Requirement::Metrics),
    ("GET", "/v2", Known),
    ("GET", "/v2/health/live", Open),
    ("GET", "/v2/health/ready", Open),
    ("GET", "/v2/models/{name}", Known),
    ("GET", "/v2/models/{name}/versions/{version}", Known),
    ("GET", "/v2/models/{name}/ready", Open),
    ("GET", "/v2/models/{name}/versions/{version}/ready", Open),
    ("GET", "/v2/models/{name}/config", Known),
    ("GET", "/v2/models/{name}/versions/{version}/config", Known),
    ("GET", "/v2/models/stats", Known),
    ("GET", "/v2/models/{name}/stats", Known),
    ("GET", "/v2/models/{name}/versions/{version}/stats", Known),
    ("POST", "/v2/repository/index", Known),
    ("POST", "/v2/repository/models/{name}/load", ADMIN),
    ("POST", "/v2/repository/models/{name}/unload", ADMIN),
    ("POST", "/v2/models/{name}/infer", STATION),
    (
        "POST",
        "/v2/models/{name}/versions/{version}/infer",
        STATION,
    ),
];

/// Every gRPC method (its HTTP/2 path) and what it requires, reflection and health included.
pub const GRPC_METHODS: &[(&str, Requirement)] = &[
    ("/kensa.v1.InspectionService/Inspect", STATION),
    ("/kensa.v1.InspectionService/InspectStream", STATION),
    ("/kensa.v1.InspectionService/GetVerdict", MES),
    ("/kensa.v1.InspectionService/WatchVerdicts", MES),
    ("/kensa.v1.InspectionService/ReviewVerdict", OPERATOR),
    ("/inference.GRPCInferenceService/ServerLive", Open),
    ("/inference.GRPCInferenceService/ServerReady", Open),
    ("/inference.GRPCInferenceService/ModelReady", Open),
    ("/inference.GRPCInferenceService/ServerMetadata", Known),
    ("/inference.GRPCInferenceService/ModelMetadata", Known),
    ("/inference.GRPCInferenceService/ModelInfer", STATION),
    ("/inference.GRPCInferenceService/ModelConfig", Known),
    ("/inference.GRPCInferenceService/ModelStatistics", Known),
    ("/inference.GRPCInferenceService/RepositoryIndex", Known),
    ("/inference.GRPCInferenceService/RepositoryModelLoad", ADMIN),
    (
        "/inference.GRPCInferenceService/RepositoryModelUnload",
        ADMIN,
    ),
    ("/grpc.health.v1.Health/Check", Open),
    ("/grpc.health.v1.Health/Watch", Open),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Known,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        Known,
    ),
];

/// What an HTTP request requires; a route missing from the table (or no route at all) asks for
/// a known client, so an unauthenticated caller learns nothing about which paths exist.
pub fn http(method: &str, route: Option<&str>) -> Requirement {
    route
        .and_then(|route| {
            HTTP_ROUTES
                .iter()
                .find(|(m, r, _)| *m == method && *r == route)
        })
        .map_or(Known, |(_, _, requirement)| *requirement)
}

/// What a gRPC call requires; unknown methods ask for a known client (tonic then answers
/// UNIMPLEMENTED).
pub fn grpc(path: &str) -> Requirement {
    GRPC_METHODS
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(Known, |(_, requirement)| *requirement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The table must name every method the gRPC port serves, so none falls back by accident.
    #[test]
    fn every_served_grpc_method_has_a_row() {
        let set =
            prost_types::FileDescriptorSet::decode(crate::api::proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut served = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    served.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        assert!(served.len() >= 10, "{served:?}");
        for path in served {
            assert!(
                GRPC_METHODS.iter().any(|(p, _)| *p == path),
                "{path} has no row in GRPC_METHODS"
            );
        }
    }

    #[test]
    fn unknown_routes_need_a_known_client() {
        assert_eq!(http("GET", Some("/healthz")), Open);
        assert_eq!(http("DELETE", Some("/healthz")), Known);
        assert_eq!(http("GET", None), Known);
        assert_eq!(grpc("/x.Y/Z"), Known);
        assert_eq!(grpc("/kensa.v1.InspectionService/WatchVerdicts"), MES);
    }
}
