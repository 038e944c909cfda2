"""
RobustPPOTrainer with two CPU processes: DeepSpeed ZeRO-2 and ZeRO-3 launched with `accelerate launch` and the
package's `cpu_zero*.yaml` configs (DS_ACCELERATOR=cpu, gloo), and plain DDP launched with `torch.distributed.run`.
Each run takes ~10-15 s on 2 cores once DeepSpeed's shared-memory op is compiled (~30 s, cached, on a machine's first
launch).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.conftest import free_port
from trl_robust.accelerate_configs import config_path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "ds_train_ppo.py"


def _launch(stage: int | None, out: Path, *extra: str) -> dict:
    """Run the script on two CPU processes (DeepSpeed ZeRO-`stage`, or DDP when `stage` is None); its run_info."""
    if stage is None:  # plain DDP over gloo
        launcher = ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    else:
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install 'trl-robust[deepspeed]')")
        launcher = [
            "accelerate.commands.launch",
            "--config_file",
            config_path(f"cpu_zero{stage}"),
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
        ]
    cmd = [sys.executable, "-m", *launcher, str(SCRIPT), "--output_dir", str(out), *extra]
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    if stage is None:
        env["ACCELERATE_USE_CPU"] = "true"  # else accelerate sees two unconnected processes (DistributedType.NO)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(
            f"launch exited with {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
            f"--- stderr (tail) ---\n{proc.stderr[-6000:]}"
        )
    return json.loads((out / "run_info.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "reward", "extra"),
    [(2, "seqcls", []), (3, "brme", []), (3, "seqcls", ["--no_ds3_gather"]), (None, "brme", [])],
    ids=["zero2-seqcls", "zero3-brme", "zero3-sharded-generation", "ddp-brme"],
)
def test_robust_ppo_trains_and_saves_distributed(stage, reward, extra, tmp_path):
    out = tmp_path / "out"
    info = _launch(stage, out, "--reward", reward, *extra)
    assert info["deepspeed"] is (stage is not None) and info["zero_stage"] == stage and info["world_size"] == 2
    assert info["distributed_type"] == ("DistributedType.MULTI_CPU" if stage is None else "DistributedType.DEEPSPEED")
    if stage != 3:
        first, second = info["param_checksums"]
        assert first == pytest.approx(second, rel=1e-9), "the two replicas diverged"
    assert info["batch_size"] == 8  # 2 per device * 2 accumulation steps * 2 processes
    logs = [entry for entry in info["log_history"] if "objective/scores" in entry]
    assert len(logs) == 2 and logs[-1]["episode"] == 16
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
        assert torch.isfinite(torch.tensor(logs[-1][key])), key
    assert any(key.startswith("robust/") for key in logs[-1]) is (reward == "brme")

    # save_model gathered the policy (ZeRO-3: every partition) into one safetensors file, nothing else.
    state = load_file(out / "model.safetensors")
    assert all(tensor.numel() > 0 and torch.isfinite(tensor).all() for tensor in state.values())
    assert not any(key.startswith(("value_model", "policy.")) for key in state)
    assert not torch.equal(state["lm_head.weight"], torch.load(out / "initial_lm_head.pt")), "the policy did not train"
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model.lm_head.weight.detach(), state["lm_head.weight"])


@pytest.mark.slow
def test_resume_under_deepspeed_zero2_matches_the_uninterrupted_run(tmp_path):
    full = _launch(2, tmp_path / "full", "--save_steps", "1")
    checkpoint = tmp_path / "full" / "checkpoint-1"
    assert (checkpoint / "model.safetensors").is_file() and list(checkpoint.glob("global_step*"))
    resumed = _launch(2, tmp_path / "resumed", "--resume_from", str(checkpoint))
    assert resumed["param_checksums"] == pytest.approx(full["param_checksums"], rel=1e-9)
    last_full = [entry for entry in full["log_history"] if "objective/scores" in entry][-1]
    last_resumed = [entry for entry in resumed["log_history"] if "objective/scores" in entry][-1]
    assert last_resumed["episode"] == last_full["episode"] == 16
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
        assert last_resumed[key] == pytest.approx(last_full[key], rel=1e-6, abs=1e-7), key


@pytest.mark.slow
def test_zero3_with_models_loaded_after_the_config(tmp_path):
    """The usual ZeRO-3 script: `from_pretrained` after the config, so the models arrive already partitioned."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.spec_from_file_location("ds_train_ppo", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    tokenizer = AutoTokenizer.from_pretrained(script.TOKENIZER_DIR)
    policy, _, value_model, reward_model = script.build_models(tokenizer, "brme")
    for name, model in (("policy", policy), ("value", value_model), ("reward", reward_model)):
        model.save_pretrained(tmp_path / "models" / name)

    out = tmp_path / "out"
    info = _launch(3, out, "--reward", "brme", "--models_dir", str(tmp_path / "models"))
    assert info["zero_stage"] == 3 and info["partitioned_at_load"] is True
    logs = [entry for entry in info["log_history"] if "objective/scores" in entry]
    assert len(logs) == 2 and "robust/robust" in logs[-1]
    state = load_file(out / "model.safetensors")
    assert all(tensor.numel() > 0 and torch.isfinite(tensor).all() for tensor in state.values())
    assert not torch.equal(state["lm_head.weight"], policy.lm_head.weight.detach()), "the policy did not train"
