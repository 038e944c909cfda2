#!/bin/bash
# Every owed GPU check in one command (benchmarks/gpu_checks.py): BRME vs TRL RewardTrainer, RobustPPO vs TRL 1.12
# PPOTrainer with the PPO phase breakdown, ZeRO-3 on one GPU (BRME; PPO with LoRA) with a consolidated save that
# loads back, fp16 with its loss scaler. Writes OUT/gpu_checks.json, OUT/gpu_checks_table.txt and one log per check.
#
#   bash ../shared/gpu/prepare.sh                       # here, once: fills .gpu/ (wheels, TRL 1.12, tokenizer)
#   bash benchmarks/gpu_checks.sh [--out DIR]           # on the GPU machine, from the project root (~6 min, H100/H200)
#   bash benchmarks/gpu_checks.sh --profile             # only where PPO's GPU time goes (RobustPPO arms)
#   bash benchmarks/gpu_checks.sh --dry-run --out /tmp/dry   # CPU, tiny shapes, same code paths (the test suite runs it)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
case " $* " in
  *" --dry-run "*) ;;
  *)
    # On the GPU machine: install what its image lacks from .gpu/ (TRL 1.16 stack into /tmp/site, TRL 1.12 into
    # /tmp/trl112), once per machine.
    if [ -f .gpu/setup.sh ] && [ ! -d /tmp/trl112/trl ]; then bash .gpu/setup.sh; fi
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}:/tmp/site"
    ;;
esac
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_checks.py --trl112-path /tmp/trl112 "$@"
