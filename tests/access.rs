//! Who may do what, on every protocol: the client file's tokens and scopes on native HTTP, the
//! Open Inference Protocol over HTTP and gRPC, native gRPC and reflection; stations bound to
//! their own ids; open probes; `/metrics` behind its own scope; reload; rate limits; CORS.

mod common;

use std::time::Duration;

use common::{TestServer, raw_grpc, samples, write_clients};
use kensa::access::scopes::{GRPC_METHODS, HTTP_ROUTES, Requirement};
use kensa::api::proto::kensa_v1 as pb;
use prost::Message as _;
use serde_json::{Value, json};

const STATION: &str = "station-token-0123456789abcdef";
const OTHER_STATION: &str = "station-token-fedcba9876543210";
const MES: &str = "mes-token-0123456789abcdefghij";
const SCRAPER: &str = "metrics-token-0123456789abcdefgh";
const LINE_LEAD: &str = "operator-token-0123456789abcdefg";

/// A server with a client file: aoi-07 (station, bound to aoi-07), aoi-08 (station, any
/// station), mes, prometheus (metrics), line-lead (operator and mes); `/metrics` behind its
/// scope.
async fn guarded(extra: &[&str]) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let clients = write_clients(
        dir.path(),
        &[
            ("aoi-07", STATION, &["station"], Some(&["aoi-07"])),
            ("aoi-08", OTHER_STATION, &["station"], None),
            ("mes", MES, &["mes"], None),
            ("prometheus", SCRAPER, &["metrics"], None),
            ("line-lead", LINE_LEAD, &["operator", "mes"], None),
        ],
    );
    let mut args = vec![
        format!("--auth-clients={}", clients.display()),
        "--metrics-auth=token".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (TestServer::start(&args).await, dir)
}

