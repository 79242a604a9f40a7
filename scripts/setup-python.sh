#!/usr/bin/env bash
# Creates the model pipeline's virtual environment in .venv (git-ignored) from the pinned
# requirements, and reuses it while the requirements are unchanged.
#
# torch from the package registry is the CUDA build (about 5 GB with its libraries); it runs on
# CPU where there is no GPU. The first run takes a few minutes, later runs a second.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
requirements="$root/models/pipeline/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
python=${PYTHON:-python3}
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$requirements"
"$venv/bin/python" -m pip install --quiet --no-deps -e "$root/models/pipeline"
echo "$want" > "$stamp"
echo "Python environment ready in $venv"
