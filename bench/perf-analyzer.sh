#!/usr/bin/env bash
# Triton's perf_analyzer against a running kensa, unmodified, over HTTP and gRPC, sending only
# the image (every other input is optional in kensa's model metadata).
#
# perf_analyzer is a C++ binary that is not on PyPI as a package of its own (perf-analyzer is a
# placeholder there); the manylinux wheel of tritonclient 2.41.1 carries it in its data/bin.
# It links libb64 (Debian libb64-0d, installed here as root) and libcudart.so.12, which it
# loads even for a CPU server (taken from the nvidia-cuda-runtime-cu12 wheel). Both wheels are
# checked against the sha256 recorded below.
#
#   bench/perf-analyzer.sh HTTP_PORT GRPC_PORT MODEL IMAGE [perf_analyzer flags]
set -euo pipefail
cd "$(dirname "$0")/.."
http_port=${1:?usage: bench/perf-analyzer.sh HTTP_PORT GRPC_PORT MODEL IMAGE [flags]}
grpc_port=${2:?}
model=${3:?}
image=${4:?}
shift 4

tritonclient=tritonclient-2.41.1-py3-none-manylinux1_x86_64.whl
tritonclient_sha256=22ad56ae5ab25518862dec85af0a8246a32a1e14e2ee1d86f1444ce432c254e1
cudart=nvidia_cuda_runtime_cu12-12.8.90-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
cudart_sha256=adade8dcbd0edf427b7204d480d6066d33902cab2a4707dcfc48a2d0fd44ab90

wheels=.cache/wheels
tools=.cache/perf-analyzer
python=${PYTHON:-python3}
mkdir -p "$wheels" "$tools/lib"
fetch() { # wheel file, requirement, sha256
  if [[ ! -f "$wheels/$1" ]]; then
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux1_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_17_x86_64 --dest "$wheels" "$2"
  fi
  echo "$3  $wheels/$1" | sha256sum --check --quiet
}
if [[ ! -x "$tools/perf_analyzer" ]]; then
  fetch "$tritonclient" tritonclient==2.41.1 "$tritonclient_sha256"
  fetch "$cudart" nvidia-cuda-runtime-cu12==12.8.90 "$cudart_sha256"
  "$python" - "$wheels/$tritonclient" "$wheels/$cudart" "$tools" <<'PY'
import pathlib
import sys
import zipfile

client, cudart, tools = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
with zipfile.ZipFile(client) as archive:
    (tools / "perf_analyzer").write_bytes(
        archive.read("tritonclient-2.41.1.data/data/bin/perf_analyzer")
    )
with zipfile.ZipFile(cudart) as archive:
    (tools / "lib" / "libcudart.so.12").write_bytes(
        archive.read("nvidia/cuda_runtime/lib/libcudart.so.12")
    )
PY
  chmod +x "$tools/perf_analyzer"
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
  else
    echo "perf_analyzer needs libb64 (Debian/Ubuntu: sudo apt-get install libb64-0d)" >&2
    exit 1
  fi
fi

# One image as perf_analyzer's input data: binary BYTES go base64-encoded in the tensor's wire
# form (each element prefixed by its length, 4 bytes little-endian), one element ([1]).
data=$(mktemp)
"$python" - "$image" "$data" <<'PY'
import base64
import json
import struct
import sys

image = open(sys.argv[1], "rb").read()
encoded = base64.b64encode(struct.pack("<I", len(image)) + image).decode()
json.dump({"data": [{"image": {"b64": encoded, "shape": [1]}}]}, open(sys.argv[2], "w"))
PY
export LD_LIBRARY_PATH="$PWD/$tools/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for protocol in http grpc; do
  port=$http_port
  [[ $protocol == grpc ]] && port=$grpc_port
  echo "== perf_analyzer over $protocol"
  "$tools/perf_analyzer" -m "$model" -i "$protocol" -u "127.0.0.1:$port" --input-data "$data" \
    "$@"
done
rm -f "$data"
