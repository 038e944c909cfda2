"""
Run a training script under FSDP2 on CPU processes (gloo), for the tests; on GPUs no shim is needed.

    ACCELERATE_USE_CPU=true accelerate launch --config_file trl_robust/accelerate_configs/cpu_fsdp2.yaml \
        tests/scripts/fsdp2_cpu.py tests/scripts/ds_train_brme.py --output_dir OUT

torch's FSDP2 (`fully_shard`) shards and trains on CPU tensors over gloo, but accelerate switches to
`DistributedType.FSDP` only on an accelerator (CUDA, XPU, NPU, ...); on CPU processes it stays `MULTI_CPU` and the
model would be trained unsharded by plain DDP. This shim turns an `AcceleratorState` built with an FSDP plugin from
`MULTI_CPU` into `FSDP` (each time one is built), as accelerate does for GPUs, so that the rest (transformers' Trainer,
accelerate's `fsdp2_prepare_model`, the FULL_STATE_DICT save) runs the same code as on GPUs. Then it runs the script
given first. With `FSDP2_RECORD=path` in the environment, rank 0 writes there the class names of the modules
`fully_shard` was applied to (the evidence that the run really sharded, and what).
"""

import atexit
import json
import os
import runpy
import sys
from pathlib import Path

import torch.distributed.fsdp
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    # The Accelerator passes its plugin once (accelerate drops it on CPU); every later `AcceleratorState()` copies the
    # process state (MULTI_CPU) in again, so the switch is made on each call, from the plugin kept in the shared state.
    plugin = fsdp_plugin if fsdp_plugin is not None else getattr(self, "fsdp_plugin", None)
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

_sharded: list[str] = []
_fully_shard = torch.distributed.fsdp.fully_shard


def _recording_fully_shard(module, *args, **kwargs):
    _sharded.append(type(module).__name__)
    return _fully_shard(module, *args, **kwargs)


torch.distributed.fsdp.fully_shard = _recording_fully_shard  # accelerate imports it at call time


def _write_record() -> None:
    path = os.environ.get("FSDP2_RECORD")
    if path and os.environ.get("RANK", "0") == "0":
        Path(path).write_text(json.dumps({"sharded": _sharded, "world_size": int(os.environ.get("WORLD_SIZE", 1))}))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: fsdp2_cpu.py SCRIPT [ARGS...]")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    atexit.register(_write_record)
    runpy.run_path(script, run_name="__main__")
