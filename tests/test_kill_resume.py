"""A BRME run killed with SIGKILL after its first checkpoint and resumed ends where an uninterrupted run ends."""

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

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "resume_brme.py"


def _launch(output_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--output_dir", str(output_dir), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 60) -> None:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    flag = tmp_path / "saved.flag"
    killed = _launch(interrupted, "--pause_after_save", str(flag))
    uninterrupted = _launch(reference)  # both share the 2 cores: start them together
    deadline = time.time() + 60
    while not flag.exists():
        assert killed.poll() is None, killed.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint within 60 s"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    assert killed.returncode == -signal.SIGKILL
    assert flag.read_text() == "2"
    assert sorted(p.name for p in interrupted.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (interrupted / "final").exists()

    _finish(_launch(interrupted, "--resume"))
    _finish(uninterrupted)

    expected, got = (
        load_file(reference / "final" / "model.safetensors"),
        load_file(interrupted / "final" / "model.safetensors"),
    )
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)

    def losses(folder):
        history = json.loads((folder / "log_history.json").read_text())
        return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}

    reference_losses, resumed_losses = losses(reference), losses(interrupted)
    assert sorted(reference_losses) == list(range(1, 9))
    assert set(range(3, 9)) <= set(resumed_losses)  # the resumed run logged steps 3..8 itself
    for step in range(3, 9):
        assert resumed_losses[step] == pytest.approx(reference_losses[step], rel=1e-5, abs=1e-6), step
