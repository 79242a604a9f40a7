//! The Open Inference Protocol over HTTP (JSON and the binary tensor extension) and gRPC against
//! a real server, real ONNX Runtime and the shipped demo model; bad tensors get clear errors.

mod common;

use base64::Engine as _;
use common::{Sample, TestServer, label_names, length_prefixed, samples};
use kensa::api::proto::inference as pb;
use kensa::verdict::Verdict;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde_json::{Value, json};

const MODEL: &str = "kensa-demo";

fn split_length_prefixed(mut raw: &[u8]) -> Vec<Vec<u8>> {
    let mut elements = Vec::new();
    while !raw.is_empty() {
        let length = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        elements.push(raw[4..4 + length].to_vec());
        raw = &raw[4 + length..];
    }
    elements
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

async fn native(server: &TestServer, sample: &Sample) -> Verdict {
    server.inspect(sample, &[]).await.json().await.unwrap()
}

/// The native verdict's probabilities in manifest label order.
fn ordered(verdict: &Verdict) -> Vec<f32> {
    label_names()
        .iter()
        .map(|l| verdict.probabilities[l])
        .collect()
}

async fn post_json(server: &TestServer, body: &Value) -> reqwest::Response {
    server
        .client
        .post(server.url(&format!("/v2/models/{MODEL}/infer")))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Posts a binary-extension request: `header` JSON then `binary`.
async fn post_binary(server: &TestServer, header: &Value, binary: &[u8]) -> reqwest::Response {
    let header = header.to_string().into_bytes();
    let mut body = header.clone();
    body.extend_from_slice(binary);
    server
        .client
        .post(server.url(&format!("/v2/models/{MODEL}/versions/1/infer")))
        .header("inference-header-content-length", header.len())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn error_of(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    body["error"].as_str().expect("error message").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_and_metadata() {
    let server = TestServer::start(&[]).await;
    let get = |path: &str| server.client.get(server.url(path)).send();
    assert_eq!(get("/v2/health/live").await.unwrap().status(), 200);
    assert_eq!(get("/v2/health/ready").await.unwrap().status(), 200);
    assert_eq!(
        get(&format!("/v2/models/{MODEL}/ready"))
            .await
            .unwrap()
            .status(),
        200
    );
    let server_metadata: Value = get("/v2").await.unwrap().json().await.unwrap();
    assert_eq!(server_metadata["name"], "kensa");
    assert_eq!(server_metadata["extensions"], json!(["binary_tensor_data"]));

    for path in [
        format!("/v2/models/{MODEL}"),
        format!("/v2/models/{MODEL}/versions/1"),
    ] {
        let metadata: Value = get(&path).await.unwrap().json().await.unwrap();
        assert_eq!(metadata["name"], MODEL);
        assert_eq!(metadata["versions"], json!(["1"]));
        let inputs: Vec<&str> = metadata["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(inputs, ["image", "note", "station_id", "inspection_id"]);
        let optional: Vec<bool> = metadata["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["optional"] == json!(true))
            .collect();
        assert_eq!(
            optional,
            [false, true, true, true],
            "only the image is required"
        );
        for input in metadata["inputs"].as_array().unwrap() {
            assert_eq!(
                input["shape"],
                json!([-1, 1]),
                "Triton's form: batch, one element"
            );
        }
        assert_eq!(metadata["outputs"][2]["name"], "probabilities");
        assert_eq!(metadata["outputs"][2]["shape"], json!([-1, 5]));
        assert_eq!(metadata["outputs"][3]["shape"], json!([-1, 7, 7]));
    }
    let missing = get("/v2/models/nope").await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("nope"));
    assert_eq!(
        get(&format!("/v2/models/{MODEL}/versions/9/ready"))
            .await
            .unwrap()
            .status(),
        404
    );
}

/// `[N, 1]`, the shape metadata announces (what perf_analyzer sends), answers like `[N]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_shaped_n_by_one_answer_like_n() {
    let server = TestServer::start(&[]).await;
    let sample = &samples()[3];
    let image = base64::engine::general_purpose::STANDARD.encode(&sample.image);
    let mut labels = Vec::new();
    for shape in [json!([1]), json!([1, 1])] {
        let body = json!({
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": shape, "data": [image]},
                {"name": "note", "datatype": "BYTES", "shape": shape, "data": [sample.note]},
            ],
        });
        let response = post_json(&server, &body).await;
        assert_eq!(response.status(), 200, "shape {shape}");
        let answer: Value = response.json().await.unwrap();
        labels.push(answer["outputs"][0]["data"].clone());
    }
    assert_eq!(labels[0], labels[1]);
    assert_eq!(labels[0], json!([sample.label]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_inference_equals_the_native_verdict() {
    let server = TestServer::start(&[]).await;
    let sample = &samples()[3];
    let expected = native(&server, sample).await;
    let body = json!({
        "id": "req-1",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1],
             "data": [base64::engine::general_purpose::STANDARD.encode(&sample.image)]},
            {"name": "note", "datatype": "BYTES", "shape": [1], "data": [sample.note]},
            {"name": "inspection_id", "datatype": "BYTES", "shape": [1], "data": ["v2-json"]},
        ],
    });
    let response = post_json(&server, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["id"], "req-1");
    assert_eq!(answer["model_name"], MODEL);
    assert_eq!(answer["model_version"], "1");
    let output = |name: &str| {
        answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("output {name}"))
            .clone()
    };
    assert_eq!(output("label")["data"], json!([expected.label]));
    assert_eq!(output("label")["datatype"], "BYTES");
    assert_eq!(output("inspection_id")["data"], json!(["v2-json"]));
    assert_eq!(
        output("confidence")["data"][0].as_f64().unwrap() as f32,
        expected.confidence
    );
    assert_eq!(output("probabilities")["shape"], json!([1, 5]));
    let probabilities: Vec<f32> = output("probabilities")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(probabilities, ordered(&expected));
    assert_eq!(output("attention")["shape"], json!([1, 7, 7]));
}

/// Three images in one binary request ([3]), outputs asked for in binary except the label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_binary_batch_equals_native_verdicts() {
    let server = TestServer::start(&["--max-queue-delay=20ms"]).await;
    let samples: Vec<Sample> = samples().into_iter().take(3).collect();
    let mut expected = Vec::new();
    for sample in &samples {
        expected.push(native(&server, sample).await);
    }
    let images = length_prefixed(&samples.iter().map(|s| &s.image[..]).collect::<Vec<_>>());
    let notes = length_prefixed(
        &samples
            .iter()
            .map(|s| s.note.as_bytes())
            .collect::<Vec<_>>(),
    );
    let header = json!({
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [3],
             "parameters": {"binary_data_size": images.len()}},
            {"name": "note", "datatype": "BYTES", "shape": [3],
             "parameters": {"binary_data_size": notes.len()}},
            {"name": "station_id", "datatype": "BYTES", "shape": [3],
             "data": ["aoi-1", "aoi-2", "aoi-3"]},
        ],
        "outputs": [
            {"name": "label", "parameters": {"binary_data": false}},
            {"name": "probabilities", "parameters": {"binary_data": true}},
            {"name": "inspection_id", "parameters": {"binary_data": true}},
        ],
    });
    let mut binary = images;
    binary.extend_from_slice(&notes);
    let response = post_binary(&server, &header, &binary).await;
    assert_eq!(response.status(), 200);
    let json_length: usize = response.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.bytes().await.unwrap();
    let answer: Value = serde_json::from_slice(&body[..json_length]).unwrap();
    let outputs = answer["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 3, "only what was asked for");
    assert_eq!(outputs[0]["name"], "label");
    let labels: Vec<&str> = outputs[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        expected
            .iter()
            .map(|v| v.label.as_str())
            .collect::<Vec<_>>()
    );
    let probabilities_size = outputs[1]["parameters"]["binary_data_size"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(outputs[1]["shape"], json!([3, 5]));
    let rest = &body[json_length..];
    let probabilities = floats(&rest[..probabilities_size]);
    for (i, verdict) in expected.iter().enumerate() {
        let row = &probabilities[i * 5..(i + 1) * 5];
        for (got, want) in row.iter().zip(ordered(verdict)) {
            assert!((got - want).abs() < 1e-5, "{i}: {got} vs {want}");
        }
    }
    let ids = split_length_prefixed(&rest[probabilities_size..]);
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| !id.is_empty()), "generated ids");
}

