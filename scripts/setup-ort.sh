#!/usr/bin/env bash
# Puts ONNX Runtime's shared library where kensa looks for it by default: .ort/lib/.
#
# The library comes from the PyPI wheel (onnxruntime, or onnxruntime-gpu with --gpu), so no
# download outside the package registry is needed. Re-running is cheap: an existing copy is kept.
#
#   scripts/setup-ort.sh          # CPU build
#   scripts/setup-ort.sh --gpu    # CUDA + TensorRT build (needs CUDA 12 and cuDNN 9 at run time)
#   ORT_DEST=.ort-gpu scripts/setup-ort.sh --gpu   # into .ort-gpu/lib/ instead (gpu-check.sh)
set -euo pipefail

version=1.31.1
package=onnxruntime
if [[ "${1:-}" == "--gpu" ]]; then
  package=onnxruntime-gpu
fi

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/${ORT_DEST:-.ort}/lib"
marker="$dest/.$package-$version"
if [[ -f "$marker" && -f "$dest/libonnxruntime.so.$version" ]]; then
  exit 0
fi

python=${PYTHON:-python3}
wheels="$root/.cache/wheels"
mkdir -p "$wheels" "$dest"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --dest "$wheels" "$package==$version"
wheel=$(ls "$wheels"/"${package//-/_}"-"$version"-*.whl | head -n 1)

rm -f "$dest"/libonnxruntime* "$dest"/.onnxruntime*
"$python" - "$wheel" "$dest" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        base = pathlib.PurePosixPath(name).name
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            (dest / base).write_bytes(archive.read(name))
PY
touch "$marker"
echo "ONNX Runtime $version ($package) is in $dest"
