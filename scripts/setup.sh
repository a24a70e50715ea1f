#!/usr/bin/env bash
# Create .venv and install autotune. On a machine without CUDA, torch comes as the CPU build
# (pinned, so pip does not pull gigabytes of CUDA packages). Extra pip args: EXTRAS="test".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
