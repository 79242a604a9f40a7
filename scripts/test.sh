#!/usr/bin/env bash
# Quick start, part two: set up everything and run every check and test, Rust and Python.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== setup"
scripts/setup-ort.sh
scripts/setup-python.sh
py=.venv/bin/python

echo "== Rust: format, lints"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

echo "== Python: format, lints, types"
$py -m ruff format --check models/pipeline
$py -m ruff check models/pipeline
$py -m mypy --config-file models/pipeline/pyproject.toml models/pipeline/kensa_pipeline

echo "== Rust tests"
cargo test --locked

echo "== Python tests"
$py -m pytest -q models/pipeline/tests
