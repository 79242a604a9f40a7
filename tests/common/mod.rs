//! Shared helpers for the integration tests: a real server on an ephemeral port with real ONNX
//! Runtime and the shipped demo model, and the demo model's fixture samples.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf as _, BufMut as _};
use kensa::config::{Command, ServeArgs};
use kensa::server::Server;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The shipped demo model repository.
pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
}

/// A loopback port that was free a moment ago, for servers started as child processes (which
/// cannot report a port 0 back).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("local address")
        .port()
}

/// The real `kensa serve` binary as a child process on loopback: HTTP on `http`, gRPC on a
/// free port, the demo model on CPU, data in `data`, one warm-up batch. Callers add flags and
/// choose where its output goes.
pub fn kensa_serve(http: u16, data: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kensa"));
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "serve".to_string(),
        "--http-host=127.0.0.1".into(),
        format!("--http-port={http}"),
        "--grpc-host=127.0.0.1".into(),
        format!("--grpc-port={}", free_port()),
        format!("--model-repository={}", demo_dir().display()),
        format!("--data-dir={}", data.display()),
        "--device=cpu".into(),
        "--warmup-batches=1".into(),
    ]);
    command
}

/// Serve arguments for a test: loopback, port 0, the demo model, plus `extra` flags.
pub fn serve_args(extra: &[&str]) -> ServeArgs {
    let demo = demo_dir();
    let data = tempfile::tempdir().expect("temp dir").keep();
    let mut args = vec![
        "kensa".to_string(),
        "serve".into(),
        "--http-host=127.0.0.1".into(),
        "--http-port=0".into(),
        "--grpc-host=127.0.0.1".into(),
        "--grpc-port=0".into(),
        format!("--model-repository={}", demo.display()),
        format!("--data-dir={}", data.display()),
        "--device=cpu".into(),
        "--warmup-batches=1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args = args.into_iter().map(std::ffi::OsString::from).collect();
    match kensa::config::parse_from(args)
        .expect("valid test flags")
        .command
    {
        Command::Serve(serve) => *serve,
        _ => unreachable!("serve was asked for"),
    }
}

/// A copy of the demo model folder whose manifest gets `decision` as its decision section
/// (the ONNX graphs are linked, not copied); removed with the returned guard.
pub fn demo_with_decision(decision: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(demo_dir()).expect("demo folder") {
        let entry = entry.expect("demo entry");
        let target = dir.path().join(entry.file_name());
        std::os::unix::fs::symlink(entry.path(), &target).expect("link demo file");
    }
    let manifest_path = dir.path().join("manifest.json");
    std::fs::remove_file(&manifest_path).expect("unlink manifest");
    let text = std::fs::read_to_string(demo_dir().join("manifest.json")).expect("manifest");
    let mut manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    manifest["decision"] = decision;
    std::fs::write(&manifest_path, manifest.to_string()).expect("write manifest");
    dir
}

/// The review tests' decision section: normal fixtures pass (0.91), voids go to review
/// (0.96 < 0.975), oversize and offset fail (0.98).
pub fn review_decision() -> serde_json::Value {
    serde_json::json!({
        "temperature": 1.0,
        "pass_threshold": 0.85,
        "fail_threshold": 0.975,
        "target_missed_defect_rate": 0.01,
        "validation": {"split": "test fixture", "n": 10}
    })
}

/// A started server and a client for it.
pub struct TestServer {
    pub server: Server,
    pub client: reqwest::Client,
    pub base: String,
    /// `http://` address of the gRPC port, for tonic clients.
    pub grpc: String,
}

impl TestServer {
    /// Starts a server and waits until it is ready.
    pub async fn start(extra: &[&str]) -> TestServer {
        let server = TestServer::start_unready(extra).await;
        server.wait_ready().await;
        server
    }

    /// Starts a server without waiting for warm-up.
    pub async fn start_unready(extra: &[&str]) -> TestServer {
        let server = Server::start(serve_args(extra))
            .await
            .expect("server starts");
        let base = format!("http://{}", server.http_addr);
        let grpc = format!("http://{}", server.grpc_addr);
        TestServer {
            server,
            client: reqwest::Client::new(),
            base,
            grpc,
        }
    }

    /// Polls /readyz until it answers 200.
    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            let response = self
                .client
                .get(self.url("/readyz"))
                .send()
                .await
                .expect("readyz");
            if response.status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one multipart inspection of `sample` from station aoi-07.
    pub async fn inspect(&self, sample: &Sample, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut all = vec![("note", sample.note.as_str()), ("station_id", "aoi-07")];
        all.extend_from_slice(fields);
        self.post_unit("", &sample.image, &all).await
    }

    /// Posts `image` and the text `fields` as a multipart inspection; `query` is appended to
    /// `/v1/inspections` (for example `?format=png`).
    pub async fn post_unit(
        &self,
        query: &str,
        image: &[u8],
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(image.to_vec()).file_name("unit.png"),
        );
        for (name, value) in fields {
            form = form.text(name.to_string(), value.to_string());
        }
        self.client
            .post(self.url(&format!("/v1/inspections{query}")))
            .multipart(form)
            .send()
            .await
            .expect("request sent")
    }

    /// GETs `path` and returns the body as text.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("GET sent");
        response.text().await.expect("text body")
    }

    /// The value of the first sample on `/metrics` whose line starts with `line_start` (a
    /// metric name and the start of its labels).
    pub async fn metric(&self, line_start: &str) -> Option<f64> {
        self.get_text("/metrics")
            .await
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// GETs `path` and parses the JSON body.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("GET sent");
        response.json().await.expect("JSON body")
    }
}

