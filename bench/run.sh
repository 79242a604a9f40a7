#!/usr/bin/env bash
# The measurements of docs/performance.md, one command each (release build; the model is
# KENSA_MODEL_REPOSITORY, default models/demo; the device KENSA_DEVICE, default cpu, and any
# other KENSA_* variable reaches both the servers and the bench). Every figure line carries the
# load average: on a shared machine, compare figures of one run, not of two.
#
#   bench/run.sh compare   kensa (default flags) vs bare ONNX Runtime in the same arrangement vs
#                          the Python peer (bench/peer), one after the other, same images
#   bench/run.sh sweep     serving configurations around the default; prints the best as flags
#   bench/run.sh growth    cost growth with stations, image size, note length and max batch
#   bench/run.sh store     CPU per request with --store none, sqlite and postgres (the database
#                          KENSA_BENCH_POSTGRES, default postgres://postgres@127.0.0.1:5432/test,
#                          in a schema kensa_bench created for it)
#   bench/run.sh ocr       OCR on vs off (--disable-ocr) on the model with an `ocr` section
#                          added, the frames of tests/fixtures/ocr with the overlay, no notes;
#                          the reader KENSA_BENCH_OCR_READER: overlay (models/ocr-overlay,
#                          default) or pp-ocrv4 (the wheel's, from scripts/setup-ocr.sh)
#   bench/run.sh hot       the hot-function benchmarks (cargo bench --bench hot)
#   bench/run.sh perf-analyzer
#                          Triton's perf_analyzer, unmodified, against kensa over HTTP and gRPC
#                          (bench/perf-analyzer.sh; extra arguments go to perf_analyzer)
#
# Extra arguments go to kensa-bench (for example --duration 15s, --server-cpus 1).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?"usage: bench/run.sh compare|sweep|growth|store|ocr|hot|perf-analyzer [kensa-bench flags]"}
shift
export KENSA_MODEL_REPOSITORY=${KENSA_MODEL_REPOSITORY:-models/demo}
export KENSA_DEVICE=${KENSA_DEVICE:-cpu}
http_port=${KENSA_BENCH_PORT:-18080}
peer_port=${KENSA_BENCH_PEER_PORT:-18090}
url="http://127.0.0.1:$http_port"

scripts/setup-system.sh
scripts/setup-ort.sh
cargo build --release --locked --workspace --quiet
bench=target/release/kensa-bench
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

start_kensa() {
  target/release/kensa serve --http-host=127.0.0.1 --http-port="$http_port" \
    --grpc-host=127.0.0.1 --grpc-port=0 --data-dir="$(mktemp -d)" "$@" \
    2>"${TMPDIR:-/tmp}/kensa-bench-server.log" &
  pids+=($!)
}

stop_all() {
  cleanup
  pids=()
}

