"""
BRMERewardTrainer under DeepSpeed ZeRO-2 and ZeRO-3: two CPU processes launched with `accelerate launch` and the
package's own `cpu_zero*.yaml` configs (DS_ACCELERATOR=cpu, gloo). The first launch on a machine compiles a DeepSpeed
shared-memory op (~30 s, cached); afterwards each run takes ~20 s on 2 cores.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, deepspeed_launcher, run_launch
from tests.scripts.tiny_setup import TOKENIZER_DIR, tiny_llama_config
from trl_robust import BRMERewardModel
from trl_robust.accelerate_configs import available, config_path

SCRIPT = REPO / "tests" / "scripts" / "ds_train_brme.py"
NUM_HEADS = 3


def test_config_path_lists_shipped_configs():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"zero1", "zero2", "zero3", "zero3_offload", "single_gpu", "cpu_zero2", "cpu_zero3"}
    assert expected <= set(available())
    for name in expected:
        assert config_path(name) == config_path(f"{name}.yaml")
        config = load_config_from_file(config_path(name))  # accelerate's own parser accepts every key
        if name.startswith("cpu_"):
            assert config.mixed_precision == "no" and config.num_processes == 2
        if "zero3" in name:
            assert config.deepspeed_config["zero3_init_flag"] and config.deepspeed_config["zero3_save_16bit_model"]
    with pytest.raises(ValueError, match="available: .*cpu_zero3.*zero3"):
        config_path("zero4")


@pytest.fixture(scope="module")
def tiny_backbone_dir(tmp_path_factory):
    """A plain LlamaForCausalLM on disk, so the trainer gets a string and builds the BRME (`from_backbone`) itself."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(tiny_llama_config(tokenizer)).save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "source"),
    [(2, "init"), (2, "path"), (3, "from_config"), (3, "path")],
    ids=["zero2-init", "zero2-path", "zero3-from_config", "zero3-path"],
)
def test_brme_trains_and_saves_under_deepspeed(stage, source, tiny_backbone_dir, tmp_path):
    out = tmp_path / "out"
    model_args = ["--model", str(tiny_backbone_dir)] if source == "path" else ["--build", source]
    cmd = [*deepspeed_launcher(config_path(f"cpu_zero{stage}")), str(SCRIPT), "--output_dir", str(out)]
    proc = run_launch([*cmd, "--num_heads", str(NUM_HEADS), *model_args])

    # from_backbone keeps the backbone's attention implementation (it used to fall back to eager with this warning).
    assert "`config._attn_implementation` set to `None`" not in proc.stderr

    info = json.loads((out / "run_info.json").read_text())
    assert info["deepspeed"] is True and info["zero_stage"] == stage and info["world_size"] == 2
    # ZeRO-3 with zero3_init_flag: the model was built already partitioned (zero.Init), before deepspeed.initialize.
    assert info["backbone_partitioned"] is (stage == 3)
    if source == "from_config":
        assert info["heads_partitioned"] is True
    losses = [entry["loss"] for entry in info["log_history"] if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

    # One consolidated safetensors file (ZeRO-3 needs zero3_save_16bit_model for this), no pickled weights.
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob("pytorch_model*")) and not list(out.glob("global_step*"))
    state = load_file(out / "model.safetensors")
    assert state["score.weight"].shape == (2 * NUM_HEADS, 32) and state["score.bias"].shape == (2 * NUM_HEADS,)
    assert all(torch.isfinite(tensor).all() for tensor in state.values())
    assert all(tensor.numel() > 0 for tensor in state.values())  # no empty ZeRO-3 partitions saved

    initial = torch.load(out / "initial_score.pt")
    for name in ("score.weight", "score.bias"):
        assert not torch.allclose(state[name], initial[name], atol=1e-6), f"{name} did not train"

    if source == "path":
        # The backbone kept the pretrained weights (loaded into the ZeRO-3 partitions, not re-initialised): token rows
        # the tiny dataset never uses are untouched.
        base = load_file(tiny_backbone_dir / "model.safetensors")["model.embed_tokens.weight"]
        unchanged = torch.isclose(state["backbone.embed_tokens.weight"], base).all(-1).float().mean()
        assert unchanged > 0.9

    model = BRMERewardModel.from_pretrained(out)
    assert model.config.num_heads == NUM_HEADS
    torch.testing.assert_close(model.score.weight.detach(), state["score.weight"])
    with torch.no_grad():
        output = model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    assert output.means.shape == (1, NUM_HEADS) and torch.isfinite(output.logits).all()


@pytest.mark.slow
@pytest.mark.parametrize("head_type", ["mlp", "lora"])
def test_member_types_train_and_save_under_zero3(head_type, tmp_path):
    """Per-member MLPs and per-member LoRA adapters, with randomised priors, built under zero.Init (every parameter
    partitioned), train and save one consolidated file holding every member's weights and its frozen prior."""
    out = tmp_path / "out"
    cmd = [*deepspeed_launcher(config_path("cpu_zero3")), str(SCRIPT), "--output_dir", str(out)]
    run_launch(
        [
            *cmd,
            "--num_heads",
            str(NUM_HEADS),
            "--build",
            "from_config",
            "--head_type",
            head_type,
            "--prior_scale",
            "1.0",
        ]
    )
    info = json.loads((out / "run_info.json").read_text())
    assert info["zero_stage"] == 3 and info["heads_partitioned"] is True
    state = load_file(out / "model.safetensors")
    initial = torch.load(out / "initial_score.pt")
    assert all(tensor.numel() > 0 and torch.isfinite(tensor).all() for tensor in state.values())
    assert set(initial) <= set(state)  # every member parameter was saved
    trained = [name for name in initial if not torch.allclose(state[name], initial[name], atol=1e-7)]
    expected = "member_adapters" if head_type == "lora" else "score.fc2_weight"
    assert any(name.startswith(expected) for name in trained), trained
    prior = state["score.prior_weight"]
    assert prior.shape == (NUM_HEADS, 32) and prior.std() > 0.05  # a random prior, not zeros or an empty partition
    # every rank trained with that prior (it was uninitialised memory on rank 1 when drawn inside transformers' init)
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(out / f"prior-rank{rank}.pt"), prior, rtol=0, atol=0)
    model = BRMERewardModel.from_pretrained(out)
    assert model.config.head_type == head_type
    torch.testing.assert_close(model.score.prior_weight, prior)
    with torch.no_grad():
        output = model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    assert output.means.shape == (1, NUM_HEADS) and torch.isfinite(output.logits).all()
