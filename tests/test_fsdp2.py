"""
FSDP2: the shipped accelerate configs, and BRMERewardTrainer, RobustGRPOTrainer and RobustPPOTrainer trained by two
CPU processes under FSDP2 (gloo) with `cpu_fsdp2.yaml`, each saving one consolidated safetensors model that loads
back. The training scripts are the ZeRO tests' own (tests/scripts/ds_*.py), run through tests/scripts/fsdp2_cpu.py,
which lets accelerate use FSDP on CPU processes and records which modules `fully_shard` sharded. About 10-25 s each.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, free_port, run_launch
from trl_robust.accelerate_configs import config_path

SCRIPTS = REPO / "tests" / "scripts"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_fsdp2_configs_parse_and_say_fsdp2_with_a_full_state_dict():
    from accelerate.commands.config.config_args import load_config_from_file

    for name in ("fsdp2", "fsdp2_multinode", "cpu_fsdp2"):
        config = load_config_from_file(config_path(name))  # accelerate's own parser accepts every key
        assert config.distributed_type == "FSDP"
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert load_config_from_file(config_path("fsdp2")).mixed_precision == "bf16"
    multinode = load_config_from_file(config_path("fsdp2_multinode"))
    assert multinode.num_machines == 2 and multinode.num_processes == 16
    cpu = load_config_from_file(config_path("cpu_fsdp2"))
    assert cpu.mixed_precision == "no" and cpu.num_processes == 2 and cpu.use_cpu


def launch_fsdp2(tmp_path: Path, script: str, *args: str) -> dict:
    """`script` on 2 CPU processes under FSDP2; what `fully_shard` sharded (rank 0's record)."""
    record = tmp_path / "fsdp2_record.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_path("cpu_fsdp2")]
    cmd += ["--num_processes", "2", "--main_process_port", str(free_port())]
    cmd += [str(SCRIPTS / "fsdp2_cpu.py"), str(SCRIPTS / script), *args]
    run_launch(cmd, timeout=300, ACCELERATE_USE_CPU="true", FSDP2_RECORD=str(record))
    info = json.loads(record.read_text())
    assert info["world_size"] == 2
    return info


@pytest.mark.slow
def test_brme_trains_under_fsdp2_and_saves_a_model_that_loads(tmp_path):
    from trl_robust import BRMERewardModel

    out = tmp_path / "out"
    record = launch_fsdp2(tmp_path, "ds_train_brme.py", "--output_dir", str(out), "--num_heads", "3")
    # every decoder layer its own unit, the BRME (embeddings, norm, heads) the root
    assert record["sharded"].count("LlamaDecoderLayer") == 2 and record["sharded"][-1] == "BRMERewardModel"
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["deepspeed"] is False
    losses = [entry["loss"] for entry in info["log_history"] if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

    state = load_file(out / "model.safetensors")  # one consolidated file, full shapes (not rank 0's shards)
    assert state["score.weight"].shape == (6, 32) and state["backbone.embed_tokens.weight"].shape[1] == 32
    initial = torch.load(out / "initial_score.pt")
    assert not torch.allclose(state["score.weight"], initial["score.weight"], atol=1e-6), "the heads did not train"
    model = BRMERewardModel.from_pretrained(out)
    torch.testing.assert_close(model.score.weight.detach(), state["score.weight"])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits).all()
    assert "K = 3 members" in (out / "README.md").read_text()  # the model card came along


@pytest.mark.slow
def test_robust_grpo_trains_under_fsdp2_and_saves_a_policy_that_loads(tmp_path, policy_dir, brme_dir):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    args = ["--trainer", "grpo", "--policy", str(policy_dir), "--brme", str(brme_dir), "--output_dir", str(out)]
    record = launch_fsdp2(tmp_path, "ds_robust_rl.py", *args)
    assert record["sharded"].count("LlamaDecoderLayer") == 2 and record["sharded"][-1] == "LlamaForCausalLM"
    info = json.loads((out / "run_info.json").read_text())
    logs = [entry for entry in info["log_history"] if "brme/robust" in entry]
    key = f"rewards/{brme_dir.name}/mean"
    assert logs and all(abs(entry[key] - entry["brme/robust"]) < 1e-5 for entry in logs)  # the robust reward
    saved = load_file(out / "policy" / "model.safetensors")
    initial = load_file(policy_dir / "model.safetensors")
    assert set(saved) == set(initial) and all(saved[k].shape == initial[k].shape for k in initial)
    assert any(not torch.equal(saved[k], initial[k]) for k in initial)  # trained, not re-saved
    policy = AutoModelForCausalLM.from_pretrained(out / "policy")
    torch.testing.assert_close(policy.lm_head.weight.detach(), saved["lm_head.weight"])


@pytest.mark.slow
def test_robust_ppo_trains_under_fsdp2_and_saves_a_policy_that_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    record = launch_fsdp2(tmp_path, "ds_train_ppo.py", "--output_dir", str(out), "--reward", "brme")
    # The trained policy + value pair is the root; generation and the rollout call the policy's and value's parts
    # directly, which trl_robust.fsdp.root_unsharded gathers.
    assert record["sharded"].count("LlamaDecoderLayer") == 4 and record["sharded"][-1] == "PolicyAndValue"
    info = json.loads((out / "run_info.json").read_text())
    assert info["distributed_type"] == "DistributedType.FSDP" and info["world_size"] == 2
    logs = [entry for entry in info["log_history"] if "loss/policy_avg" in entry]
    assert logs and all(torch.isfinite(torch.tensor([e["loss/policy_avg"], e["robust/robust"]])).all() for e in logs)
    saved = load_file(out / "model.safetensors")
    initial = torch.load(out / "initial_lm_head.pt")
    assert saved["lm_head.weight"].shape == initial.shape  # consolidated: the full matrix, not a shard
    assert not torch.equal(saved["lm_head.weight"], initial), "the policy did not train"
    policy = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(policy.lm_head.weight.detach(), saved["lm_head.weight"])
    assert "RobustPPO (trl-robust" in (out / "README.md").read_text()


def test_policy_and_value_lists_both_models_layer_classes_and_root_unsharded_is_a_no_op_without_fsdp():
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    from trl_robust.fsdp import root_unsharded
    from trl_robust.robust_ppo_trainer import PolicyAndValue

    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64)
    policy = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **small))
    value = BertForSequenceClassification(BertConfig(num_labels=1, **small))
    pair = PolicyAndValue(policy, value)
    assert "LlamaDecoderLayer" in pair._no_split_modules and "BertLayer" in pair._no_split_modules
    assert len(set(pair._no_split_modules)) == len(pair._no_split_modules)
    with root_unsharded(pair):  # not an FSDP module: nothing to gather, nothing marked
        pass
    assert not getattr(policy, "_is_fsdp_managed_module", False)