uname -srm
grep -m1 'model name' /proc/cpuinfo || true
case "$what" in
  compare)
    start_kensa --store=none
    echo "== kensa, default flags, --store none"
    "$bench" --url "$url" --bare "$@"
    stop_all
    bench/peer/run.sh --port "$peer_port" --model "$KENSA_MODEL_REPOSITORY" &
    peer=$!
    pids+=("$peer")
    echo "== Python peer (FastAPI + onnxruntime, one intra-op thread, a process per core)"
    "$bench" --url "http://127.0.0.1:$peer_port" --pid "$peer" "$@"
    ;;
  sweep)
    "$bench" --sweep "$@"
    ;;
  growth)
    "$bench" --growth "$@"
    ;;
  store)
    database=${KENSA_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
    psql -q "$database" -c "DROP SCHEMA IF EXISTS kensa_bench CASCADE; CREATE SCHEMA kensa_bench"
    postgres="$database?options=-csearch_path%3Dkensa_bench"
    for store in none sqlite "$postgres"; do
      start_kensa --store="$store"
      echo "== --store $store"
      "$bench" --url "$url" --concurrency 64 "$@"
      stop_all
    done
    ;;
  ocr)
    reader=${KENSA_BENCH_OCR_READER:-overlay}
    case "$reader" in
      overlay) graphs=(models/ocr-overlay/detector.onnx models/ocr-overlay/recogniser.onnx) ;;
      pp-ocrv4)
        scripts/setup-ocr.sh
        graphs=(.ocr/ch_PP-OCRv4_det_infer.onnx .ocr/ch_PP-OCRv4_rec_infer.onnx)
        ;;
      *)
        echo "unknown reader $reader (overlay, pp-ocrv4)" >&2
        exit 2
        ;;
    esac
    repo=$(mktemp -d)
    frames=$(mktemp -d)
    for file in "$KENSA_MODEL_REPOSITORY"/*; do
      [[ $(basename "$file") == manifest.json ]] || ln -s "$(realpath "$file")" "$repo/"
    done
    ln -s "$(realpath "${graphs[0]}")" "$repo/ocr-detector.onnx"
    ln -s "$(realpath "${graphs[1]}")" "$repo/ocr-recogniser.onnx"
    python3 - "$KENSA_MODEL_REPOSITORY/manifest.json" "$repo/manifest.json" <<'PY'
import json
import sys

manifest = json.load(open(sys.argv[1]))
manifest["ocr"] = {
    "detector": "ocr-detector.onnx",
    "recogniser": "ocr-recogniser.onnx",
    "join": "when-empty",
}
json.dump(manifest, open(sys.argv[2], "w"), indent=1)
PY
    cp tests/fixtures/ocr/two_lines.png tests/fixtures/ocr/bottom_band.png \
      tests/fixtures/ocr/degraded.png "$frames"/
    # The same frames with their printed lines sent as the note: with OCR off the model then
    # sees the text OCR would have read, so the difference is what reading it costs.
    python3 - tests/fixtures/ocr/expected-overlay.json "$frames" <<'PY'
import json
import sys
from pathlib import Path

frames = Path(sys.argv[2])
with open(frames / "noted.jsonl", "w") as out:
    for case in json.load(open(sys.argv[1]))["cases"]:
        if case["printed"]:
            note = "\n".join(case["printed"])
            out.write(json.dumps({"image": str(frames / case["image"]), "note": note}) + "\n")
PY
    for run in on off-noted off; do
      flags=(--store=none --model-repository="$repo")
      images=("$frames")
      case "$run" in
        on) echo "== OCR on ($reader reader): the three overlay frames, no notes" ;;
        off-noted)
          flags+=(--disable-ocr)
          images=("$frames/noted.jsonl")
          echo "== OCR off: the same frames, their printed lines sent as the note"
          ;;
        off)
          flags+=(--disable-ocr)
          echo "== OCR off: the same frames, no notes"
          ;;
      esac
      start_kensa "${flags[@]}"
      "$bench" --url "$url" --images "${images[0]}" "$@"
      stop_all
    done
    rm -rf "$repo" "$frames"
    ;;
  hot)
    cargo bench --locked --bench hot
    ;;
  perf-analyzer)
    frame=.cache/bench-images/640x640/frame_0.jpg
    [[ -f $frame ]] || "$bench" --make-images
    grpc_port=${KENSA_BENCH_GRPC_PORT:-18081}
    target/release/kensa serve --http-host=127.0.0.1 --http-port="$http_port" \
      --grpc-host=127.0.0.1 --grpc-port="$grpc_port" --data-dir="$(mktemp -d)" --store=none \
      2>"${TMPDIR:-/tmp}/kensa-bench-server.log" &
    pids+=($!)
    until curl -sf "$url/readyz" >/dev/null; do sleep 0.5; done
    model=$(curl -sf "$url/v1/models" | python3 -c 'import json, sys; print(json.load(sys.stdin)["models"][0]["name"])')
    bench/perf-analyzer.sh "$http_port" "$grpc_port" "$model" "$frame" "$@"
    ;;
  *)
    echo "unknown measurement $what" >&2
    exit 2
    ;;
esac
