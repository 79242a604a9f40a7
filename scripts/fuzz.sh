#!/usr/bin/env bash
# Runs each cargo-fuzz target for FUZZ_SECONDS (default 60) and prints libFuzzer's executions;
# a crash stops the script and leaves the input under fuzz/artifacts/<target>/. Needs the
# nightly toolchain (rustup toolchain install nightly) and cargo-fuzz (installed from crates.io
# when missing). Targets: image_decode (decode + preprocessing), request_parsing (JSON and
# multipart inspections), v2_tensors (the Open Inference Protocol body and tensor encodings).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-image_decode request_parsing v2_tensors}

scripts/setup-ort.sh
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install --locked cargo-fuzz
fi

# Seeds: the demo fixture images in every accepted format, and one request of each kind.
seeds=fuzz/corpus
mkdir -p "$seeds/image_decode" "$seeds/request_parsing" "$seeds/v2_tensors"
cp models/demo/fixtures/samples/*.png "$seeds/image_decode/"
printf '{"station_id": "aoi-07", "image": "aGVsbG8=", "note": "dia 59.1um", "line": "L3"}' \
  >"$seeds/request_parsing/json"
printf -- '--kensa\r\nContent-Disposition: form-data; name="image"; filename="u.png"\r\n\r\nPNG\r\n--kensa\r\nContent-Disposition: form-data; name="station_id"\r\n\r\naoi-07\r\n--kensa--\r\n' \
  >"$seeds/request_parsing/multipart"
printf '\x01\x00{"inputs": [{"name": "note", "shape": [1], "datatype": "BYTES", "data": ["n"]}]}' \
  >"$seeds/v2_tensors/json"

for target in $targets; do
  echo "== $target for ${seconds}s"
  (cd fuzz && cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>&1) |
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)' || true
  if ls fuzz/artifacts/"$target"/crash-* >/dev/null 2>&1; then
    echo "$target: crash inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
