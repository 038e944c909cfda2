#!/usr/bin/env bash
# The main job on the embedded default (offline): BRME reward training on the shipped human preference data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
python -m trl_robust.scripts.quickstart "$@"
