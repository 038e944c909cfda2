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