/// A generic load tool sends only the inputs metadata does not mark optional: the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_alone_is_a_complete_request() {
    let server = TestServer::start(&[]).await;
    let sample = &samples()[0];
    let image = base64::engine::general_purpose::STANDARD.encode(&sample.image);
    let body =
        json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]});
    let response = post_json(&server, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let outputs = answer["outputs"].as_array().unwrap();
    assert!(
        outputs
            .iter()
            .any(|o| o["name"] == "label" && o["shape"] == json!([1]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_tensors_get_clear_errors() {
    let server = TestServer::start(&[]).await;
    let sample = &samples()[0];
    let image = base64::engine::general_purpose::STANDARD.encode(&sample.image);
    let with_inputs = |inputs: Value| json!({ "inputs": inputs });
    let note = json!({"name": "note", "datatype": "BYTES", "shape": [1], "data": ["n"]});

    let cases = [
        (
            json!([{"name": "picture", "datatype": "BYTES", "shape": [1], "data": [image]}, note]),
            "unknown input \"picture\"",
        ),
        (
            json!([{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}, note]),
            "must be BYTES, not FP32",
        ),
        (
            json!([{"name": "image", "datatype": "BYTES", "shape": [1, 2], "data": [image]}, note]),
            "must have shape [N] or [N, 1]",
        ),
        (
            json!([{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}, note]),
            "empty batch",
        ),
        (
            json!([{"name": "image", "datatype": "BYTES", "shape": [2], "data": [image, image]}, note]),
            "but the batch has 2",
        ),
        (
            json!([{"name": "image", "datatype": "BYTES", "shape": [2], "data": [image]},
                   {"name": "note", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]),
            "has shape [2] but 1 elements",
        ),
        (json!([note]), "input image is required"),
        (
            json!([{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}, note]),
            "must be base64",
        ),
        (
            json!([{"name": "image", "datatype": "BYTES", "shape": [1]}, note]),
            "has no data",
        ),
    ];
    for (inputs, expected) in cases {
        let message = error_of(post_json(&server, &with_inputs(inputs.clone())).await).await;
        assert!(message.contains(expected), "{inputs}: {message}");
    }

    let message = error_of(
        post_json(
            &server,
            &json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}, note],
                    "outputs": [{"name": "logits"}]}),
        )
        .await,
    )
    .await;
    assert!(message.contains("unknown output \"logits\""), "{message}");

    let response = server
        .client
        .post(server.url(&format!("/v2/models/{MODEL}/infer")))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert!(
        error_of(response)
            .await
            .contains("invalid inference request JSON")
    );

    // A length prefix that runs past its buffer.
    let mut raw = 1_000_000u32.to_le_bytes().to_vec();
    raw.extend_from_slice(b"tiny");
    let header = json!({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": raw.len()}},
        note,
    ]});
    let message = error_of(post_binary(&server, &header, &raw).await).await;
    assert!(message.contains("declares 1000000 bytes"), "{message}");

    // binary_data_size past the body, and bytes nobody claims.
    let header = json!({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 99}},
        note,
    ]});
    let message = error_of(post_binary(&server, &header, b"short").await).await;
    assert!(message.contains("binary_data_size is 99"), "{message}");
    let good = length_prefixed(&[&sample.image]);
    let header = json!({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": good.len()}},
        note,
    ]});
    let mut extra = good.clone();
    extra.extend_from_slice(b"junk");
    let message = error_of(post_binary(&server, &header, &extra).await).await;
    assert!(message.contains("4 binary bytes follow"), "{message}");

    // Errors from the inspector keep their status: a corrupt image is 400, an unknown model 404.
    let corrupt = length_prefixed(&[b"\x89PNG\r\n\x1a\nnot really"]);
    let header = json!({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": corrupt.len()}},
        note,
    ]});
    let message = error_of(post_binary(&server, &header, &corrupt).await).await;
    assert!(message.contains("could not be decoded"), "{message}");
    let response = server
        .client
        .post(server.url("/v2/models/nope/infer"))
        .json(&with_inputs(json!([note])))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let response = post_binary(&server, &header_for(&good), &good).await;
    assert_eq!(
        response.status(),
        200,
        "bad requests change nothing for good ones"
    );
}

