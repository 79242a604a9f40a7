//! The hostile corpus: every kind of malformed, oversized or lying input kensa must refuse on
//! each front door (native HTTP multipart and JSON, the Open Inference Protocol over HTTP and
//! gRPC, native gRPC), each with a clear 4xx or INVALID_ARGUMENT, while good requests run beside
//! it. Afterwards nothing hostile is stored and the server is still ready.
//!
//! The images are built here from a demo fixture (truncated, corrupted, bombs, unsupported
//! formats), so the cases hold whichever image decoder kensa uses.

mod common;

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use common::{TestServer, crc32, length_prefixed, samples};
use image::ImageFormat;
use kensa::api::proto::inference as v2;
use kensa::api::proto::kensa_v1 as pb;
use serde_json::{Value, json};

/// Station id of every hostile request, so the test can prove none was stored.
const HOSTILE: &str = "hostile";

/// One request of the corpus and the status and code it must get.
struct Case {
    name: String,
    request: reqwest::RequestBuilder,
    status: u16,
    code: &'static str,
}

/// The demo sample in every accepted format.
fn encoded() -> Vec<(ImageFormat, Vec<u8>)> {
    let decoded = image::load_from_memory(&samples()[0].image)
        .unwrap()
        .to_rgb8();
    [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
    ]
    .into_iter()
    .map(|format| {
        let mut bytes = Cursor::new(Vec::new());
        decoded.write_to(&mut bytes, format).unwrap();
        (format, bytes.into_inner())
    })
    .collect()
}

