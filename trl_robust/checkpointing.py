"""
Atomic training checkpoints.

transformers' `Trainer._save_checkpoint` writes straight into `output_dir/checkpoint-N`: the model, then the optimizer
and scheduler, the RNG states and `trainer_state.json` last. A run killed in between leaves a `checkpoint-N` that
`resume_from_checkpoint=True` picks (it takes the highest `checkpoint-N` folder) and then fails on, or worse, loads
half. Here the same save goes into a staging folder, `output_dir/tmp-checkpoint-N/checkpoint-N`, which is renamed to
`output_dir/checkpoint-N` (one `os.replace` on the same filesystem) only once every process has written its files.
So a `checkpoint-N` folder is always complete, a killed save leaves the previous checkpoints untouched, and the
staging folder it leaves behind (which `get_last_checkpoint` and `save_total_limit` ignore: their pattern is
`checkpoint-<digits>`) is deleted when the next save begins. Old checkpoints are rotated (`save_total_limit`) only
after the new one is in place.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

STAGING_PREFIX = f"tmp-{PREFIX_CHECKPOINT_DIR}-"


def staging_dirs(run_dir: str) -> list[str]:
    """Staging folders in `run_dir` (left there by saves that were interrupted, or the one being written)."""
    if not os.path.isdir(run_dir):
        return []
    return sorted(os.path.join(run_dir, name) for name in os.listdir(run_dir) if name.startswith(STAGING_PREFIX))


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> None:
    """Flush every file of `path` (and the folders) to disk, so that the rename never publishes data still only in the
    page cache (a power loss right after it would otherwise leave an empty or short file under the final name)."""
    for root, _, files in os.walk(path):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def _publish(staging: str, staged: str, final: str) -> None:
    """Rename the complete `staged` folder to `final`. A `final` already there (left in this output_dir by an earlier
    run) is first moved into the staging folder, which is then deleted with it."""
    if os.path.lexists(final):
        os.replace(final, os.path.join(staging, "replaced"))
    os.replace(staged, final)
    shutil.rmtree(staging, ignore_errors=True)
    _fsync(os.path.dirname(final))


@contextmanager
def atomic_checkpoint(trainer: Any, trial: Any = None) -> Iterator[str]:
    """
    Make a `Trainer._save_checkpoint` call inside the block atomic.

    Inside the block the trainer's run folder (`_get_output_dir`) is the staging folder `output_dir/tmp-checkpoint-N`,
    so the Trainer's own save writes `tmp-checkpoint-N/checkpoint-N`; the block receives that path, for any extra file
    a trainer adds. On leaving the block without an error, once every process got there (under DeepSpeed each rank has
    written its shards), the process that saves (`args.should_save`) renames it to `output_dir/checkpoint-N` and then
    applies `save_total_limit`. An error inside the block leaves no `checkpoint-N` (the staging folder is deleted by
    the next save). Every process must enter the block, as every process calls `_save_checkpoint`.
    """
    args, state = trainer.args, trainer.state
    run_dir = trainer._get_output_dir(trial=trial)
    name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
    staging = os.path.join(run_dir, f"tmp-{name}")
    staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
    if args.should_save:
        for leftover in staging_dirs(run_dir):
            shutil.rmtree(leftover, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # no rank writes into a folder that is being cleared

    shadowed = vars(trainer).get("_get_output_dir")
    trainer._get_output_dir = lambda trial=None: staging  # an instance attribute hides the method
    try:
        yield staged
    finally:
        if shadowed is None:
            del trainer._get_output_dir
        else:
            trainer._get_output_dir = shadowed

    # The Trainer looked for the best checkpoint inside the staging folder: point it at the final folder.
    best = state.best_model_checkpoint
    if best is not None and os.path.abspath(best).startswith(os.path.abspath(staging) + os.sep):
        state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
        if args.should_save and os.path.isfile(os.path.join(staged, TRAINER_STATE_NAME)):
            state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
    trainer.accelerator.wait_for_everyone()  # every rank has written its files
    if args.should_save:
        _fsync_tree(staged)
        _publish(staging, staged, final)
        rotate_checkpoints(run_dir, args.save_total_limit, state.best_model_checkpoint, use_mtime=True)
    trainer.accelerator.wait_for_everyone()  # no rank goes on before checkpoint-N exists


class AtomicCheckpointMixin:
    """Put first in the bases of a `Trainer` subclass: its checkpoints are written by `atomic_checkpoint`."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        with atomic_checkpoint(self, trial):
            super()._save_checkpoint(model, trial)
