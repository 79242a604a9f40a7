#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: is kensa really using it, does it answer what
# the CPU answers, how fast is it, and does TensorRT reuse its engine cache on a second start.
#
#   scripts/gpu-check.sh                  # checks cuda and tensorrt
#   GPU_CHECK_DEVICES=cuda scripts/gpu-check.sh
#   GPU_CHECK_DEVICES=cpu scripts/gpu-check.sh   # a dry run of the script itself, no GPU needed
#
# Needs: the NVIDIA driver, CUDA 12 and cuDNN 9 libraries on the library path (TensorRT 10 for
# tensorrt). It installs ONNX Runtime's GPU build into .ort-gpu/ (the CPU build in .ort/ stays)
# and builds kensa in release mode. Prints one line per check and exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

devices=${GPU_CHECK_DEVICES:-cuda tensorrt}
model=${KENSA_MODEL_REPOSITORY:-models/demo}
work=$(mktemp -d /tmp/kensa-gpu-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
failed=0
say() { printf '%-8s %s\n' "$1" "$2"; }

if [[ " $devices " != " cpu " ]]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | sed 's/^/gpu      /' || say FAIL "nvidia-smi not found: no NVIDIA driver on this machine"
  ORT_DEST=.ort-gpu scripts/setup-ort.sh --gpu
  export ORT_DYLIB_PATH=$PWD/.ort-gpu/lib/libonnxruntime.so.1.31.1
fi
cargo build --release --locked --quiet
kensa=target/release/kensa

# Reference answers on CPU, then the same images on each device.
samples=$(ls "$model"/fixtures/samples/*.png)
infer() {
  local device=$1 out=$2
  : >"$out"
  for image in $samples; do
    "$kensa" infer --device "$device" --model-repository "$model" --image "$image" \
      --note "dia 55.1um, depth 36.2um" 2>/dev/null >>"$out"
  done
}
infer cpu "$work/cpu.json"

for device in $devices; do
  cache="$work/trt-cache-$device"
  check() { "$kensa" check --device "$device" --model-repository "$model" \
    --trt-engine-cache "$cache" --batch-sizes 1,8,16,max --runs 5 2>"$work/$device.log"; }
  if ! first=$(check); then
    say FAIL "$device: the provider did not register: $(tail -n 3 "$work/$device.log")"
    failed=1
    continue
  fi
  field() { python3 -c "import json, sys; m = json.load(sys.stdin)['models'][0]; print($1)"; }
  provider=$(field "m['provider']" <<<"$first")
  [[ $provider == "$device" ]] && say ok "$device: provider registered" \
    || { say FAIL "$device: sessions run on $provider"; failed=1; }
  field "'\n'.join(f'{k}: {v[\"ms\"]:.1f} ms, {v[\"images_per_s\"]:.1f} images/s' for k, v in m['timings'].items())" \
    <<<"$first" | sed "s/^/         $device bare /"

  infer "$device" "$work/$device.json"
  worst=$(python3 - "$work/cpu.json" "$work/$device.json" <<'PY'
import json, sys
def verdicts(path):
    text, out, depth, start = open(path).read(), [], 0, 0
    for i, c in enumerate(text):
        if c == "{":
            depth, start = depth + 1, (i if depth == 0 else start)
        elif c == "}":
            depth -= 1
            if depth == 0:
                out.append(json.loads(text[start : i + 1]))
    return out
worst = 0.0
for a, b in zip(verdicts(sys.argv[1]), verdicts(sys.argv[2])):
    for label, p in a["probabilities"].items():
        worst = max(worst, abs(p - b["probabilities"][label]))
    for x, y in zip(a["attention"]["values"], b["attention"]["values"]):
        worst = max(worst, abs(x - y))
print(f"{worst:.2e}")
PY
)
  if python3 -c "import sys; sys.exit(0 if float('$worst') <= 1e-3 else 1)"; then
    say ok "$device: parity with cpu, max |diff| $worst (probabilities and attention)"
  else
    say FAIL "$device: max |diff| $worst against cpu, over 1e-3"
    failed=1
  fi

  if [[ $device == tensorrt ]]; then
    second=$(check)
    load1=$(field "int(m['load_ms'])" <<<"$first")
    load2=$(field "int(m['load_ms'])" <<<"$second")
    files=$(find "$cache" -type f | wc -l)
    if [[ $files -gt 0 && $load2 -lt $load1 ]]; then
      say ok "tensorrt: engine cache reused ($files files; load $load1 ms, then $load2 ms)"
    else
      say FAIL "tensorrt: engine cache not reused ($files files; load $load1 ms, then $load2 ms)"
      failed=1
    fi
  fi
done
exit $failed
