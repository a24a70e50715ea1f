#!/usr/bin/env bash
# Create .venv and install autotune. On a machine without CUDA, torch comes as the CPU build
# from PyTorch's CPU wheel index (scripts/install_cpu_torch.sh), so pip does not pull gigabytes
# of CUDA packages. Extra pip args: EXTRAS="test".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Progress on stderr: the first run takes a minute or two and pip is quiet (-q).
if [ ! -d .venv ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "setup: no nvidia-smi; installing the CPU build of torch" >&2
  bash scripts/install_cpu_torch.sh
fi
echo "setup: installing autotune${EXTRAS:+ [$EXTRAS]} and its dependencies into .venv (1-2 minutes the first time)" >&2
python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
echo "setup: done; activate with: . .venv/bin/activate" >&2
