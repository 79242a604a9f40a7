#!/usr/bin/env bash
# Puts the OCR graphs kensa reads burnt-in text with where it looks for them: .ocr/
# (PP-OCRv4 detection and recognition, from the rapidocr-onnxruntime 1.4.4 wheel on PyPI,
# Apache-2.0; the recogniser's alphabet is in its ONNX metadata). The wheel's sha256 is
# checked; nothing is downloaded at run time. Re-running is cheap: an existing copy is kept.
#
#   scripts/setup-ocr.sh                 # into .ocr/
#   OCR_DEST=/opt/kensa/ocr scripts/setup-ocr.sh
set -euo pipefail

version=1.4.4
wheel_name="rapidocr_onnxruntime-$version-py3-none-any.whl"
wheel_sha256=971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf
files=(ch_PP-OCRv4_det_infer.onnx ch_PP-OCRv4_rec_infer.onnx)

root=$(cd "$(dirname "$0")/.." && pwd)
dest="${OCR_DEST:-$root/.ocr}"
marker="$dest/.rapidocr-onnxruntime-$version"
if [[ -f "$marker" && -f "$dest/${files[0]}" && -f "$dest/${files[1]}" ]]; then
  exit 0
fi

python=${PYTHON:-python3}
wheels="$root/.cache/wheels"
mkdir -p "$wheels" "$dest"
if [[ ! -f "$wheels/$wheel_name" ]]; then
  "$python" -m pip download --quiet --no-deps --dest "$wheels" "rapidocr-onnxruntime==$version"
fi
actual=$(sha256sum "$wheels/$wheel_name" | cut -d' ' -f1)
if [[ "$actual" != "$wheel_sha256" ]]; then
  echo "$wheel_name has sha256 $actual, expected $wheel_sha256" >&2
  exit 1
fi
"$python" - "$wheels/$wheel_name" "$dest" "${files[@]}" <<'PY'
import pathlib
import sys
import zipfile

wheel, dest, names = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
with zipfile.ZipFile(wheel) as archive:
    for name in names:
        (dest / name).write_bytes(archive.read(f"rapidocr_onnxruntime/models/{name}"))
PY
touch "$marker"
echo "PP-OCRv4 detection and recognition (rapidocr-onnxruntime $version) are in $dest"
