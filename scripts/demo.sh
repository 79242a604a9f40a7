#!/usr/bin/env bash
# Quick start, part one: set up ONNX Runtime, build kensa, and serve the shipped demo model on
# http://127.0.0.1:8080 (flags and KENSA_* variables pass through: scripts/demo.sh --http-port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-system.sh
scripts/setup-ort.sh
cargo build --release --locked
exec target/release/kensa serve --model-repository models/demo "$@"
