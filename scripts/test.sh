#!/usr/bin/env bash
# Quick start, part two: set up everything and run every check and test, Rust and Python.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== setup"
scripts/setup-ort.sh
scripts/setup-python.sh
py=.venv/bin/python

echo "== services the store and MQTT tests use"
reachable() { timeout 2 bash -c "</dev/tcp/$1/$2" 2>/dev/null; }
pg="${KENSA_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
pg_hostport=$(sed -E 's#^[a-z]+://([^@/]*@)?([^/?]*).*#\2#' <<<"$pg")
pg_host=${pg_hostport%:*}
pg_port=5432
[[ $pg_hostport == *:* ]] && pg_port=${pg_hostport##*:}
mqtt="${KENSA_TEST_MQTT:-127.0.0.1:1883}"
reachable "$pg_host" "$pg_port" || { echo "PostgreSQL is not reachable at $pg_host:$pg_port (KENSA_TEST_POSTGRES)" >&2; exit 1; }
reachable "${mqtt%:*}" "${mqtt##*:}" || { echo "no MQTT broker at $mqtt (KENSA_TEST_MQTT)" >&2; exit 1; }

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
$py -m pytest models/pipeline/tests
# Real Triton clients against the target/debug/kensa that cargo test built.
$py -m pytest -q tests/python