/// One fixture sample with what Python onnxruntime answered for it.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub image: Vec<u8>,
    pub note: String,
    pub label: String,
    pub probabilities: Vec<f32>,
    pub attention: Vec<f32>,
}

/// The demo model's held-out samples (two per class).
pub fn samples() -> Vec<Sample> {
    let dir = demo_dir().join("fixtures");
    let text =
        std::fs::read_to_string(dir.join("samples.jsonl")).expect("samples.jsonl is shipped");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("valid sample line");
            let name = value["image"].as_str().expect("image").to_string();
            let floats = |v: &serde_json::Value| -> Vec<f32> {
                v.as_array()
                    .expect("array")
                    .iter()
                    .flat_map(|x| match x.as_array() {
                        Some(row) => row
                            .iter()
                            .map(|y| y.as_f64().expect("number") as f32)
                            .collect(),
                        None => vec![x.as_f64().expect("number") as f32],
                    })
                    .collect()
            };
            Sample {
                image: std::fs::read(dir.join(&name)).expect("sample image"),
                note: value["note"].as_str().unwrap_or_default().to_string(),
                label: value["label"].as_str().expect("label").to_string(),
                probabilities: floats(&value["probabilities"]),
                attention: floats(&value["attention"]),
                name,
            }
        })
        .collect()
}

/// `softmax(log(p) / temperature)`: the calibrated probabilities of a sample whose plain
/// softmax `p` Python recorded (`log(p)` differs from the logits by a constant, which the
/// softmax cancels).
pub fn calibrate(plain: &[f32], temperature: f32) -> Vec<f32> {
    let scaled: Vec<f32> = plain.iter().map(|p| p.ln() / temperature).collect();
    let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scaled.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// The demo model's calibration temperature (1 when its manifest has no decision section).
pub fn demo_temperature() -> f32 {
    let manifest = kensa::model::manifest::Manifest::load(&demo_dir()).expect("demo manifest");
    manifest.decision.map_or(1.0, |d| d.temperature)
}

/// BYTES elements in the Open Inference Protocol's raw form: each prefixed by its length as a
/// 4-byte little-endian integer.
pub fn length_prefixed(elements: &[&[u8]]) -> Vec<u8> {
    let mut raw = Vec::new();
    for element in elements {
        raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
        raw.extend_from_slice(element);
    }
    raw
}

/// gRPC message bytes as they are, so tests can send what no generated client would.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let length = buf.remaining();
        Ok(Some(buf.copy_to_bytes(length).to_vec()))
    }
}

/// One unary gRPC call to `path` with `message` as its raw bytes, with a bearer `token`.
pub async fn raw_grpc(
    server: &TestServer,
    path: &'static str,
    message: Vec<u8>,
    token: Option<&str>,
) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
        .expect("gRPC address")
        .connect()
        .await
        .expect("gRPC connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("gRPC ready");
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ASCII token"),
        );
    }
    let uri = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(request, uri, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// One client of a client file: name, token, scopes, and the stations it may submit for.
pub type Client<'a> = (&'a str, &'a str, &'a [&'a str], Option<&'a [&'a str]>);

/// Writes a client file into `dir`; returns its path.
pub fn write_clients(dir: &Path, clients: &[Client<'_>]) -> PathBuf {
    let mut text = String::new();
    for (name, token, scopes, stations) in clients {
        text.push_str(&format!(
            "[[client]]\nname = {name:?}\ntoken_sha256 = {:?}\nscopes = {scopes:?}\n",
            kensa::access::tokens::token_sha256(token)
        ));
        if let Some(stations) = stations {
            text.push_str(&format!("stations = {stations:?}\n"));
        }
        text.push('\n');
    }
    let path = dir.join("clients.toml");
    std::fs::write(&path, text).expect("client file written");
    path
}

/// CRC-32 of a PNG chunk's type and data, for tests that rewrite a PNG header.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Label names in logits order, from the demo manifest.
pub fn label_names() -> Vec<String> {
    let manifest = kensa::model::manifest::Manifest::load(&demo_dir()).expect("demo manifest");
    manifest.labels.into_iter().map(|l| l.name).collect()
}
