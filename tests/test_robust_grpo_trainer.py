import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from tests.robust_rl_helpers import (
    PROMPTS,
    capture_rewards,
    capture_scores,
    prompt_dataset,
    rl_args,
    run_deepspeed_script,
    save_policy,
    snapshot,
    step_logs,
    tiny_llama_config,
    train_great_brme,
)
from trl_robust import BRMEConfig, BRMERewardModel, RobustGRPOConfig, RobustGRPOTrainer, rewards
from trl_robust.tokenization import tokenize_for_reward

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def brme_dir(tmp_path_factory, smol_tokenizer):
    return train_great_brme(tmp_path_factory.mktemp("brme"), smol_tokenizer)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, smol_tokenizer):
    return save_policy(tmp_path_factory.mktemp("policy"), smol_tokenizer)


def make_trainer(tmp_path, tokenizer, policy, reward_funcs, **overrides):
    return RobustGRPOTrainer(
        model=str(policy),
        reward_funcs=reward_funcs,
        args=RobustGRPOConfig(**rl_args(tmp_path, tokenizer, **overrides)),
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
    )


def test_trains_policy_and_robust_reward_rises(tmp_path, smol_tokenizer, policy_dir, brme_dir):
    trainer = make_trainer(tmp_path, smol_tokenizer, policy_dir, str(brme_dir), max_steps=8)
    before = snapshot(trainer.model)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"

    logs = step_logs(trainer)
    assert len(logs) == 8
    expected = {"brme/nominal", "brme/worst", "brme/robust", "brme/mean", "brme/mean_std", "brme/head_disagreement"}
    expected |= {f"brme/head_{k}_mean" for k in range(3)}
    name = trainer.reward_func_names[0]
    expected |= {"reward", "reward_std", f"rewards/{name}/mean", "completions/mean_length"}  # TRL's own, still there
    assert expected <= set(logs[-1])
    robust = [entry["brme/robust"] for entry in logs]
    assert sum(robust[-3:]) / 3 > robust[0] + 0.5, robust  # the policy learned to say " great"


@pytest.mark.parametrize(
    "aggregation, params",
    [("robust", {"robust_lambda": 0.7}), ("kl_dro", {"kl_dro_beta": 0.5}), ("uwo", {"uwo_coef": 2.0})],
)
def test_logged_metrics_are_the_formulas_on_the_scored_batch(
    tmp_path, smol_tokenizer, policy_dir, brme_dir, aggregation, params
):
    trainer = make_trainer(
        tmp_path, smol_tokenizer, policy_dir, str(brme_dir), max_steps=2, reward_aggregation=aggregation, **params
    )
    scores, calls = capture_scores(trainer), capture_rewards(trainer)
    trainer.train()
    logs = step_logs(trainer)
    assert len(scores) == len(calls) == len(logs) == 2  # one generation batch per step, one log per step
    agg_params = {"robust_lambda": 0.7, "kl_dro_beta": 0.5, "uwo_coef": 2.0}
    lam = params.get("robust_lambda", 0.4)
    name_params = {"robust": {"robust_lambda": lam}, "kl_dro": {"beta": 0.5}, "uwo": {"c": 2.0}}[aggregation]
    assert {k: getattr(trainer.args, k) for k in params} == {k: agg_params[k] for k in params}
    for score, (_, _, rewards_per_func), entry in zip(scores, calls, logs, strict=True):
        means, stds = score.means, score.stds
        optimised = rewards.aggregate(aggregation, means, stds, **name_params)
        # the reward column TRL turns into advantages is the configured aggregation of the heads ...
        assert torch.equal(rewards_per_func[:, 0], optimised)
        # ... and every logged value is its formula applied to the same batch, exactly
        assert entry["brme/robust"] == rewards.robust(means, stds, lam).mean().item()
        assert entry["brme/nominal"] == rewards.nominal(means, stds).mean().item()
        assert entry["brme/worst"] == rewards.worst(means).mean().item()
        assert entry["brme/mean"] == means.mean(-1).mean().item()
        assert entry[f"brme/{aggregation}"] == optimised.mean().item()
        assert entry["brme/mean_std"] == stds.mean(-1).mean().item()
        assert entry["brme/head_disagreement"] == means.std(-1, unbiased=False).mean().item()
        for k in range(3):
            assert entry[f"brme/head_{k}_mean"] == means[:, k].mean().item()
        assert entry[f"rewards/{trainer.reward_func_names[0]}/mean"] == pytest.approx(optimised.mean().item(), abs=1e-6)


def test_single_head_logs_agree_exactly(tmp_path, smol_tokenizer, policy_dir):
    """With K = 1 every aggregation is the one head: the logged batch means must be identical numbers."""
    torch.manual_seed(1)
    brme = BRMERewardModel(BRMEConfig(text_config=tiny_llama_config(smol_tokenizer).to_dict(), num_heads=1))
    brme.config._name_or_path = "brme-k1"
    trainer = RobustGRPOTrainer(
        model=str(policy_dir),
        reward_funcs=brme,
        args=RobustGRPOConfig(**rl_args(tmp_path, smol_tokenizer, max_steps=2)),
        train_dataset=prompt_dataset(),
        processing_class=smol_tokenizer,
        reward_processing_classes=smol_tokenizer,
    )
    trainer.train()
    for entry in step_logs(trainer):
        values = {entry[f"brme/{key}"] for key in ("nominal", "worst", "robust", "mean", "head_0_mean")}
        assert len(values) == 1, entry
        assert entry["brme/head_disagreement"] == 0.0
        assert entry["rewards/brme-k1/mean"] == pytest.approx(entry["brme/robust"], abs=1e-6)


