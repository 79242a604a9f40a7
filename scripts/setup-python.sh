#!/usr/bin/env bash
# Creates the Python virtual environment in .venv (git-ignored) from the pinned requirements of
# the model pipeline and of the client tests (tests/python), and reuses it while neither changes.
#
# torch from the package registry is the CUDA build (about 5 GB with its libraries); it runs on
# CPU where there is no GPU. The first run takes a few minutes, later runs a second.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
requirements="$root/models/pipeline/requirements.txt"
test_requirements="$root/tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(cat "$requirements" "$test_requirements" | sha256sum | cut -d' ' -f1)

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
python=${PYTHON:-python3}
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# One resolver run for both files, so their pins are satisfied together.
"$venv/bin/python" -m pip install --quiet -r "$requirements" -r "$test_requirements"
"$venv/bin/python" -m pip install --quiet --no-deps -e "$root/models/pipeline"
echo "$want" > "$stamp"
echo "Python environment ready in $venv"
