"""benchmarks/gpu_checks.sh: its `--dry-run` runs every GPU check's code path (the two throughput comparisons with
the PPO phase breakdown, ZeRO-3 training with a consolidated save that loads back, fp16) at tiny shapes on CPU, so
the one-shot GPU script cannot rot. About 2 minutes on 2 shared cores: marked slow."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_checks.sh"


def run_checks(out, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_check_names_are_refused_with_the_allowed_ones(tmp_path):
    proc = run_checks(tmp_path, "--only", "reward,zero4", timeout=120)
    assert proc.returncode == 2
    assert "--only must be a subset of ['reward', 'ppo', 'zero3', 'fp16']" in proc.stderr


@pytest.mark.slow
def test_dry_run_runs_every_check_and_writes_one_json_and_a_table(tmp_path):
    proc = run_checks(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_checks.json").read_text())
    assert report["mode"] == "dry-run" and report["ok"] is True
    checks = report["checks"]
    assert set(checks) == {"reward", "ppo", "zero3", "fp16"}

    reward = checks["reward"]  # BRME against TRL's RewardTrainer, both measured in this run
    assert reward["pairs_per_s_ratio"] > 0 and reward["memory_ratio"] > 0

    ppo = checks["ppo"]  # where the time goes, per RobustPPO arm
    for arm in ("single", "brme"):
        phases = ppo["phases_s_per_update"][arm]
        assert phases["generation"] > 0 and phases["PPO update"] > 0 and phases["ref fwd"] > 0
    assert ppo["brme_cost"] > 0

    brme, lora = checks["zero3"]["zero3-brme"], checks["zero3"]["zero3-ppo-lora"]
    assert brme["zero_stage"] == 3 and lora["zero_stage"] == 3
    assert "model.safetensors" in brme["saved_files"] and "adapter_model.safetensors" in lora["saved_files"]
    assert all(r["ok"] for r in (brme, lora))  # each reloaded its saved model and found it whole and trained

    fp16 = checks["fp16"]["fp16"]
    assert fp16["brme"]["mixed_precision"] == "fp16" and fp16["ppo"]["mixed_precision"] == "fp16"
    assert fp16["brme"]["losses"] and fp16["ppo"]["losses"]

    table = (tmp_path / "gpu_checks_table.txt").read_text()
    for line_start in ("reward  ok", "ppo     ok", "zero3   ok", "fp16    ok"):
        assert line_start in table
    assert "phases brme (s/update): generation" in table
    assert proc.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])  # the table is printed last


@pytest.mark.slow
def test_profile_mode_times_only_the_robust_ppo_phases(tmp_path):
    proc = run_checks(tmp_path, "--profile")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_checks.json").read_text())
    assert report["mode"] == "profile" and set(report["checks"]) == {"ppo"}
    assert report["checks"]["ppo"]["arms"] == ["single", "brme"]
    assert set(report["checks"]["ppo"]["phases_s_per_update"]) == {"single", "brme"}


def test_a_check_past_the_deadline_is_stopped_and_reported(tmp_path):
    proc = run_checks(tmp_path, "--only", "fp16,zero3", "--deadline", "3", timeout=120)
    assert proc.returncode == 1  # a check did not finish: the run is not ok
    report = json.loads((tmp_path / "gpu_checks.json").read_text())
    assert report["ok"] is False and report["total_wall_s"] < 30
    assert report["checks"]["fp16"]["fp16"]["exit_code"] == 124  # stopped at the deadline
    assert report["checks"]["zero3"]["zero3-brme"]["exit_code"] == 125  # never started: no time left
    assert "fp16    ERR" in (tmp_path / "gpu_checks_table.txt").read_text()
