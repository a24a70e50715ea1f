#!/usr/bin/env bash
# Install the CPU build of torch on a machine without CUDA. A plain `pip install torch==X`
# pulls the CUDA build (gigabytes of nvidia-* wheels) from PyPI on Linux, so ask PyTorch's CPU
# wheel index first; where that index is unreachable (an offline mirror, a proxy that only
# passes PyPI) say so and fall back to the default index. The first try gives up fast
# (--timeout 10, no retries), so an unreachable index costs seconds, not minutes.
# Env: TORCH_VERSION (default 2.13.0), TORCH_CPU_INDEX, PIP (default: python -m pip).
set -euo pipefail
version=${TORCH_VERSION:-2.13.0}
index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
read -r -a pip <<<"${PIP:-python -m pip}"
if "${pip[@]}" install -q --index-url "$index" --timeout 10 --retries 0 "torch==$version"; then
  exit 0
fi
echo "setup: PyTorch's CPU wheel index ($index) is unreachable or has no torch==$version;" \
     "installing torch==$version from the default index instead (on Linux that may be the CUDA build)" >&2
"${pip[@]}" install -q "torch==$version"
