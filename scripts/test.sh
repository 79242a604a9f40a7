#!/usr/bin/env bash
# Quick start, part two: set up everything and run every check and test, Rust and Python.
# CI runs exactly this (.ci/run).
#
# The store and MQTT tests need a PostgreSQL server and an MQTT broker. This script starts its
# own throwaway ones (a PostgreSQL cluster initialised in a temporary folder and a Mosquitto
# broker, each on a free loopback port, both stopped and deleted at exit), so a machine needs
# only the packages, not running services. KENSA_TEST_POSTGRES (a postgres:// URL) and
# KENSA_TEST_MQTT (host:port) select existing servers instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# A one-shot run (CI, a fresh clone) gains nothing from incremental caches but their disk.
if [[ -n "${CI:-}" ]]; then
  export CARGO_INCREMENTAL=0
fi

echo "== setup"
scripts/setup-system.sh
scripts/setup-ort.sh
scripts/setup-python.sh
scripts/setup-ocr.sh
py=.venv/bin/python

scratch=$(mktemp -d /tmp/kensa-test.XXXXXX)
chmod 755 "$scratch"
pg_data=""
mqtt_pid=""
cleanup() {
  if [[ -n "$pg_data" ]]; then
    as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [[ -n "$mqtt_pid" ]]; then
    kill "$mqtt_pid" 2>/dev/null || true
    wait "$mqtt_pid" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Installs Debian packages when running as root with apt; otherwise says what to install.
need_packages() {
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing $* (Debian packages) for the store and MQTT tests"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "the store and MQTT tests need: $* (Debian/Ubuntu: sudo apt-get install $*)," >&2
    echo "or existing servers in KENSA_TEST_POSTGRES and KENSA_TEST_MQTT" >&2
    exit 1
  fi
}

# PostgreSQL refuses to run as root; the cluster then belongs to the postgres system user.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

find_pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

start_postgres() {
  pg_bin=$(find_pg_bin)
  if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" ]]; then
    need_packages postgresql
    pg_bin=$(find_pg_bin)
  fi
  local port
  port=$(free_port)
  pg_data="$scratch/postgres"
  mkdir -p "$pg_data"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$pg_data"
  as_pg "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w \
    -o "-p $port -k $pg_data -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  as_pg "$pg_bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE test" >/dev/null
  export KENSA_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/test"
  echo "PostgreSQL for the tests: started here on 127.0.0.1:$port ($("$pg_bin/postgres" --version))"
}

start_mosquitto() {
  local broker
  broker=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  if [[ ! -x "$broker" ]]; then
    need_packages mosquitto
    broker=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  fi
  local port
  port=$(free_port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" \
    >"$scratch/mosquitto.conf"
  "$broker" -c "$scratch/mosquitto.conf" >"$scratch/mosquitto.log" 2>&1 &
  mqtt_pid=$!
  for _ in $(seq 100); do
    timeout 1 bash -c "</dev/tcp/127.0.0.1/$port" 2>/dev/null && break
    sleep 0.1
  done
  export KENSA_TEST_MQTT="127.0.0.1:$port"
  echo "MQTT broker for the tests: started here on 127.0.0.1:$port (pid $mqtt_pid)"
}

# promtool checks a real scrape of /metrics (tests/operations.rs).
command -v promtool >/dev/null || need_packages prometheus

echo "== services the store and MQTT tests use"
if [[ -n "${KENSA_TEST_POSTGRES:-}" ]]; then
  echo "PostgreSQL for the tests: $KENSA_TEST_POSTGRES (KENSA_TEST_POSTGRES)"
else
  start_postgres
fi
if [[ -n "${KENSA_TEST_MQTT:-}" ]]; then
  echo "MQTT broker for the tests: $KENSA_TEST_MQTT (KENSA_TEST_MQTT)"
else
  start_mosquitto
fi

echo "== Rust: format, lints"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings

echo "== Python: format, lints, types"
$py -m ruff format --check models/pipeline tests/python scripts bench/peer
$py -m ruff check models/pipeline tests/python scripts bench/peer
$py -m mypy --config-file models/pipeline/pyproject.toml models/pipeline/kensa_pipeline
$py -m mypy --python-version 3.11 --ignore-missing-imports --disallow-untyped-defs tests/python scripts

echo "== Rust tests"
# The hot-function benchmarks are not run (timings belong on a quiet machine); clippy
# --all-targets above already compiles them.
cargo test --locked --workspace

echo "== Python tests"
$py -m pytest models/pipeline/tests
# Real Triton clients against the target/debug/kensa that cargo test built.
$py -m pytest -q tests/python

# The operator page in a real browser (Debian's Chromium, driven by playwright-core from the
# committed tests/browser/package-lock.json) against the target/debug/kensa that cargo test
# built. Skipped, loudly, only when Chromium cannot be installed here.
echo "== Browser tests (the operator page in Chromium)"
chromium_bin=$(command -v chromium || true)
if [[ -z "$chromium_bin" && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing chromium (Debian package) for the browser tests"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || true
  chromium_bin=$(command -v chromium || true)
fi
if [[ -z "$chromium_bin" ]]; then
  echo "!!!!!!!! BROWSER TESTS SKIPPED: Chromium is not installed and could not be installed" >&2
  echo "!!!!!!!! (Debian/Ubuntu: sudo apt-get install chromium); the operator page is UNTESTED" >&2
  exit_code=3
else
  (cd tests/browser && npm ci --no-audit --no-fund --silent && CHROMIUM="$chromium_bin" npm test --silent)
  echo "browser screenshots: tests/browser/screenshots/"
fi
exit "${exit_code:-0}"