async fn submit(
    server: &TestServer,
    token: Option<&str>,
    station: &str,
    id: &str,
) -> reqwest::Response {
    let sample = &samples()[0];
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(sample.image.clone()).file_name("unit.png"),
        )
        .text("station_id", station.to_string())
        .text("inspection_id", id.to_string());
    let mut request = server
        .client
        .post(server.url("/v1/inspections"))
        .multipart(form);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = server.client.get(server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["code"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_ask_for_their_scope_and_stations_only_submit_for_themselves() {
    let (server, _dir) = guarded(&[]).await;

    let response = submit(&server, None, "aoi-07", "u1").await;
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(code(response).await, (401, "unauthenticated".into()));
    let response = submit(&server, Some("not-a-token-of-anyone-here"), "aoi-07", "u1").await;
    assert_eq!(code(response).await, (401, "unauthenticated".into()));
    assert_eq!(
        code(submit(&server, Some(MES), "aoi-07", "u1").await).await,
        (403, "forbidden".into())
    );
    assert_eq!(
        code(submit(&server, Some(STATION), "aoi-08", "u1").await).await,
        (403, "forbidden".into()),
        "a bound station cannot claim another station's keys"
    );
    assert_eq!(
        submit(&server, Some(STATION), "aoi-07", "u1")
            .await
            .status(),
        200
    );
    assert_eq!(
        submit(&server, Some(OTHER_STATION), "aoi-09", "u1")
            .await
            .status(),
        200
    );

    assert_eq!(code(get(&server, "/v1/verdicts", None).await).await.0, 401);
    assert_eq!(
        code(get(&server, "/v1/verdicts", Some(STATION)).await)
            .await
            .0,
        403
    );
    let page: Value = get(&server, "/v1/verdicts", Some(MES))
        .await
        .json()
        .await
        .unwrap();
    let stations: Vec<&str> = page["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["station_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        stations,
        ["aoi-07", "aoi-09"],
        "refused submissions stored nothing"
    );
    assert_eq!(
        get(&server, "/v1/verdicts/aoi-07/u1", Some(MES))
            .await
            .status(),
        200
    );
    let sse = get(&server, "/v1/verdicts/stream?since=0", Some(MES)).await;
    assert_eq!(sse.status(), 200);
    drop(sse);

    for open in [
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/kensa-demo/ready",
    ] {
        assert_eq!(
            get(&server, open, None).await.status(),
            200,
            "{open} is a probe"
        );
    }
    assert_eq!(code(get(&server, "/metrics", None).await).await.0, 401);
    assert_eq!(code(get(&server, "/metrics", Some(MES)).await).await.0, 403);
    assert_eq!(get(&server, "/metrics", Some(SCRAPER)).await.status(), 200);
    assert_eq!(code(get(&server, "/v1/models", None).await).await.0, 401);
    assert_eq!(
        get(&server, "/v1/models", Some(STATION)).await.status(),
        200
    );
    assert_eq!(
        code(get(&server, "/no/such/route", None).await).await.0,
        401
    );
    assert_eq!(
        code(get(&server, "/no/such/route", Some(MES)).await).await,
        (404, "route_not_found".into())
    );

    // Every row of the table that is not open refuses a caller without a token.
    for (method, route, requirement) in HTTP_ROUTES {
        let path = route
            .replace("{station_id}", "aoi-07")
            .replace("{inspection_id}", "u1")
            .replace("{name}", "kensa-demo")
            .replace("{version}", "1");
        let response = server
            .client
            .request(method.parse().unwrap(), server.url(&path))
            .send()
            .await
            .unwrap();
        let open = *requirement == Requirement::Open;
        assert_eq!(response.status() != 401, open, "{method} {route}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_need_the_operator_scope_and_carry_the_token_holders_name() {
    let (server, _dir) = guarded(&[]).await;
    let verdict: Value = submit(&server, Some(STATION), "aoi-07", "u1")
        .await
        .json()
        .await
        .unwrap();
    let label = verdict["label"].as_str().unwrap().to_string();
    let review = |token: &'static str| {
        server
            .client
            .post(server.url("/v1/verdicts/aoi-07/u1/review"))
            .bearer_auth(token)
            .json(&json!({"label": label, "reviewer": "someone else", "comment": "checked"}))
            .send()
    };
    assert_eq!(
        code(review(MES).await.unwrap()).await,
        (403, "forbidden".into())
    );
    let response = review(LINE_LEAD).await.unwrap();
    assert_eq!(response.status(), 201);
    let stored: Value = response.json().await.unwrap();
    assert_eq!(stored["reviewer"], "line-lead", "{stored}");
    // The page's shell is open; what it reads is not.
    assert_eq!(get(&server, "/", None).await.status(), 200);
    assert_eq!(code(get(&server, "/v1/stations", None).await).await.0, 401);
    assert_eq!(
        get(&server, "/v1/stations", Some(LINE_LEAD)).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_inference_protocol_binds_stations_too() {
    let (server, _dir) = guarded(&[]).await;
    let image = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &samples()[0].image,
    );
    let body = |station: Option<&str>| {
        let mut inputs = vec![
            json!({"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}),
            json!({"name": "note", "shape": [1], "datatype": "BYTES", "data": ["n"]}),
        ];
        if let Some(station) = station {
            inputs.push(
                json!({"name": "station_id", "shape": [1], "datatype": "BYTES", "data": [station]}),
            );
        }
        json!({ "inputs": inputs })
    };
    let infer = |token: Option<&'static str>, body: Value| {
        let mut request = server
            .client
            .post(server.url("/v2/models/kensa-demo/infer"))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(
        infer(None, body(Some("aoi-07"))).await.unwrap().status(),
        401
    );
    assert_eq!(
        infer(Some(MES), body(Some("aoi-07")))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        infer(Some(STATION), body(Some("aoi-07")))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        infer(Some(STATION), body(None)).await.unwrap().status(),
        403,
        "the default station is not aoi-07's"
    );
    assert_eq!(
        infer(Some(OTHER_STATION), body(None))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get(&server, "/v2/models/kensa-demo", None).await.status(),
        401
    );
    assert_eq!(
        get(&server, "/v2/models/kensa-demo", Some(STATION))
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_methods_and_reflection_ask_for_their_scope() {
    let (server, _dir) = guarded(&[]).await;
    let inspect = pb::InspectRequest {
        station_id: "aoi-07".into(),
        inspection_id: "g1".into(),
        image: samples()[0].image.clone().into(),
        ..Default::default()
    }
    .encode_to_vec();
    let path = "/kensa.v1.InspectionService/Inspect";
    let denied = |token| raw_grpc(&server, path, inspect.clone(), token);
    assert_eq!(
        denied(None).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        denied(Some(MES)).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let wrong_station = pb::InspectRequest {
        station_id: "aoi-08".into(),
        image: samples()[0].image.clone().into(),
        ..Default::default()
    }
    .encode_to_vec();
    let status = raw_grpc(&server, path, wrong_station, Some(STATION))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.metadata().get("kensa-error-code").unwrap(),
        "forbidden"
    );
    let verdict = pb::Verdict::decode(
        raw_grpc(&server, path, inspect.clone(), Some(STATION))
            .await
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert_eq!(verdict.inspection_id, "g1");

    let get = pb::GetVerdictRequest {
        station_id: "aoi-07".into(),
        inspection_id: "g1".into(),
    }
    .encode_to_vec();
    let get_path = "/kensa.v1.InspectionService/GetVerdict";
    assert_eq!(
        raw_grpc(&server, get_path, get.clone(), Some(STATION))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    assert!(raw_grpc(&server, get_path, get, Some(MES)).await.is_ok());

    let health = "/grpc.health.v1.Health/Check";
    assert!(
        raw_grpc(&server, health, Vec::new(), None).await.is_ok(),
        "health is open"
    );
    let live = "/inference.GRPCInferenceService/ServerLive";
    assert!(
        raw_grpc(&server, live, Vec::new(), None).await.is_ok(),
        "liveness is open"
    );

    // Reflection lists the services only to known clients (its stream is driven through tonic).
    let reflection = tonic_reflection_list(&server, None).await;
    assert_eq!(reflection.unwrap_err().code(), tonic::Code::Unauthenticated);
    let services = tonic_reflection_list(&server, Some(MES)).await.unwrap();
    assert!(
        services.iter().any(|s| s == "kensa.v1.InspectionService"),
        "{services:?}"
    );

    // Every row of the table that is not open refuses a caller without a token (the open
    // ones are the probes above; Health/Watch would stream forever).
    for (path, requirement) in GRPC_METHODS {
        if *requirement == Requirement::Open {
            continue;
        }
        let status = raw_grpc(&server, path, Vec::new(), None).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{path}");
    }
}

/// The services reflection lists, asked over `grpc.reflection.v1`.
async fn tonic_reflection_list(
    server: &TestServer,
    token: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut request = tonic::Request::new(tokio_stream::iter([ask]));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut answers = client.server_reflection_info(request).await?.into_inner();
    let answer = answers.message().await?.expect("one answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_file_reloads_and_a_broken_one_keeps_the_clients_in_force() {
    let (server, dir) = guarded(&[]).await;
    assert_eq!(get(&server, "/v1/verdicts", Some(MES)).await.status(), 200);
    let rotated = "rotated-mes-token-abcdefghijklmnop";
    write_clients(dir.path(), &[("mes", rotated, &["mes"], None)]);
    server.server.reloader().reload();
    assert_eq!(
        get(&server, "/v1/verdicts", Some(MES)).await.status(),
        401,
        "the old token is gone"
    );
    assert_eq!(
        get(&server, "/v1/verdicts", Some(rotated)).await.status(),
        200
    );
    std::fs::write(
        dir.path().join("clients.toml"),
        "[[client]]\nname = \"broken\"\n",
    )
    .unwrap();
    server.server.reloader().reload();
    assert_eq!(
        get(&server, "/v1/verdicts", Some(rotated)).await.status(),
        200,
        "a broken file changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_rate_gets_429_and_others_and_probes_pass() {
    let (server, _dir) = guarded(&["--rate-limit=1", "--rate-burst=3"]).await;
    for _ in 0..3 {
        assert_eq!(get(&server, "/v1/models", Some(MES)).await.status(), 200);
    }
    let limited = get(&server, "/v1/models", Some(MES)).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(code(limited).await, (429, "rate_limited".into()));
    assert_eq!(
        get(&server, "/v1/models", Some(STATION)).await.status(),
        200,
        "another client is not limited"
    );
    assert_eq!(
        get(&server, "/healthz", None).await.status(),
        200,
        "probes are not limited"
    );
    let status = raw_grpc(
        &server,
        "/inference.GRPCInferenceService/ServerMetadata",
        Vec::new(),
        Some(MES),
    )
    .await
    .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "the same bucket on gRPC"
    );
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&server, "/v1/models", Some(MES)).await.status(),
        200,
        "the bucket refills"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_the_listed_origins() {
    let server = TestServer::start(&["--cors-origins=https://line3.plant.example"]).await;
    let preflight = |origin: &'static str| {
        server
            .client
            .request(reqwest::Method::OPTIONS, server.url("/v1/verdicts"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://line3.plant.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://line3.plant.example"
    );
    let refused = preflight("https://elsewhere.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let plain = TestServer::start(&[]).await;
    let response = plain
        .client
        .get(plain.url("/v1/verdicts"))
        .header("origin", "https://line3.plant.example")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "no CORS by default"
    );
}
