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
    record_git_commit();
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

/// Puts the commit being built into `KENSA_GIT_COMMIT` for `kensa_build_info` (an image build
/// without `.git` can pass it in the environment instead).
fn record_git_commit() {
    println!("cargo:rerun-if-env-changed=KENSA_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("KENSA_GIT_COMMIT").ok().or_else(|| {
        let output = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    });
    if let Some(commit) = commit.filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=KENSA_GIT_COMMIT={commit}");
    }
}