fn header_for(image: &[u8]) -> Value {
    json!({"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": image.len()}},
        {"name": "note", "datatype": "BYTES", "shape": [1], "data": ["n"]},
    ]})
}

fn grpc_input(name: &str, shape: Vec<i64>) -> pb::model_infer_request::InferInputTensor {
    pb::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: "BYTES".into(),
        shape,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_inference_equals_the_native_verdict() {
    let server = TestServer::start(&[]).await;
    let mut grpc = GrpcInferenceServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    assert!(
        grpc.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        grpc.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = grpc
        .model_ready(pb::ModelReadyRequest {
            name: MODEL.into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready);
    let metadata = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: MODEL.into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.inputs.len(), 4);
    assert_eq!(metadata.outputs[3].shape, vec![-1, 7, 7]);

    let sample = &samples()[5];
    let expected = native(&server, sample).await;
    let request = pb::ModelInferRequest {
        model_name: MODEL.into(),
        id: "g-1".into(),
        inputs: vec![grpc_input("image", vec![1]), grpc_input("note", vec![1])],
        raw_input_contents: vec![
            length_prefixed(&[&sample.image]).into(),
            length_prefixed(&[sample.note.as_bytes()]).into(),
        ],
        ..Default::default()
    };
    let answer = grpc.model_infer(request).await.unwrap().into_inner();
    assert_eq!(answer.id, "g-1");
    assert_eq!(answer.model_version, "1");
    assert_eq!(answer.outputs.len(), answer.raw_output_contents.len());
    let raw = |name: &str| {
        let index = answer.outputs.iter().position(|o| o.name == name).unwrap();
        answer.raw_output_contents[index].to_vec()
    };
    assert_eq!(
        split_length_prefixed(&raw("label")),
        vec![expected.label.as_bytes().to_vec()]
    );
    assert_eq!(floats(&raw("confidence")), vec![expected.confidence]);
    assert_eq!(floats(&raw("probabilities")), ordered(&expected));

    // Typed contents instead of raw ones work too.
    let mut typed = grpc_input("image", vec![1]);
    typed.contents = Some(pb::InferTensorContents {
        bytes_contents: vec![sample.image.clone().into()],
        ..Default::default()
    });
    let mut note = grpc_input("note", vec![1]);
    note.contents = Some(pb::InferTensorContents {
        bytes_contents: vec![sample.note.clone().into_bytes().into()],
        ..Default::default()
    });
    let answer = grpc
        .model_infer(pb::ModelInferRequest {
            model_name: MODEL.into(),
            inputs: vec![typed, note],
            outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
                name: "label".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outputs.len(), 1);
    assert_eq!(
        split_length_prefixed(&answer.raw_output_contents[0]),
        vec![expected.label.as_bytes().to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_tensors_get_clear_statuses() {
    let server = TestServer::start(&[]).await;
    let mut grpc = GrpcInferenceServiceClient::connect(server.grpc.clone())
        .await
        .unwrap();
    let sample = &samples()[0];
    let image = length_prefixed(&[&sample.image]);
    let note = length_prefixed(&[b"n"]);
    let request = |inputs: Vec<pb::model_infer_request::InferInputTensor>, raw: Vec<Vec<u8>>| {
        pb::ModelInferRequest {
            model_name: MODEL.into(),
            inputs,
            raw_input_contents: raw.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    };
    let mut fp32 = grpc_input("image", vec![1]);
    fp32.datatype = "FP32".into();
    let mut past_the_end = 500u32.to_le_bytes().to_vec();
    past_the_end.extend_from_slice(b"abc");
    let cases = [
        (
            request(
                vec![grpc_input("img", vec![1]), grpc_input("note", vec![1])],
                vec![image.clone(), note.clone()],
            ),
            "unknown input \"img\"",
        ),
        (
            request(
                vec![fp32, grpc_input("note", vec![1])],
                vec![image.clone(), note.clone()],
            ),
            "must be BYTES",
        ),
        (
            request(
                vec![grpc_input("image", vec![1, 2]), grpc_input("note", vec![1])],
                vec![image.clone(), note.clone()],
            ),
            "must have shape [N]",
        ),
        (
            request(
                vec![grpc_input("image", vec![0]), grpc_input("note", vec![0])],
                vec![Vec::new(), Vec::new()],
            ),
            "empty batch",
        ),
        (
            request(
                vec![grpc_input("image", vec![1]), grpc_input("note", vec![1])],
                vec![past_the_end, note.clone()],
            ),
            "declares 500 bytes",
        ),
        (
            request(
                vec![grpc_input("image", vec![1]), grpc_input("note", vec![1])],
                vec![image.clone()],
            ),
            "1 raw_input_contents for 2 inputs",
        ),
    ];
    for (request, expected) in cases {
        let status = grpc.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    let mut unknown = request(
        vec![grpc_input("image", vec![1]), grpc_input("note", vec![1])],
        vec![image.clone(), note.clone()],
    );
    unknown.model_name = "nope".into();
    let status = grpc.model_infer(unknown).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    let good = request(
        vec![grpc_input("image", vec![1]), grpc_input("note", vec![1])],
        vec![image, note],
    );
    assert!(grpc.model_infer(good).await.is_ok());
}
