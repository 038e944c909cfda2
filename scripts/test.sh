#!/usr/bin/env bash
# The whole test suite, slow end-to-end tests included (add -m "not slow" to skip them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,deepspeed
. .venv/bin/activate
export HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu
ruff check .
python -m pytest -q "$@"
