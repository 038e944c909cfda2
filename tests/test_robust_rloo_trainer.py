from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trl import RLOOConfig, RLOOTrainer

from tests.robust_rl_helpers import (
    capture_rewards,
    capture_scores,
    prompt_dataset,
    rl_args,
    run_deepspeed_script,
    save_policy,
    snapshot,
    step_logs,
    tiny_llama_config,
    tiny_policy,
    train_great_brme,
)
from trl_robust import BRMEConfig, BRMERewardModel, RobustRLOOConfig, RobustRLOOTrainer, rewards

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def brme_dir(tmp_path_factory, smol_tokenizer):
    return train_great_brme(tmp_path_factory.mktemp("brme"), smol_tokenizer)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, smol_tokenizer):
    return save_policy(tmp_path_factory.mktemp("policy"), smol_tokenizer)


def make_trainer(tmp_path, tokenizer, policy, reward_funcs, **overrides):
    return RobustRLOOTrainer(
        model=policy,
        reward_funcs=reward_funcs,
        args=RobustRLOOConfig(**rl_args(tmp_path, tokenizer, **overrides)),
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
    )


def test_trains_policy_and_robust_reward_rises(tmp_path, smol_tokenizer, policy_dir, brme_dir):
    trainer = make_trainer(tmp_path, smol_tokenizer, str(policy_dir), str(brme_dir), max_steps=8)
    assert trainer.args.beta > 0 and trainer.ref_model is not None  # RLOO's default KL: reference reloaded from disk
    before = snapshot(trainer.model)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"

    logs = step_logs(trainer)
    assert len(logs) == 8
    expected = {"brme/nominal", "brme/worst", "brme/robust", "brme/mean", "brme/mean_std", "brme/head_disagreement"}
    expected |= {f"brme/head_{k}_mean" for k in range(3)}
    expected |= {"reward", "kl", f"rewards/{trainer.reward_func_names[0]}/mean"}  # TRL's own, still there
    assert expected <= set(logs[-1])
    robust = [entry["brme/robust"] for entry in logs]
    assert sum(robust[-3:]) / 3 > robust[0] + 0.5, robust  # the policy learned to say " great"


def test_logged_metrics_are_the_formulas_on_the_scored_batch(tmp_path, smol_tokenizer, policy_dir, brme_dir):
    trainer = make_trainer(
        tmp_path, smol_tokenizer, str(policy_dir), str(brme_dir), max_steps=2, reward_aggregation="worst"
    )
    scores, calls = capture_scores(trainer), capture_rewards(trainer)
    trainer.train()
    logs = step_logs(trainer)
    assert len(scores) == len(calls) == len(logs) == 2
    for score, (_, _, rewards_per_func), entry in zip(scores, calls, logs, strict=True):
        means, stds = score.means, score.stds
        assert torch.equal(rewards_per_func[:, 0], rewards.worst(means))  # the configured aggregation is optimised
        assert entry["brme/robust"] == rewards.robust(means, stds, 0.4).mean().item()
        assert entry["brme/worst"] == rewards.worst(means).mean().item()
        assert entry["brme/nominal"] == rewards.nominal(means, stds).mean().item()
        for k in range(3):
            assert entry[f"brme/head_{k}_mean"] == means[:, k].mean().item()


def test_single_head_logs_agree_exactly(tmp_path, smol_tokenizer, policy_dir):
    torch.manual_seed(1)
    brme = BRMERewardModel(BRMEConfig(text_config=tiny_llama_config(smol_tokenizer).to_dict(), num_heads=1))
    brme.config._name_or_path = "brme-k1"
    trainer = RobustRLOOTrainer(
        model=str(policy_dir),
        reward_funcs=[brme],
        args=RobustRLOOConfig(**rl_args(tmp_path, smol_tokenizer, max_steps=2)),
        train_dataset=prompt_dataset(),
        processing_class=smol_tokenizer,
        reward_processing_classes=[smol_tokenizer],
    )
    trainer.train()
    for entry in step_logs(trainer):
        values = {entry[f"brme/{key}"] for key in ("nominal", "worst", "robust", "mean", "head_0_mean")}
        assert len(values) == 1, entry
        assert entry["rewards/brme-k1/mean"] == pytest.approx(entry["brme/robust"], abs=1e-6)


def test_in_memory_policy_is_saved_for_the_reference_model(tmp_path, smol_tokenizer, brme_dir):
    """beta > 0 makes TRL reload the reference from `_name_or_path`: a policy built from a config is saved first."""
    policy = tiny_policy(smol_tokenizer, seed=3)
    assert policy.config._name_or_path == ""
    initial = snapshot(policy)
    trainer = make_trainer(tmp_path, smol_tokenizer, policy, str(brme_dir), max_steps=1)
    saved = Path(tmp_path) / "reference_model"
    assert policy.config._name_or_path == str(saved) and (saved / "config.json").is_file()
    weights = load_file(saved / "model.safetensors")
    torch.testing.assert_close(weights["model.embed_tokens.weight"], initial["model.embed_tokens.weight"])
    for name, param in trainer.ref_model.named_parameters():
        torch.testing.assert_close(param, initial[name], msg=name)  # the reference is the initial policy
    trainer.train()
    assert "kl" in trainer.state.log_history[0]


def test_plain_trl_rloo_reads_a_brme_checkpoint(tmp_path, smol_tokenizer, policy_dir, brme_dir):
    """Interop: an unmodified RLOOTrainer loads the BRME from its path and optimises logits[:, 0] (robust reward)."""
    trainer = RLOOTrainer(
        model=str(policy_dir),
        reward_funcs=str(brme_dir),
        args=RLOOConfig(**rl_args(tmp_path, smol_tokenizer, max_steps=2), bf16=False),
        train_dataset=prompt_dataset(),
        processing_class=smol_tokenizer,
    )
    assert isinstance(trainer.reward_funcs[0], BRMERewardModel)
    before = snapshot(trainer.model)
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    key = f"rewards/{trainer.reward_func_names[0]}/mean"
    logs = [entry for entry in trainer.state.log_history if key in entry]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(entry[key])) for entry in logs)


def test_arguments_are_checked(tmp_path, smol_tokenizer, policy_dir, brme_dir):
    with pytest.raises(ValueError, match="RobustRLOOConfig.kl_dro_beta"):
        RobustRLOOConfig(output_dir=str(tmp_path), report_to="none", kl_dro_beta=-1.0)
    with pytest.raises(ValueError, match="none of reward_funcs is a BRMERewardModel"):
        make_trainer(tmp_path, smol_tokenizer, str(policy_dir), lambda completions, **kw: [0.0] * len(completions))
    with pytest.raises(TypeError, match="needs a RobustRLOOConfig"):
        RobustRLOOTrainer(str(policy_dir), str(brme_dir), RLOOConfig(str(tmp_path), report_to="none", bf16=False))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_runs_and_saves(tmp_path, brme_dir, policy_dir, stage):
    """Two CPU processes under DeepSpeed ZeRO-2 / ZeRO-3: trains, shards the BRME under ZeRO-3, saves the policy."""
    run_deepspeed_script("rloo", tmp_path, brme_dir, policy_dir, stage)
