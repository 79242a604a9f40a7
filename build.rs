//! Compiles the gRPC protocols with protox (pure Rust, no system protoc) and tonic-prost-build,
//! and keeps the descriptor set for server reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: [&str; 2] = [
    "proto/kensa/v1/inspection.proto",
    "proto/inference/grpc_predict_v2.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kensa_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::api::codec::StrictCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
