#!/usr/bin/env bash
# The README's test command: set up a fresh .venv with the test extras, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q -p no:cacheprovider "$@"