def test_scored_as_trained_beside_other_rewards(tmp_path, smol_tokenizer, policy_dir, brme_dir):
    def says_great(completions, **kwargs):
        return [float(c.count(" great")) for c in completions]

    trainer = make_trainer(
        tmp_path, smol_tokenizer, policy_dir, [str(brme_dir), says_great], max_steps=1, reward_weights=[1.0, 0.5]
    )
    calls = capture_rewards(trainer)
    trainer.train()
    (prompts, completions, rewards_per_func), entry = calls[0], step_logs(trainer)[0]
    assert rewards_per_func.shape == (len(completions), 2)
    assert rewards_per_func[:, 1].tolist() == says_great(completions)
    assert entry["reward"] == pytest.approx((rewards_per_func[:, 0] + 0.5 * rewards_per_func[:, 1]).mean().item())

    # Same text, same score: the BRME column is the model's robust reward (logits, lambda = 0.4 as trained) on the
    # reward-training tokenisation (text + EOS), not on TRL's EOS-less re-tokenisation.
    brme = BRMERewardModel.from_pretrained(brme_dir).eval()
    with torch.no_grad():
        for prompt, completion, reward in zip(prompts, completions, rewards_per_func[:, 0], strict=True):
            ids = tokenize_for_reward(smol_tokenizer, completion, prompt)
            assert ids[-1] == smol_tokenizer.eos_token_id
            as_trained = brme(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            torch.testing.assert_close(reward, as_trained.logits[0, 0], atol=1e-5, rtol=1e-5)
            trl_ids = smol_tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
            as_trl = brme(
                input_ids=torch.tensor([trl_ids]), attention_mask=torch.ones(1, len(trl_ids), dtype=torch.long)
            )
            assert not torch.isclose(reward, as_trl.logits[0, 0], atol=1e-3)


def test_conversational_prompts_go_through_the_chat_template(tmp_path, smol_tokenizer, policy_dir, brme_dir):
    trainer = RobustGRPOTrainer(
        model=str(policy_dir),
        reward_funcs=str(brme_dir),
        args=RobustGRPOConfig(**rl_args(tmp_path, smol_tokenizer, max_steps=1)),
        train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS * 4]),
        processing_class=smol_tokenizer,
    )
    calls = capture_rewards(trainer)
    trainer.train()
    prompts, completions, rewards_per_func = calls[0]
    assert completions[0][0]["role"] == "assistant"
    brme = BRMERewardModel.from_pretrained(brme_dir).eval()
    with torch.no_grad():
        for prompt, completion, reward in zip(prompts, completions, rewards_per_func[:, 0], strict=True):
            ids = smol_tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
            assert ids == tokenize_for_reward(smol_tokenizer, completion, prompt)
            out = brme(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            torch.testing.assert_close(reward, out.logits[0, 0], atol=1e-5, rtol=1e-5)


def test_plain_trl_grpo_reads_a_brme_checkpoint(tmp_path, smol_tokenizer, policy_dir, brme_dir):
    """Interop: an unmodified GRPOTrainer loads the BRME from its path and optimises logits[:, 0] (robust reward)."""
    trainer = GRPOTrainer(
        model=str(policy_dir),
        reward_funcs=str(brme_dir),
        args=GRPOConfig(**rl_args(tmp_path, smol_tokenizer, max_steps=2), bf16=False),
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
    for field, value, match in [
        ("reward_aggregation", "median", "reward_aggregation must be one of nominal, worst, robust"),
        ("robust_lambda", 1.5, "robust_lambda"),
        ("uwo_coef", -1.0, "uwo_coef"),
        ("kl_dro_beta", 0.0, "kl_dro_beta"),
    ]:
        with pytest.raises(ValueError, match=match):
            RobustGRPOConfig(output_dir=str(tmp_path), report_to="none", **{field: value})
    assert RobustGRPOConfig(output_dir=str(tmp_path), report_to="none").bf16 is False  # CPU: no bf16
    with pytest.raises(ValueError, match="none of reward_funcs is a BRMERewardModel"):
        make_trainer(tmp_path, smol_tokenizer, policy_dir, [lambda completions, **kw: [0.0] * len(completions)])
    with pytest.raises(TypeError, match="needs a RobustGRPOConfig"):
        RobustGRPOTrainer(
            model=str(policy_dir),
            reward_funcs=str(brme_dir),
            args=GRPOConfig(str(tmp_path), report_to="none", bf16=False),
        )


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_runs_and_saves(tmp_path, brme_dir, policy_dir, stage):
    """Two CPU processes under DeepSpeed ZeRO-2 / ZeRO-3: trains, shards the BRME under ZeRO-3, saves the policy."""
    run_deepspeed_script("grpo", tmp_path, brme_dir, policy_dir, stage)
