#!/usr/bin/env bash
# Regenerates models/demo/: synthetic data (seeded) -> frozen pretrained towers (EfficientNet-Lite0,
# all-MiniLM-L6-v2, from the pinned wheels) exported to ONNX and run once over the data (features
# cached in .cache/) -> probe + five ablation heads -> calibration and operating point -> export
# of the full PFA+CMAF model -> fixtures, heat-map pictures, MODEL_CARD.md. About 4 minutes.
# `--tiny` builds the v1 from-scratch tiny model instead (e.g. --tiny --out tests/fixtures/tiny-model).
# Runs on CPU (KENSA_THREADS, default 1: beside a busy compile 1 thread is much faster than 2); the old folder is replaced only when the new one is complete.
# Usage: scripts/make-demo-model.sh [extra make-demo args, e.g. --untrained]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="models/pipeline${PYTHONPATH:+:$PYTHONPATH}"
rm -rf .cache/data/synthetic-demo
"$PY" -m kensa_pipeline --threads "${KENSA_THREADS:-1}" make-demo --out models/demo --data .cache/data/synthetic-demo \
  --seed 0 --scale 3 "$@"
