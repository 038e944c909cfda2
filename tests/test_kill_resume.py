"""
Runs in real subprocesses, killed with SIGKILL and resumed, end where an uninterrupted run with the same seed ends:
BRME reward training (tests/scripts/resume_brme.py, HF Trainer checkpoints) and RobustPPOTrainer
(tests/scripts/resume_ppo.py, its own resume path). Killed after the first checkpoint, or inside a later save: then
the checkpoint being written never appears under its final name, the previous one stays intact, and resuming picks it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from trl_robust.checkpointing import staging_dirs

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"
# script -> (number of steps / updates, where the final weights are, log key present on training-step rows)
RUNS = {
    "resume_brme.py": (8, "final/model.safetensors", "loss"),
    "resume_ppo.py": (6, "final.safetensors", "objective/scores"),
}
COMPARED = {"resume_brme.py": ["loss"], "resume_ppo.py": ["objective/scores", "objective/kl", "loss/policy_avg"]}


def _launch(script: str, output_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / script), "--output_dir", str(output_dir), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 120) -> None:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]


def _wait_for_sigkill(process: subprocess.Popen, timeout: float = 120) -> None:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == -signal.SIGKILL, out[-3000:]


class References:
    """Uninterrupted runs, one per script, shared by this module's tests: started by the first test that needs one
    (next to that test's interrupted run, as both share the cores) and awaited when first compared."""

    def __init__(self, root: Path):
        self.root, self.runs = root, {}

    def start(self, script: str) -> None:
        if script not in self.runs:
            folder = self.root / script.removesuffix(".py")
            self.runs[script] = (folder, _launch(script, folder))

    def folder(self, script: str) -> Path:
        self.start(script)
        folder, process = self.runs[script]
        if process.returncode is None:
            _finish(process)
        return folder


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    refs = References(tmp_path_factory.mktemp("reference"))
    yield refs
    for _, process in refs.runs.values():
        if process.returncode is None:
            process.kill()
            process.communicate()


def _steps(folder: Path, key: str) -> dict[int, dict]:
    history = json.loads((folder / "log_history.json").read_text())
    return {entry["step"]: entry for entry in history if key in entry}


def assert_same_run(script: str, reference: Path, resumed: Path, first_resumed_step: int) -> None:
    """Same final weights, and the steps the resumed run trained itself logged the same values."""
    total, weights, key = RUNS[script]
    expected, got = load_file(reference / weights), load_file(resumed / weights)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    reference_steps, resumed_steps = _steps(reference, key), _steps(resumed, key)
    assert sorted(reference_steps) == list(range(1, total + 1))
    assert sorted(resumed_steps) == list(range(1, total + 1))  # the checkpoint's history, then the resumed steps
    for step in range(first_resumed_step, total + 1):
        for name in COMPARED[script]:
            assert resumed_steps[step][name] == pytest.approx(reference_steps[step][name], rel=1e-5, abs=1e-6), (
                step,
                name,
            )


@pytest.mark.slow
@pytest.mark.parametrize("script", ["resume_brme.py", "resume_ppo.py"])
def test_sigkill_after_first_checkpoint_then_resume_matches_an_uninterrupted_run(tmp_path, references, script):
    interrupted, flag = tmp_path / "interrupted", tmp_path / "saved.flag"
    killed = _launch(script, interrupted, "--pause_after_save", str(flag))
    references.start(script)
    deadline = time.time() + 90
    while not flag.exists():
        assert killed.poll() is None, killed.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint within 90 s"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    _wait_for_sigkill(killed, timeout=10)
    assert flag.read_text() == "2"
    assert sorted(p.name for p in interrupted.iterdir() if p.is_dir()) == ["checkpoint-2"]  # and no staging folder

    _finish(_launch(script, interrupted, "--resume"))
    assert_same_run(script, references.folder(script), interrupted, first_resumed_step=3)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["resume_brme.py", "resume_ppo.py"])
