"""RobustGRPOTrainer and RobustRLOOTrainer: the same BRME reward path on TRL's two group-baseline trainers, so most
tests run on both (`kind`); the few that exercise one trainer's own behaviour name it."""

from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from tests.robust_rl_helpers import (
    PROMPTS,
    capture_rewards,
    capture_scores,
    prompt_dataset,
    rl_args,
    run_deepspeed_script,
    snapshot,
    step_logs,
    tiny_llama_config,
    tiny_policy,
)
from trl_robust import (
    BRMEConfig,
    BRMERewardModel,
    RobustGRPOConfig,
    RobustGRPOTrainer,
    RobustRLOOConfig,
    RobustRLOOTrainer,
)
from trl_robust import aggregation as agg
from trl_robust.monitor import HackingMonitor
from trl_robust.tokenization import tokenize_for_reward

pytestmark = pytest.mark.usefixtures("one_thread")


class Kind(NamedTuple):
    config: type
    trainer: type
    trl_config: type
    trl_trainer: type
    trl_metrics: tuple[str, ...]  # some of TRL's own per-step metrics, which must still be logged


KINDS = {
    "grpo": Kind(
        RobustGRPOConfig, RobustGRPOTrainer, GRPOConfig, GRPOTrainer, ("reward_std", "completions/mean_length")
    ),
    "rloo": Kind(RobustRLOOConfig, RobustRLOOTrainer, RLOOConfig, RLOOTrainer, ("kl",)),
}


