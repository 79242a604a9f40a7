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
$py -m ruff format --check models/pipeline tests/python
$py -m ruff check models/pipeline tests/python
$py -m mypy --config-file models/pipeline/pyproject.toml models/pipeline/kensa_pipeline
$py -m mypy --python-version 3.11 --ignore-missing-imports --disallow-untyped-defs tests/python

echo "== Rust tests"
cargo test --locked

echo "== Python tests"
$py -m pytest -q models/pipeline/tests
# Real Triton clients against the target/debug/kensa that cargo test built.
$py -m pytest -q tests/python
