"""
RobustPPOTrainer with two CPU processes: DeepSpeed ZeRO-2 and ZeRO-3 launched with `accelerate launch` and the
package's `cpu_zero*.yaml` configs (DS_ACCELERATOR=cpu, gloo), and plain DDP launched with `torch.distributed.run`.
Each run takes ~10-15 s on 2 cores once DeepSpeed's shared-memory op is compiled (~30 s, cached, on a machine's first
launch). Resuming and LoRA under ZeRO-3 run with every parameter partitioned, as in real models.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.conftest import REPO, deepspeed_launcher, free_port, run_launch
from tests.scripts.tiny_setup import TOKENIZER_DIR, build_models
from trl_robust.accelerate_configs import config_path

SCRIPT = REPO / "tests" / "scripts" / "ds_train_ppo.py"


def _launch(stage: int | None, out: Path, *extra: str, config: Path | None = None) -> dict:
    """Run the script on two CPU processes (DeepSpeed ZeRO-`stage` with the package's `cpu_zero<stage>` config or
    `config`, or DDP when `stage` is None); its run_info."""
    if stage is None:  # plain DDP over gloo
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        launcher += ["--master_port", str(free_port())]
        env = {"ACCELERATE_USE_CPU": "true"}  # else accelerate sees two unconnected processes (DistributedType.NO)
    else:
        launcher, env = deepspeed_launcher(config or config_path(f"cpu_zero{stage}")), {}
    run_launch([*launcher, str(SCRIPT), "--output_dir", str(out), *extra], **env)
    return json.loads((out / "run_info.json").read_text())


def _zero3_config_partitioning_everything(folder: Path) -> Path:
    """
    `cpu_zero3` with `stage3_param_persistence_threshold: 0`. DeepSpeed keeps parameters of up to 1e5 elements whole on
    every rank by default: at the tiny test size all but the embeddings and the LM head, where real models partition
    (nearly) everything. An accelerate config cannot set the threshold, so this one points at a DeepSpeed JSON config.
    """
    ds_config = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ds_zero3.json").write_text(json.dumps(ds_config))
    config = yaml.safe_load(Path(config_path("cpu_zero3")).read_text())
    del config["mixed_precision"]  # "no" (the default); with a DeepSpeed config file only that file may set it
    config["deepspeed_config"] = {
        "deepspeed_config_file": str(folder / "ds_zero3.json"),
        "deepspeed_multinode_launcher": "standard",
        "zero3_init_flag": True,
    }
    (folder / "zero3_partition_all.yaml").write_text(yaml.safe_dump(config))
    return folder / "zero3_partition_all.yaml"


def _assert_same_end(resumed: dict, full: dict) -> None:
    """The resumed run ended where the uninterrupted one did: same weights on every rank, same last metrics."""
    # Rank by rank: the whole weights (ZeRO-2), or each rank's partitions, which both runs lay out alike (ZeRO-3).
    assert 0.0 not in full["param_checksums"]
    assert resumed["param_checksums"] == pytest.approx(full["param_checksums"], rel=1e-9)
    last_full = [entry for entry in full["log_history"] if "objective/scores" in entry][-1]
    last_resumed = [entry for entry in resumed["log_history"] if "objective/scores" in entry][-1]
    assert last_resumed["episode"] == last_full["episode"] == 16
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
        assert last_resumed[key] == pytest.approx(last_full[key], rel=1e-6, abs=1e-7), key


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
    first, second = info["param_checksums"]
    if stage != 3:
        assert first == pytest.approx(second, rel=1e-9), "the two replicas diverged"
    else:  # each rank summed its own partitions
        assert first != second and 0.0 not in (first, second)
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
@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
def test_resume_under_deepspeed_matches_the_uninterrupted_run(stage, tmp_path):
    # ZeRO-3: every parameter partitioned, as in real models, so each rank restores its own partitions.
    config = _zero3_config_partitioning_everything(tmp_path / "config") if stage == 3 else None
    full = _launch(stage, tmp_path / "full", "--save_steps", "1", config=config)
    checkpoint = tmp_path / "full" / "checkpoint-1"
    assert (checkpoint / "model.safetensors").is_file() and list(checkpoint.glob("global_step*"))
    resumed = _launch(stage, tmp_path / "resumed", "--resume_from", str(checkpoint), config=config)
    assert resumed["zero_stage"] == full["zero_stage"] == stage
    _assert_same_end(resumed, full)


@pytest.mark.slow
def test_zero3_with_models_loaded_after_the_config(tmp_path):
    """The usual ZeRO-3 script: `from_pretrained` after the config, so the models arrive already partitioned."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    policy, _, value_model, reward_model = build_models(tokenizer, "brme")
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


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3], ids=["zero2", "zero3"])
def test_lora_policy_under_deepspeed_trains_its_adapter_against_the_adapter_free_reference(stage, tmp_path):
    """Trains, saves (save_model and a checkpoint) the adapter alone, and (ZeRO-3) resumes from the checkpoint."""
    peft = pytest.importorskip("peft")
    out = tmp_path / "out"
    # ZeRO-3: every parameter partitioned, the adapter's too (else, at this size, DeepSpeed keeps them whole).
    config = _zero3_config_partitioning_everything(tmp_path / "config") if stage == 3 else None
    info = _launch(stage, out, "--lora", "--save_steps", "1", config=config)
    assert info["zero_stage"] == stage and info["peft"] is True and info["ref_model_is_none"] is True
    assert info["lora_partitioned"] is (stage == 3)  # so under ZeRO-3 saving the adapter must gather it
    logs = [entry for entry in info["log_history"] if "objective/scores" in entry]
    assert len(logs) == 2 and logs[-1]["episode"] == 16
    assert logs[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity: policy == ref
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
        assert torch.isfinite(torch.tensor(logs[-1][key])), key
    base = torch.load(out / "base_weights.pt")
    for name, initial in base["initial"].items():
        assert torch.equal(base["final"][name], initial), f"the frozen base weight {name} changed"

    # save_model wrote the adapter alone, as safetensors (ZeRO-3: gathered whole, not the empty local stubs).
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert {path.name for path in out.glob("*.bin")} <= {"training_args.bin"}, "pickled weights were written"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)
    assert all(tensor.numel() > 0 for tensor in adapter.values()), "saved the empty local stubs of ZeRO-3 partitions"
    assert any("lora_B" in key and tensor.abs().sum() > 0 for key, tensor in adapter.items()), "LoRA did not train"

    from transformers import AutoTokenizer

    policy = build_models(AutoTokenizer.from_pretrained(TOKENIZER_DIR), "seqcls")[0]
    loaded = peft.PeftModel.from_pretrained(policy, out)
    state = peft.get_peft_model_state_dict(loaded)
    assert state.keys() == adapter.keys()
    for key, tensor in adapter.items():
        assert torch.equal(state[key], tensor), key

    checkpoint = out / "checkpoint-1"
    assert (checkpoint / "adapter_model.safetensors").is_file() and list(checkpoint.glob("global_step*"))
    assert not (checkpoint / "model.safetensors").exists()
    if stage == 3:  # one more launch: ZeRO-2 resuming is covered above, without the adapter
        resumed = _launch(stage, tmp_path / "resumed", "--lora", "--resume_from", str(checkpoint), config=config)
        _assert_same_end(resumed, info)
