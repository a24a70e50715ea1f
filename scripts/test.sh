#!/usr/bin/env bash
# The README's test command: set up a fresh .venv with the test extras, run the suite.
# Two pytest-xdist workers (one torch thread each, tests/conftest.py); the cluster process tests
# are one xdist group, so --dist loadgroup runs them on one worker, one after another.
# AUTOTUNE_TEST_WORKERS=0 runs the suite in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q -p no:cacheprovider -n "${AUTOTUNE_TEST_WORKERS:-2}" --dist loadgroup "$@"
