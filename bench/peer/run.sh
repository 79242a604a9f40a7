#!/usr/bin/env bash
# Serves the Python peer (bench/peer/server.py) on http://127.0.0.1:8090 for comparison with
# kensa: the project's .venv plus bench/peer/requirements.txt, one worker process per core.
#
#   bench/peer/run.sh [--port 8090] [--workers N] [--model models/demo]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
port=8090
workers=$(nproc)
model=models/demo
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
scripts/setup-python.sh
.venv/bin/python -m pip install --quiet -r bench/peer/requirements.txt
export KENSA_PEER_MODEL="$root/$model"
exec .venv/bin/python -m uvicorn --app-dir bench/peer server:app \
  --host 127.0.0.1 --port "$port" --workers "$workers" --log-level warning