/// Images that must be refused: (name, bytes, status, code).
fn bad_images() -> Vec<(String, Vec<u8>, u16, &'static str)> {
    let mut images = Vec::new();
    for (format, bytes) in encoded() {
        for percent in [10, 50, 90, 99] {
            let cut = bytes.len() * percent / 100;
            images.push((
                format!("{format:?} cut to {percent}%"),
                bytes[..cut].to_vec(),
                400,
                "bad_image",
            ));
        }
        let mut header_only = bytes.clone();
        header_only.truncate(24);
        images.push((
            format!("{format:?} header only"),
            header_only,
            400,
            "bad_image",
        ));
    }
    let (_, png) = &encoded()[0];
    let mut bomb = png.clone();
    bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    images.push(("PNG bomb".into(), bomb, 413, "image_too_large"));
    let mut broken_crc = png.clone();
    broken_crc[29] ^= 0xFF;
    images.push((
        "PNG with a broken IHDR CRC".into(),
        broken_crc,
        400,
        "bad_image",
    ));
    let (_, jpeg) = &encoded()[1];
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG");
    let mut bomb = jpeg.clone();
    bomb[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
    bomb[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
    images.push(("JPEG bomb".into(), bomb, 413, "image_too_large"));
    let (_, bmp) = &encoded()[2];
    let mut bomb = bmp.clone();
    bomb[18..22].copy_from_slice(&60_000i32.to_le_bytes());
    bomb[22..26].copy_from_slice(&60_000i32.to_le_bytes());
    images.push(("BMP bomb".into(), bomb, 413, "image_too_large"));
    images.push(("TIFF bomb".into(), tiff_bomb(), 413, "image_too_large"));
    for (name, bytes) in [
        ("GIF", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec()),
        ("WebP", b"RIFF\x1a\x00\x00\x00WEBPVP8 ".to_vec()),
        ("PDF", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec()),
        ("SVG", b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec()),
        (
            "random bytes",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ] {
        images.push((
            format!("{name} instead of an image"),
            bytes,
            400,
            "bad_image",
        ));
    }
    images
}

/// A baseline TIFF whose header declares 60000 x 60000 gray pixels with one byte of data.
fn tiff_bomb() -> Vec<u8> {
    let entries: [(u16, u16, u32); 8] = [
        (256, 4, 60_000), // ImageWidth, LONG
        (257, 4, 60_000), // ImageLength
        (258, 3, 8),      // BitsPerSample, SHORT
        (259, 3, 1),      // Compression: none
        (262, 3, 1),      // Photometric: black is zero
        (273, 4, 122),    // StripOffsets: right after the IFD
        (278, 4, 60_000), // RowsPerStrip
        (279, 4, 1),      // StripByteCounts
    ];
    let mut tiff = b"II*\x00\x08\x00\x00\x00".to_vec();
    tiff.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        tiff.extend_from_slice(&tag.to_le_bytes());
        tiff.extend_from_slice(&kind.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&value.to_le_bytes());
    }
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.push(0);
    tiff
}

/// A multipart part: name, bytes, and whether it is a file.
type Part = (&'static str, Vec<u8>, bool);

fn multipart(server: &TestServer, parts: &[Part]) -> reqwest::RequestBuilder {
    let mut form = reqwest::multipart::Form::new();
    for (name, bytes, file) in parts {
        let part = reqwest::multipart::Part::bytes(bytes.clone());
        let part = if *file {
            part.file_name("unit.png")
        } else {
            part
        };
        form = form.part(name.to_string(), part);
    }
    server
        .client
        .post(server.url("/v1/inspections"))
        .multipart(form)
}

/// The native HTTP cases: images, parts, text and JSON.
fn http_cases(server: &TestServer) -> Vec<Case> {
    let image = samples()[0].image.clone();
    let text = |s: &str| s.as_bytes().to_vec();
    let mut cases = Vec::new();
    for (name, bytes, status, code) in bad_images() {
        cases.push(Case {
            request: multipart(
                server,
                &[("image", bytes, true), ("station_id", text(HOSTILE), false)],
            ),
            name,
            status,
            code,
        });
    }
    let good = |extra: &[Part]| {
        let mut parts = vec![
            ("image", image.clone(), true),
            ("station_id", text(HOSTILE), false),
        ];
        parts.extend(extra.iter().cloned());
        parts
    };
    let part_cases: Vec<(&str, Vec<Part>, &str)> = vec![
        (
            "two image parts",
            good(&[("image", image.clone(), true)]),
            "bad_request",
        ),
        (
            "two station_id parts",
            good(&[("station_id", text("aoi-9"), false)]),
            "bad_request",
        ),
        (
            "two inspection_id parts",
            good(&[
                ("inspection_id", text("a"), false),
                ("inspection_id", text("b"), false),
            ]),
            "bad_request",
        ),
        (
            "two note parts",
            good(&[("note", text("a"), false), ("note", text("b"), false)]),
            "bad_request",
        ),
        (
            "two line parts",
            good(&[("line", text("L1"), false), ("line", text("L2"), false)]),
            "bad_request",
        ),
        (
            "no image",
            vec![("station_id", text(HOSTILE), false)],
            "bad_request",
        ),
        (
            "no station_id",
            vec![("image", image.clone(), true)],
            "bad_request",
        ),
        (
            "an empty image",
            good(&[])
                .into_iter()
                .map(|(n, b, f)| {
                    if n == "image" {
                        (n, Vec::new(), f)
                    } else {
                        (n, b, f)
                    }
                })
                .collect(),
            "bad_request",
        ),
        (
            "a note over the limit",
            good(&[("note", text(&"漢".repeat(4097)), false)]),
            "note_too_long",
        ),
        (
            "a binary note",
            good(&[("note", vec![0xFF, 0xFE, 0x00, 0x80], false)]),
            "bad_request",
        ),
        (
            "NUL in the note",
            good(&[("note", text("lot\0L1"), false)]),
            "bad_request",
        ),
        (
            "NUL in a metadata value",
            good(&[("line", text("L\u{0}3"), false)]),
            "bad_request",
        ),
        (
            "NUL in a metadata key",
            good(&[("li\u{0}ne", text("L3"), false)]),
            "bad_request",
        ),
        (
            "NUL in the inspection_id",
            good(&[("inspection_id", text("u\u{0}1"), false)]),
            "bad_request",
        ),
        (
            "an escape sequence in the note",
            good(&[("note", text("\u{1b}[2J"), false)]),
            "bad_request",
        ),
        (
            "a file part other than image",
            good(&[("picture", image.clone(), true)]),
            "bad_request",
        ),
        (
            "a bad deadline",
            good(&[("deadline_ms", text("soon"), false)]),
            "bad_request",
        ),
        (
            "a bad priority",
            good(&[("priority", text("now!"), false)]),
            "bad_request",
        ),
    ];
    for (name, parts, code) in part_cases {
        cases.push(Case {
            name: name.into(),
            request: multipart(server, &parts),
            status: 400,
            code,
        });
    }
    cases.push(Case {
        name: "NUL in the station_id".into(),
        request: multipart(
            server,
            &[
                ("image", image.clone(), true),
                ("station_id", text("hostile\0x"), false),
            ],
        ),
        status: 400,
        code: "bad_request",
    });
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    let raw = |content_type: &str, body: Vec<u8>| {
        server
            .client
            .post(server.url("/v1/inspections"))
            .header("content-type", content_type)
            .body(body)
    };
    let json_cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid JSON", b"{\"station_id\": ".to_vec()),
        ("JSON that is not an object", b"[1, 2, 3]".to_vec()),
        (
            "station_id as a number",
            json!({"station_id": 7, "image": b64})
                .to_string()
                .into_bytes(),
        ),
        (
            "image as a number",
            json!({"station_id": HOSTILE, "image": 12})
                .to_string()
                .into_bytes(),
        ),
        (
            "metadata as an array",
            json!({"station_id": HOSTILE, "image": b64, "metadata": ["L3"]})
                .to_string()
                .into_bytes(),
        ),
        (
            "a nested metadata field",
            json!({"station_id": HOSTILE, "image": b64, "line": {"a": 1}})
                .to_string()
                .into_bytes(),
        ),
        (
            "deadline_ms as text",
            json!({"station_id": HOSTILE, "image": b64, "deadline_ms": "5"})
                .to_string()
                .into_bytes(),
        ),
        (
            "bad base64",
            json!({"station_id": HOSTILE, "image": "@@not base64@@"})
                .to_string()
                .into_bytes(),
        ),
        (
            "NUL in a JSON note",
            json!({"station_id": HOSTILE, "image": b64, "note": "a\u{0}b"})
                .to_string()
                .into_bytes(),
        ),
        (
            "invalid UTF-8 in JSON",
            [b"{\"station_id\": \"".as_slice(), &[0xC3, 0x28], b"\"}"].concat(),
        ),
    ];
    for (name, body) in json_cases {
        cases.push(Case {
            name: name.into(),
            request: raw("application/json", body),
            status: 400,
            code: "bad_request",
        });
    }
    for (name, content_type) in [
        ("a text/plain body", "text/plain"),
        ("an XML body", "application/xml"),
        ("multipart without a boundary", "multipart/form-data"),
    ] {
        cases.push(Case {
            name: name.into(),
            request: raw(content_type, image.clone()),
            status: 400,
            code: "bad_request",
        });
    }
    // Query strings and path segments the extractors refuse: answered like any bad request
    // (JSON body, code), not with the web framework's plain text.
    for (name, query) in [
        ("heatmap=maybe", "?heatmap=maybe"),
        ("a repeated query key", "?format=json&format=png"),
    ] {
        let mut parts = reqwest::multipart::Form::new();
        parts = parts.part(
            "image",
            reqwest::multipart::Part::bytes(image.clone()).file_name("unit.png"),
        );
        parts = parts.text("station_id", HOSTILE);
        cases.push(Case {
            name: name.into(),
            request: server
                .client
                .post(server.url(&format!("/v1/inspections{query}")))
                .multipart(parts),
            status: 400,
            code: "bad_request",
        });
    }
    for (name, path) in [
        ("a station id that is not UTF-8", "/v1/verdicts/%FF/u1"),
        (
            "a heat map path that is not UTF-8",
            "/v1/verdicts/aoi-1/%C3%28/heatmap",
        ),
        (
            "a bad stations window query",
            "/v1/stations?window=1h&window=2h",
        ),
        ("a V2 model name that is not UTF-8", "/v2/models/%FF/config"),
    ] {
        cases.push(Case {
            name: name.into(),
            request: server.client.get(server.url(path)),
            status: 400,
            code: "bad_request",
        });
    }
    cases
}

/// Open Inference Protocol over HTTP: wrong tensors, lying lengths, and a batch with one bad
/// element (all or nothing: the good one must not be stored either).
fn v2_cases(server: &TestServer) -> Vec<Case> {
    let image = samples()[0].image.clone();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    let url = server.url("/v2/models/kensa-demo/infer");
    let json_case = |name: &str, body: Value| Case {
        name: format!("V2 {name}"),
        request: server.client.post(&url).json(&body),
        status: 400,
        code: "bad_request",
    };
    let input = |name: &str, shape: Value, datatype: &str, data: Value| json!({"name": name, "shape": shape, "datatype": datatype, "data": data});
    let station = input("station_id", json!([1]), "BYTES", json!([HOSTILE]));
    let note = input("note", json!([1]), "BYTES", json!(["n"]));
    let mut cases = vec![
        json_case(
            "an unknown input",
            json!({"inputs": [input("picture", json!([1]), "BYTES", json!([b64])), note, station]}),
        ),
        json_case(
            "shape [1, 2]",
            json!({"inputs": [input("image", json!([1, 2]), "BYTES", json!([b64])), note, station]}),
        ),
        json_case(
            "shape [0]",
            json!({"inputs": [input("image", json!([0]), "BYTES", json!([])), note, station]}),
        ),
        json_case(
            "FP32 image",
            json!({"inputs": [input("image", json!([1]), "FP32", json!([1.0])), note, station]}),
        ),
        json_case(
            "numbers as BYTES data",
            json!({"inputs": [input("image", json!([1]), "BYTES", json!([7])), note, station]}),
        ),
        json_case(
            "bad base64",
            json!({"inputs": [input("image", json!([1]), "BYTES", json!(["%%%"])), note, station]}),
        ),
        json_case(
            "NUL in the note",
            json!({"inputs": [input("image", json!([1]), "BYTES", json!([b64])), input("note", json!([1]), "BYTES", json!(["a\u{0}"])), station]}),
        ),
        json_case(
            "shape [2] with one element",
            json!({"inputs": [input("image", json!([2]), "BYTES", json!([b64])), input("note", json!([2]), "BYTES", json!(["a", "b"])), input("station_id", json!([2]), "BYTES", json!([HOSTILE, HOSTILE]))]}),
        ),
        json_case("no image", json!({"inputs": [note, station]})),
        json_case("inputs as a string", json!({"inputs": "image"})),
    ];
    let mut truncated = image.clone();
    truncated.truncate(image.len() / 2);
    let truncated = base64::engine::general_purpose::STANDARD.encode(&truncated);
    cases.push(Case {
        name: "V2 batch of a good and a truncated image".into(),
        request: server.client.post(&url).json(&json!({"inputs": [
            input("image", json!([2]), "BYTES", json!([b64, truncated])),
            input("note", json!([2]), "BYTES", json!(["a", "b"])),
            input("station_id", json!([2]), "BYTES", json!([HOSTILE, HOSTILE])),
            input("inspection_id", json!([2]), "BYTES", json!(["v2-batch-1", "v2-batch-2"])),
        ]})),
        status: 400,
        code: "bad_image",
    });
    let binary = |name: &str, header: Value, body: Vec<u8>, length: Option<&str>| {
        let header = header.to_string().into_bytes();
        let declared = length.map_or_else(|| header.len().to_string(), str::to_string);
        let mut whole = header;
        whole.extend_from_slice(&body);
        Case {
            name: format!("V2 binary {name}"),
            request: server
                .client
                .post(&url)
                .header("inference-header-content-length", declared)
                .header("content-type", "application/octet-stream")
                .body(whole),
            status: 400,
            code: "bad_request",
        }
    };
    let sized = |size: usize| {
        json!({"inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}},
            {"name": "note", "shape": [1], "datatype": "BYTES", "data": ["n"]},
            {"name": "station_id", "shape": [1], "datatype": "BYTES", "data": [HOSTILE]},
        ]})
    };
    let element = length_prefixed(&[&image]);
    let mut lying_prefix = element.clone();
    lying_prefix[..4].copy_from_slice(&(image.len() as u32 + 100).to_le_bytes());
    cases.push(binary(
        "length prefix past the end",
        sized(lying_prefix.len()),
        lying_prefix,
        None,
    ));
    cases.push(binary(
        "binary_data_size past the end",
        sized(element.len() + 10),
        element.clone(),
        None,
    ));
    let mut extra = element.clone();
    extra.extend_from_slice(b"unclaimed");
    cases.push(binary("unclaimed bytes", sized(element.len()), extra, None));
    cases.push(binary(
        "header length past the body",
        sized(element.len()),
        element.clone(),
        Some("999999"),
    ));
    cases.push(binary(
        "header length not a number",
        sized(element.len()),
        element.clone(),
        Some("twelve"),
    ));
    cases.push(binary(
        "truncated length prefix",
        sized(2),
        vec![1, 0],
        None,
    ));
    cases
}

async fn raw_call(server: &TestServer, path: &'static str, message: Vec<u8>) -> tonic::Status {
    match common::raw_grpc(server, path, message, None).await {
        Ok(_) => panic!("{path} accepted a hostile message"),
        Err(status) => status,
    }
}

/// gRPC, native and V2: undecodable messages and bad fields are INVALID_ARGUMENT.
async fn grpc_cases(server: &TestServer) -> usize {
    use prost::Message as _;
    let image = samples()[0].image.clone();
    let inspect = "/kensa.v1.InspectionService/Inspect";
    let infer = "/inference.GRPCInferenceService/ModelInfer";
    let good = pb::InspectRequest {
        station_id: HOSTILE.into(),
        image: image.clone().into(),
        ..Default::default()
    };
    let mut invalid_utf8 = vec![0x0A, 0x02, 0xC3, 0x28];
    invalid_utf8.extend_from_slice(
        &pb::InspectRequest {
            image: image.clone().into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let truncated_field = good.encode_to_vec()[..40].to_vec();
    let with = |change: &dyn Fn(&mut pb::InspectRequest)| {
        let mut request = good.clone();
        change(&mut request);
        request.encode_to_vec()
    };
    let v2_request = |station: &[u8], datatype: &str| {
        let tensor = |name: &str| v2::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: vec![1],
            ..Default::default()
        };
        v2::ModelInferRequest {
            model_name: "kensa-demo".into(),
            inputs: vec![tensor("image"), tensor("note"), tensor("station_id")],
            raw_input_contents: vec![
                length_prefixed(&[&image]).into(),
                length_prefixed(&[b"n"]).into(),
                length_prefixed(&[station]).into(),
            ],
            ..Default::default()
        }
        .encode_to_vec()
    };
    let mut mismatched =
        v2::ModelInferRequest::decode(v2_request(HOSTILE.as_bytes(), "BYTES").as_slice()).unwrap();
    mismatched.raw_input_contents.pop();
    let cases: Vec<(&str, &'static str, Vec<u8>)> = vec![
        (
            "a bad varint",
            inspect,
            vec![
                0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            ],
        ),
        ("invalid UTF-8 in station_id", inspect, invalid_utf8),
        ("a truncated field", inspect, truncated_field),
        ("a wire type that does not exist", inspect, vec![0x0F, 0x01]),
        (
            "NUL in the note",
            inspect,
            with(&|r| r.note = "a\0b".into()),
        ),
        (
            "a truncated image",
            inspect,
            with(&|r| r.image = image[..image.len() / 3].to_vec().into()),
        ),
        ("no station", inspect, with(&|r| r.station_id.clear())),
        ("V2 undecodable", infer, vec![0x12, 0x80]),
        (
            "V2 invalid UTF-8 station",
            infer,
            v2_request(&[0xFF, 0x00], "BYTES"),
        ),
        (
            "V2 FP32 inputs",
            infer,
            v2_request(HOSTILE.as_bytes(), "FP32"),
        ),
        (
            "V2 raw contents for fewer inputs",
            infer,
            mismatched.encode_to_vec(),
        ),
    ];
    for (name, path, message) in &cases {
        let status = raw_call(server, path, message.clone()).await;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "gRPC {name}: {status:?}"
        );
    }
    cases.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_and_change_nothing_while_good_requests_pass() {
    let server = Arc::new(TestServer::start(&[]).await);
    let stop = tokio_util::sync::CancellationToken::new();
    let good_answers = Arc::new(AtomicUsize::new(0));
    let beside = {
        let (server, stop, good_answers) =
            (Arc::clone(&server), stop.clone(), Arc::clone(&good_answers));
        tokio::spawn(async move {
            let samples = samples();
            let mut i = 0;
            while !stop.is_cancelled() {
                let sample = &samples[i % samples.len()];
                let id = format!("good-{i}");
                let response = server
                    .post_unit(
                        "",
                        &sample.image,
                        &[
                            ("station_id", "aoi-good"),
                            ("inspection_id", &id),
                            ("note", &sample.note),
                        ],
                    )
                    .await;
                assert_eq!(
                    response.status(),
                    200,
                    "a good request failed beside the corpus"
                );
                good_answers.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };

    let mut refused = 0;
    for case in http_cases(&server).into_iter().chain(v2_cases(&server)) {
        let response = case.request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert_eq!(body["code"], case.code, "{}: {body}", case.name);
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}",
            case.name
        );
        refused += 1;
    }
    refused += grpc_cases(&server).await;
    stop.cancel();
    beside.await.unwrap();

    let page: Value = server.get_json("/v1/verdicts?limit=1000").await;
    let stored = page["verdicts"].as_array().unwrap();
    let hostile: Vec<&Value> = stored
        .iter()
        .filter(|v| v["station_id"] != "aoi-good")
        .collect();
    assert!(hostile.is_empty(), "hostile input was stored: {hostile:?}");
    let good = good_answers.load(Ordering::SeqCst);
    assert_eq!(
        stored.len(),
        good,
        "every good answer is stored, nothing else"
    );
    assert!(good > 0);
    assert_eq!(server.get_text("/readyz").await, "ready");
    eprintln!("{refused} hostile requests refused, {good} good requests answered beside them");
}