def test_killed_inside_a_save_keeps_the_previous_checkpoint_and_resumes_from_it(tmp_path, references, script):
    interrupted = tmp_path / "interrupted"
    killed = _launch(script, interrupted, "--die_in_save", "4")
    references.start(script)
    _wait_for_sigkill(killed)

    # The save of step 4 was cut after the weights and the optimizer: it exists only in its staging folder.
    staging = interrupted / "tmp-checkpoint-4"
    assert staging_dirs(str(interrupted)) == [str(staging)]
    written = {p.name for p in (staging / "checkpoint-4").iterdir()}
    assert {"model.safetensors", "optimizer.pt"} <= written and "trainer_state.json" not in written
    assert sorted(p.name for p in interrupted.glob("checkpoint-*")) == ["checkpoint-2"]
    assert get_last_checkpoint(str(interrupted)) == str(interrupted / "checkpoint-2")

    # checkpoint-2 is complete and loadable.
    previous = interrupted / "checkpoint-2"
    assert json.loads((previous / "trainer_state.json").read_text())["global_step"] == 2
    assert load_file(previous / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.load(previous / name, weights_only=False)
    if script == "resume_ppo.py":
        assert torch.load(previous / "policy_and_value.pt", weights_only=True)

    _finish(_launch(script, interrupted, "--resume"))
    assert staging_dirs(str(interrupted)) == []  # the next save cleared the leftover
    saved = sorted(p.name for p in interrupted.glob("checkpoint-*"))
    assert saved == [f"checkpoint-{step}" for step in range(2, RUNS[script][0] + 1, 2)]
    assert_same_run(script, references.folder(script), interrupted, first_resumed_step=3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_robust_grpo_and_rloo_resume_from_their_last_complete_checkpoint_and_continue(tmp_path, smol_tokenizer, kind):
    from tests.robust_rl_helpers import prompt_dataset, rl_args, save_policy, snapshot, step_logs, train_great_brme
    from trl_robust import RobustGRPOConfig, RobustGRPOTrainer, RobustRLOOConfig, RobustRLOOTrainer

    Trainer, Config = (RobustGRPOTrainer, RobustGRPOConfig) if kind == "grpo" else (RobustRLOOTrainer, RobustRLOOConfig)

    torch.set_num_threads(1)
    policy, brme = save_policy(tmp_path / "policy", smol_tokenizer), train_great_brme(tmp_path / "brme", smol_tokenizer)
    out = tmp_path / "out"

    def trainer(max_steps, output_dir=out):
        args = rl_args(output_dir, smol_tokenizer, max_steps=max_steps, lr_scheduler_type="constant")
        args.update(save_strategy="steps", save_steps=1, save_total_limit=1)
        return Trainer(
            model=str(policy),
            reward_funcs=str(brme),
            args=Config(**args),
            train_dataset=prompt_dataset(),
            processing_class=smol_tokenizer,
        )

    first = trainer(2)
    first.train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # rotated after the atomic rename
    saved = load_file(out / "checkpoint-2" / "model.safetensors")
    # A save killed half-way leaves only a staging folder, with a higher step: resume must not pick it.
    (out / "tmp-checkpoint-9" / "checkpoint-9").mkdir(parents=True)
    (out / "tmp-checkpoint-9" / "checkpoint-9" / "model.safetensors").write_bytes(b"half")
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-2")

    second = trainer(3)
    loaded = {}
    original_load = second._load_from_checkpoint

    def record_load(checkpoint, *args, **kwargs):
        original_load(checkpoint, *args, **kwargs)
        loaded[checkpoint] = snapshot(second.model)

    second._load_from_checkpoint = record_load
    second.train(resume_from_checkpoint=True)
    assert list(loaded) == [str(out / "checkpoint-2")]
    for name, value in loaded[str(out / "checkpoint-2")].items():
        torch.testing.assert_close(value, saved[name], msg=name)  # started from the checkpoint's weights ...
    assert second.state.global_step == 3
    assert [entry["step"] for entry in step_logs(second)] == [1, 2, 3]  # ... history restored, one more step logged
    changed = snapshot(second.model)
    assert any(not torch.equal(changed[name], saved[name]) for name in saved)  # ... and trained on
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-3"]  # leftover staging folder cleared

    uninterrupted = trainer(3, tmp_path / "uninterrupted")
    uninterrupted.train()
    for name, value in snapshot(uninterrupted.model).items():
        torch.testing.assert_close(changed[name], value, msg=name)


def _deepspeed_run(output_dir: Path, *extra: str) -> None:
    from tests.conftest import deepspeed_launcher, run_launch
    from trl_robust.accelerate_configs import config_path

    script = [str(SCRIPTS / "resume_brme.py"), "--deepspeed", "--output_dir", str(output_dir), *extra]
    run_launch([*deepspeed_launcher(config_path("cpu_zero2")), *script], timeout=600)


@pytest.mark.slow
def test_atomic_checkpoints_under_deepspeed_hold_every_ranks_shards_and_resume(tmp_path):
    """Two processes under ZeRO-2 each write their optimizer shard into the staging folder; the main one renames it only
    after both did, so every checkpoint-N holds both shards, and resuming from one ends like the uninterrupted run."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _deepspeed_run(full)
    assert staging_dirs(str(full)) == []
    for step in (2, 4, 6, 8):
        checkpoint = full / f"checkpoint-{step}"
        assert (checkpoint / "trainer_state.json").is_file() and (
            checkpoint / "latest"
        ).read_text() == f"global_step{step}"
        shards = sorted(p.name for p in (checkpoint / f"global_step{step}").glob("*optim_states.pt"))
        assert [name[: len("zero_pp_rank_0")] for name in shards] == ["zero_pp_rank_0", "zero_pp_rank_1"], shards
        assert len(list(checkpoint.glob("rng_state_*.pth"))) == 2  # one per rank

    _deepspeed_run(resumed, "--resume", str(full / "checkpoint-4"))
    assert_same_run("resume_brme.py", full, resumed, first_resumed_step=5)


def test_best_checkpoint_is_recorded_under_its_final_name(tmp_path, smol_tokenizer):
    """With load_best_model_at_end the Trainer looks for the best checkpoint while saving (inside the staging folder):
    the path it records, in memory and in every trainer_state.json, is the final `checkpoint-N`, kept by rotation."""
    from datasets import Dataset

    from tests.conftest import preference_rows
    from tests.test_brme_reward_trainer import config, tiny_brme
    from trl_robust import BRMERewardTrainer

    torch.set_num_threads(1)
    out = tmp_path / "out"
    args = config(out, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2)
    args.load_best_model_at_end, args.metric_for_best_model, args.greater_is_better = True, "eval_accuracy", True
    args.save_total_limit = 1
    data = Dataset.from_list(preference_rows(48))
    trainer = BRMERewardTrainer(
        tiny_brme(smol_tokenizer),
        args,
        train_dataset=data,
        eval_dataset=data.select(range(8)),
        processing_class=smol_tokenizer,
    )
    trainer.train()
    best = Path(trainer.state.best_model_checkpoint)
    assert best.parent == out and best.name == f"checkpoint-{trainer.state.best_global_step}" and best.is_dir()
    for state_file in out.glob("checkpoint-*/trainer_state.json"):
        recorded = json.loads(state_file.read_text())["best_model_checkpoint"]
        assert Path(recorded).parent == out and "tmp-" not in recorded, recorded
    assert staging_dirs(str(out)) == []