def make_trainer(kind, tmp_path, tokenizer, policy, reward_funcs, train_dataset=None, **overrides):
    k = KINDS[kind]
    return k.trainer(
        model=policy,
        reward_funcs=reward_funcs,
        args=k.config(**rl_args(tmp_path, tokenizer, **overrides)),
        train_dataset=prompt_dataset() if train_dataset is None else train_dataset,
        processing_class=tokenizer,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_trains_policy_and_robust_reward_rises(kind, tmp_path, smol_tokenizer, policy_dir, brme_dir):
    trainer = make_trainer(kind, tmp_path, smol_tokenizer, str(policy_dir), str(brme_dir), max_steps=8)
    if kind == "rloo":
        assert trainer.args.beta > 0 and trainer.ref_model is not None  # RLOO's default KL: reference reloaded
    before = snapshot(trainer.model)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"

    logs = step_logs(trainer)
    assert len(logs) == 8
    expected = {"brme/nominal", "brme/worst", "brme/robust", "brme/mean", "brme/mean_std", "brme/head_disagreement"}
    expected |= {f"brme/head_{k}_mean" for k in range(3)}
    expected |= {"reward", f"rewards/{trainer.reward_func_names[0]}/mean", *KINDS[kind].trl_metrics}
    assert expected <= set(logs[-1])
    robust = [entry["brme/robust"] for entry in logs]
    assert sum(robust[-3:]) / 3 > robust[0] + 0.5, robust  # the policy learned to say " great"


@pytest.mark.parametrize(
    "kind, aggregation, params",
    [
        ("grpo", "robust", {"robust_lambda": 0.7}),
        ("grpo", "kl_dro", {"kl_dro_beta": 0.5}),
        ("grpo", "uwo", {"uwo_coef": 2.0}),
        ("rloo", "worst", {}),
    ],
)
def test_logged_metrics_are_the_formulas_on_the_scored_batch(
    kind, tmp_path, smol_tokenizer, policy_dir, brme_dir, aggregation, params
):
    trainer = make_trainer(
        kind,
        tmp_path,
        smol_tokenizer,
        str(policy_dir),
        str(brme_dir),
        max_steps=2,
        reward_aggregation=aggregation,
        **params,
    )
    scores, calls = capture_scores(trainer), capture_rewards(trainer)
    trainer.train()
    logs = step_logs(trainer)
    assert len(scores) == len(calls) == len(logs) == 2  # one generation batch per step, one log per step
    assert {k: getattr(trainer.args, k) for k in params} == params
    lam = params.get("robust_lambda", 0.4)  # unset: the BRME's own, 0.4 as trained
    for score, (_, _, rewards_per_func), entry in zip(scores, calls, logs, strict=True):
        means, stds = score.means, score.stds
        optimised = agg.aggregate(aggregation, means, stds, **params)
        # the reward column TRL turns into advantages is the configured aggregation of the heads ...
        assert torch.equal(rewards_per_func[:, 0], optimised)
        # ... and every logged value is its formula applied to the same batch, exactly
        assert entry["brme/robust"] == agg.robust(means, stds, lam).mean().item()
        assert entry["brme/nominal"] == agg.nominal(means, stds).mean().item()
        assert entry["brme/worst"] == agg.worst(means).mean().item()
        assert entry["brme/mean"] == means.mean(-1).mean().item()
        assert entry[f"brme/{aggregation}"] == optimised.mean().item()
        assert entry["brme/mean_std"] == stds.mean(-1).mean().item()
        assert entry["brme/head_disagreement"] == means.std(-1, unbiased=False).mean().item()
        for k in range(3):
            assert entry[f"brme/head_{k}_mean"] == means[:, k].mean().item()
        assert entry[f"rewards/{trainer.reward_func_names[0]}/mean"] == pytest.approx(optimised.mean().item(), abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_single_head_logs_agree_exactly(kind, tmp_path, smol_tokenizer, policy_dir):
    """With K = 1 every aggregation is the one head: the logged batch means must be identical numbers."""
    torch.manual_seed(1)
    brme = BRMERewardModel(BRMEConfig(text_config=tiny_llama_config(smol_tokenizer).to_dict(), num_heads=1))
    brme.config._name_or_path = "brme-k1"
    k = KINDS[kind]
    trainer = k.trainer(
        model=str(policy_dir),
        reward_funcs=brme if kind == "grpo" else [brme],  # a bare model and a list both work
        args=k.config(**rl_args(tmp_path, smol_tokenizer, max_steps=2)),
        train_dataset=prompt_dataset(),
        processing_class=smol_tokenizer,
        reward_processing_classes=smol_tokenizer if kind == "grpo" else [smol_tokenizer],
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
        "grpo",
        tmp_path,
        smol_tokenizer,
        str(policy_dir),
        [str(brme_dir), says_great],
        max_steps=1,
        reward_weights=[1.0, 0.5],
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
    chats = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS * 4])
    trainer = make_trainer("grpo", tmp_path, smol_tokenizer, str(policy_dir), str(brme_dir), chats, max_steps=1)
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


def test_in_memory_policy_is_saved_for_the_reference_model(tmp_path, smol_tokenizer, brme_dir):
    """beta > 0 (RLOO's default) makes TRL reload the reference from `_name_or_path`: a policy built from a config is
    saved first."""
    policy = tiny_policy(smol_tokenizer, seed=3)
    assert policy.config._name_or_path == ""
    initial = snapshot(policy)
    trainer = make_trainer("rloo", tmp_path, smol_tokenizer, policy, str(brme_dir), max_steps=1)
    saved = Path(tmp_path) / "reference_model"
    assert policy.config._name_or_path == str(saved) and (saved / "config.json").is_file()
    weights = load_file(saved / "model.safetensors")
    torch.testing.assert_close(weights["model.embed_tokens.weight"], initial["model.embed_tokens.weight"])
    for name, param in trainer.ref_model.named_parameters():
        torch.testing.assert_close(param, initial[name], msg=name)  # the reference is the initial policy
    trainer.train()
    assert "kl" in trainer.state.log_history[0]


@pytest.mark.parametrize("kind", KINDS)
def test_plain_trl_trainer_reads_a_brme_checkpoint(kind, tmp_path, smol_tokenizer, policy_dir, brme_dir):
    """Interop: an unmodified TRL trainer loads the BRME from its path and optimises logits[:, 0] (robust reward)."""
    k = KINDS[kind]
    trainer = k.trl_trainer(
        model=str(policy_dir),
        reward_funcs=str(brme_dir),
        args=k.trl_config(**rl_args(tmp_path, smol_tokenizer, max_steps=2), bf16=False),
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


@pytest.mark.parametrize("kind", KINDS)
def test_arguments_are_checked(kind, tmp_path, smol_tokenizer, policy_dir, brme_dir):
    k = KINDS[kind]
    name = k.config.__name__
    for field, value, match in [
        ("reward_aggregation", "median", f"{name}.reward_aggregation must be one of nominal, worst, robust"),
        ("robust_lambda", 1.5, rf"{name}\.robust_lambda must be in \[0, 1\]"),
        ("uwo_coef", -1.0, rf"{name}\.uwo_coef"),
        ("kl_dro_beta", 0.0, rf"{name}\.kl_dro_beta"),
    ]:
        with pytest.raises(ValueError, match=match):
            k.config(output_dir=str(tmp_path), report_to="none", **{field: value})
    default = k.config(output_dir=str(tmp_path), report_to="none")
    assert default.bf16 is False and default.robust_lambda is None  # CPU: no bf16; lambda: the BRME's own
    with pytest.raises(ValueError, match="none of reward_funcs is a BRMERewardModel"):
        make_trainer(
            kind, tmp_path, smol_tokenizer, str(policy_dir), [lambda completions, **kw: [0.0] * len(completions)]
        )
    with pytest.raises(TypeError, match=f"needs a {name}"):
        k.trainer(
            model=str(policy_dir),
            reward_funcs=str(brme_dir),
            args=k.trl_config(str(tmp_path), report_to="none", bf16=False),
        )


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_deepspeed_runs_and_saves(kind, tmp_path, brme_dir, policy_dir, stage):
    """Two CPU processes under DeepSpeed ZeRO-2 / ZeRO-3: trains, shards the BRME under ZeRO-3, saves the policy."""
    run_deepspeed_script(kind, tmp_path, brme_dir, policy_dir, stage)


@pytest.mark.parametrize("kind", KINDS)
def test_hacking_monitor_logs_and_stops_at_its_alarm(kind, tmp_path, smol_tokenizer, policy_dir, brme_dir, monkeypatch):
    """The monitor reads the scores the trainer computed: with a reference so narrow that every sample is out of it,
    the window of 16 (two steps of 8 completions) fills at step 2 and, with patience 1, the alarm stops the run. It
    also gets the completions' token ids, for their repetition."""
    import trl_robust.brme_rewards_mixin as mixin

    monitor = HackingMonitor([0.0, 1e-9], window=16, patience=1, action="stop")
    trainer = make_trainer(kind, tmp_path, smol_tokenizer, str(policy_dir), str(brme_dir), max_steps=6)
    trainer.add_callback(monitor)
    scores = capture_scores(trainer)
    seen, ratio = [], mixin.distinct_bigram_ratio
    monkeypatch.setattr(mixin, "distinct_bigram_ratio", lambda ids: seen.append(ids) or ratio(ids))
    trainer.train()
    logs = step_logs(trainer)
    for ids, score, entry in zip(seen, scores, logs, strict=True):  # the completions that were scored
        assert len(ids) == len(score.means) == 8 and all(isinstance(t, int) for row in ids for t in row)
        assert entry["monitor/distinct_2"] == pytest.approx(ratio(ids).mean().item())
    assert monitor.first_alarm_step == 2 and trainer.state.global_step == 2
    assert [entry["monitor/alarm"] for entry in logs] == [0.0, 1.0]
    for score, entry in zip(scores, logs, strict=True):
        assert entry["monitor/frac_out"] == 1.0
        assert entry["monitor/epistemic"] == pytest.approx(score.means.std(-1, unbiased=False).mean().item())
