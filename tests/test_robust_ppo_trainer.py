"""RobustPPOTrainer end to end on tiny Llama models (CPU, a few updates each).

The models are built by hand so that the outcome is known in advance:
- the policy samples almost only among four CANDIDATES (a big shared embedding component and four large lm_head rows),
- the reward model scores the fraction of TARGET tokens in the sequence (its first layer attends uniformly and copies
  "is TARGET" into one hidden dimension, which the head reads at the last token), so PPO should learn to say TARGET,
- a BRME reward with constant heads has a score that can be written down by hand.
"""

import copy
import math

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM, LlamaForSequenceClassification, TrainerCallback

from tests.conftest import tiny_text_config
from trl_robust import (
    BRMEConfig,
    BRMERewardModel,
    HackingMonitor,
    RobustPPOConfig,
    RobustPPOTrainer,
    robust_ppo_trainer,
)
from trl_robust.ppo_utils import position_ids_from_mask, prompt_order
from trl_robust.robust_ppo_trainer import response_logits
from trl_robust.tokenization import pad_batch

CANDIDATES = [100, 101, 102, 103]
TARGET = 100

OLD_METRICS = [
    "eps",
    "objective/kl",
    "objective/entropy",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/scores",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "policy/entropy_avg",
    "val/ratio",
    "val/ratio_var",
    "val/num_eos_tokens",
    "lr",
    "episode",
]


def _config(tokenizer, num_labels=None):
    config = tiny_text_config("llama", len(tokenizer))
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    if num_labels is not None:
        config.num_labels = num_labels
    return config


def make_policy(tokenizer, seed=0, candidates=CANDIDATES):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(tokenizer))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] += 10.0  # every hidden state points mostly along dimension 0 ...
        model.lm_head.weight[candidates] = 0.0
        model.lm_head.weight[candidates, 0] = 3.0  # ... which these rows read: ~99.9% of the mass on them
    return model


def make_token_fraction_rm(tokenizer, seed=0):
    """Score = 4 f / sqrt(1 + f^2), f = fraction of TARGET tokens among the real tokens."""
    torch.manual_seed(seed)
    config = _config(tokenizer, num_labels=1)
    model = LlamaForSequenceClassification(config)
    h = config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, layer.mlp.down_proj):
                linear.weight.zero_()
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight[2, 0] = 1.0 / math.sqrt(h)
        attn.o_proj.weight[2, 2] = 1.0
        embed = model.model.embed_tokens.weight
        embed.zero_()
        embed[:, 1] = 1.0
        embed[TARGET, 1] = 0.0
        embed[TARGET, 0] = 1.0
        model.score.weight.zero_()
        model.score.weight[0, 2] = 4.0 / math.sqrt(h)
    return model


def make_value_model(tokenizer, seed=1):
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(_config(tokenizer, num_labels=1))


MEANS = [1.0, 0.5, -0.3]
RAW_STDS = [0.5, -1.0, 1.5]  # head 1 is the most confident


def make_constant_brme(tokenizer, seed=2):
    torch.manual_seed(seed)
    model = BRMERewardModel(BRMEConfig(text_config=_config(tokenizer).to_dict(), num_heads=3))
    with torch.no_grad():
        model.score.weight.zero_()
        model.score.bias.copy_(torch.tensor(MEANS + RAW_STDS))
    return model


def tokenized_prompts(tokenizer, n=16):
    return Dataset.from_dict({"input_ids": [tokenizer(f"hello world {i}")["input_ids"] for i in range(n)]})


class LogRecorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=2,
        response_length=6,
        learning_rate=3e-2,
        kl_coef=0.01,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        num_sample_generations=0,
        gradient_checkpointing=False,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    values.update(overrides)
    return RobustPPOConfig(**values)


def build_trainer(
    tmp_path,
    tokenizer,
    *,
    policy=None,
    reward_model=None,
    value_model=None,
    train_dataset=None,
    trainer_kwargs=None,
    **config_overrides,
):
    """A RobustPPOTrainer over this file's tiny models (each one replaceable), with `_args(tmp_path,
    **config_overrides)` and the reference made by the trainer (`ref_model=None`); `trainer_kwargs` go to the
    constructor (callbacks, peft_config, ...)."""
    return RobustPPOTrainer(
        _args(tmp_path, **config_overrides),
        tokenizer,
        make_policy(tokenizer) if policy is None else policy,
        None,
        make_token_fraction_rm(tokenizer) if reward_model is None else reward_model,
        tokenized_prompts(tokenizer) if train_dataset is None else train_dataset,
        make_value_model(tokenizer) if value_model is None else value_model,
        **(trainer_kwargs or {}),
    )


def _scores(recorder):
    return [log["objective/scores"] for log in recorder.logs if "objective/scores" in log]


def assert_learned(scores, margin=0.3):
    """The mean score of the last two of six updates beats the first two's by `margin`, rather than the last update
    the first: one update of 8 episodes is noisy (a run that learned fell back from 1.11 to 0.75 at its last update on
    another machine). Measured with this file's models over seeds 0-11, fp32 and bf16 (seeds 0-5 with 2 threads too:
    identical runs): a gain of 0.37 at the least (median 1.05), 0.45 for that run, at most 0.21 with learning_rate=0."""
    first, last = sum(scores[:2]) / 2, sum(scores[-2:]) / 2
    assert last > first + margin, scores


def test_learns_an_easy_reward_changes_params_logs_old_metrics_and_saves(tmp_path, smol_tokenizer):
    policy = make_policy(smol_tokenizer)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    recorder = LogRecorder()
    trainer = build_trainer(
        tmp_path, smol_tokenizer, policy=policy, trainer_kwargs={"callbacks": [recorder]}, total_episodes=8 * 6
    )
    trainer.train()

    logs = [log for log in recorder.logs if "objective/scores" in log]
    assert len(logs) == 6
    assert_learned(_scores(recorder))  # ~0.6 at the start; TARGET-only responses score ~2.2
    for name in OLD_METRICS:
        assert name in logs[-1], name
    assert logs[-1]["episode"] == 48
    assert not any(key.startswith("robust/") for key in logs[-1])
    changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
    assert "lm_head.weight" in changed and len(changed) > 5

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    saved = load_file(out / "model.safetensors")
    assert torch.equal(saved["lm_head.weight"], policy.lm_head.weight.detach())
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(reloaded, LlamaForCausalLM)
    assert not any(key.startswith("value_model") for key in saved)


def old_trl_ppo_script(PPOConfig, PPOTrainer, output_dir, tokenizer, policy, ref_policy, reward_model, value_model):
    """A TRL 1.12 `examples/scripts/ppo/ppo.py`-style script body; only the two classes are injected."""
    tokenizer.padding_side = "left"
    dataset = Dataset.from_dict({"prompt": [f"Tell me about item {i}." for i in range(12)]})

    def tokenize(element):
        outputs = tokenizer(element["prompt"], padding=False)
        return {"input_ids": outputs["input_ids"]}

    train_dataset = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)
    eval_dataset = train_dataset.select(range(4))
    training_args = PPOConfig(
        output_dir=output_dir,
        learning_rate=3e-6,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_mini_batches=2,
        total_episodes=8,
        local_rollout_forward_batch_size=4,
        response_length=6,
        stop_token="eos",
        missing_eos_penalty=1.0,
        kl_estimator="k3",
        num_ppo_epochs=1,
        num_sample_generations=1,
        report_to="none",
    )
    trainer = PPOTrainer(
        args=training_args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=train_dataset,
        value_model=value_model,
        eval_dataset=eval_dataset,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.generate_completions()
    return trainer


@pytest.mark.parametrize("pad", ["pad_is_eos", "added_pad"])
def test_old_trl_ppo_script_runs_with_only_the_import_swapped(tmp_path, smol_tokenizer, pad):
    from trl_robust import RobustPPOConfig as PPOConfig
    from trl_robust import RobustPPOTrainer as PPOTrainer

    tokenizer = copy.deepcopy(smol_tokenizer)
    if pad == "added_pad":
        # TRL's old example added "[PAD]" without resizing the models: its id is past the embeddings here.
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        assert tokenizer.pad_token_id >= len(smol_tokenizer)
    else:
        assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the pad == eos case of the checklist
    # EOS is one of the tokens the policy samples, so responses stop early and get padded after the stop token
    candidates = CANDIDATES + [tokenizer.eos_token_id]
    trainer = old_trl_ppo_script(
        PPOConfig,
        PPOTrainer,
        str(tmp_path / "ppo"),
        tokenizer,
        make_policy(smol_tokenizer, candidates=candidates),
        make_policy(smol_tokenizer, candidates=candidates),
        make_token_fraction_rm(smol_tokenizer),
        make_value_model(smol_tokenizer),
    )
    assert trainer.state.global_step == 1 and trainer.batch_sizes.batch_size == 8
    assert trainer.batch_sizes.local_mini_batch_size == 4 and trainer.batch_sizes.mini_batch_size == 4
    assert trainer.stop_token_id == tokenizer.eos_token_id
    stopped = trainer.state.log_history[-1]["val/num_eos_tokens"]
    assert 0 < stopped <= 8  # some of the 8 responses ended with EOS (P(EOS within 6 tokens) ~ 0.74 each)
    assert (tmp_path / "ppo" / "model.safetensors").exists()


def test_brme_reward_scores_with_the_configured_aggregation_and_logs_robust_metrics(tmp_path, smol_tokenizer):
    recorder = LogRecorder()
    prompts = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": f"Say something nice {i}."}] for i in range(8)]}
    )
    trainer = build_trainer(
        tmp_path,
        smol_tokenizer,
        reward_model=make_constant_brme(smol_tokenizer),
        value_model=make_constant_brme(smol_tokenizer, seed=3),  # a BRME is accepted as the value model too
        train_dataset=prompts,
        trainer_kwargs={"callbacks": [recorder]},
        total_episodes=8,
        num_ppo_epochs=1,
        reward_aggregation="uwo",
        uwo_coef=0.5,
        whiten_rewards=True,
    )
    # the conversational prompts went through the chat template with the generation prompt
    first = smol_tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert first.endswith("<|im_start|>assistant\n") and "Say something nice 0." in first
    trainer.train()
    log = recorder.logs[-1]

    means = torch.tensor(MEANS)
    stds = torch.nn.functional.softplus(torch.tensor(RAW_STDS)) + 1e-3
    nominal, worst = 0.5, -0.3
    var = means.var(unbiased=False).item()
    assert log["robust/nominal"] == pytest.approx(nominal, abs=1e-5)
    assert log["robust/worst"] == pytest.approx(worst, abs=1e-5)
    assert log["robust/robust"] == pytest.approx(0.4 * nominal + 0.6 * worst, abs=1e-5)
    assert log["robust/mean"] == pytest.approx(means.mean().item(), abs=1e-5)
    assert log["robust/uwo"] == pytest.approx(means.mean().item() - 0.5 * var, abs=1e-5)
    kl_dro = -math.log(torch.exp(-means).mean().item())
    assert log["robust/kl_dro"] == pytest.approx(kl_dro, abs=1e-5)
    assert log["robust/mean_std"] == pytest.approx(stds.mean().item(), abs=1e-5)
    assert log["robust/head_disagreement"] == pytest.approx(math.sqrt(var), abs=1e-5)
    for k, mu in enumerate(MEANS):
        assert log[f"robust/head_{k}_mean"] == pytest.approx(mu, abs=1e-5)
    # the optimised score is the configured aggregation (UWO with c = 0.5)
    assert log["objective/scores"] == pytest.approx(means.mean().item() - 0.5 * var, abs=1e-5)
    # one PPO step from the rollout policy: the rollout's log-probs are recomputed exactly by the training forward
    assert log["val/ratio"] == pytest.approx(1.0, abs=1e-5) and log["policy/approxkl_avg"] == pytest.approx(0, abs=1e-9)
    assert log["policy/clipfrac_avg"] == 0.0


def test_batch_size_errors_name_the_fields(tmp_path, smol_tokenizer):
    def build(**overrides):
        return build_trainer(tmp_path, smol_tokenizer, **overrides)

    with pytest.raises(ValueError, match="num_mini_batches"):
        build(per_device_train_batch_size=6, num_mini_batches=4)
    with pytest.raises(ValueError, match="fewer than one update's batch_size"):
        build(per_device_train_batch_size=8, gradient_accumulation_steps=4)
    trainer = build(per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=4)
    sizes = trainer.batch_sizes
    assert (sizes.batch_size, sizes.local_mini_batch_size, sizes.grad_accum_steps) == (8, 2, 1)
    assert sizes.num_total_batches == 6  # num_train_epochs 3 * 16 prompts / 8
    assert build(max_steps=2).batch_sizes.num_total_batches == 2
    # the derived sizes live in the trainer alone: the TRL 1.12 config fields of the same names stay unset
    assert trainer.args.batch_size is None and trainer.args.num_total_batches is None


@pytest.mark.parametrize(("every", "expected_calls"), [(None, 0), (2, 2)])
def test_accelerator_cache_is_emptied_only_every_torch_empty_cache_steps(
    tmp_path, smol_tokenizer, monkeypatch, every, expected_calls
):
    calls = []
    monkeypatch.setattr(robust_ppo_trainer, "_empty_cache", lambda: calls.append(1))
    trainer = build_trainer(tmp_path, smol_tokenizer, max_steps=4, num_ppo_epochs=1, torch_empty_cache_steps=every)
    trainer.train()
    assert trainer.state.global_step == 4
    assert len(calls) == expected_calls


def test_score_reads_the_last_real_token_when_pad_is_eos(tmp_path, smol_tokenizer):
    rm = make_token_fraction_rm(smol_tokenizer)
    trainer = build_trainer(tmp_path, smol_tokenizer, reward_model=rm)
    eos = smol_tokenizer.eos_token_id
    rows = [[5, 6, TARGET, TARGET, eos], [7, TARGET, eos], [TARGET, 8, 9, 10, 11, 12]]
    ids, mask = pad_batch(rows, eos, "left")  # pad == eos: padding and the final EOS look alike
    padded = trainer.score(ids, mask)["scores"]
    for row, score in zip(rows, padded, strict=True):
        alone = trainer.score(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))["scores"][0]
        assert score.item() == pytest.approx(alone.item(), abs=1e-5)
        closed = row if row[-1] == eos else [*row, eos]  # scored as trained: the text closed with EOS
        f = closed.count(TARGET) / len(closed)
        assert score.item() == pytest.approx(4 * f / math.sqrt(1 + f * f), abs=1e-4)


def test_a_brme_on_the_policys_tokenizer_scores_answers_as_the_brme_scorer_does(tmp_path, smol_tokenizer, brme_dir):
    """PPO scores the policy's tokens without re-tokenising when the BRME shares its tokenizer; the text must still
    be closed with EOS as BRMERewardTrainer trained it and as GRPO, evaluation and the judge (`BRMEScorer`) read it,
    both for an answer cut at response_length and for one that ended with EOS."""
    from trl_robust.scoring import BRMEScorer

    brme = BRMERewardModel.from_pretrained(brme_dir)
    trainer = build_trainer(tmp_path, smol_tokenizer, reward_model=brme, reward_aggregation="mean")
    prompt, answers = "The film was", [" great and long", " awful" + smol_tokenizer.eos_token]
    query = smol_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    rows = [query + smol_tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    ids, mask = pad_batch(rows, trainer.filler_id)
    got = trainer.score(ids, mask, context_length=len(query))["scores"]
    want = BRMEScorer(brme, smol_tokenizer, aggregation="mean").score([prompt] * 2, answers).rewards
    torch.testing.assert_close(got, want.float(), rtol=0, atol=1e-5)
    assert (got[0] - want[1]).abs() > 1e-3  # two different answers: the comparison can tell them apart


def test_resume_continues_like_an_uninterrupted_run(tmp_path, smol_tokenizer):
    def build(name):
        return build_trainer(
            tmp_path,
            smol_tokenizer,
            output_dir=str(tmp_path / name),
            total_episodes=24,
            save_strategy="steps",
            save_steps=2,
        )

    full = build("full")
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "optimizer.pt").exists()

    resumed = build("resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3 and resumed.state.episode == 24
    for (name, a), (_, b) in zip(
        full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):  # policy and value model
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    last_full = [log for log in full.state.log_history if "objective/scores" in log][-1]
    last_resumed = [log for log in resumed.state.log_history if "objective/scores" in log][-1]
    assert last_resumed["episode"] == last_full["episode"] == 24
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
        assert last_resumed[key] == pytest.approx(last_full[key], abs=1e-6), key


def test_response_logits_are_the_full_forward_at_the_response_positions(smol_tokenizer):
    policy = make_policy(smol_tokenizer).eval()
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], 0, "left")
    ids = torch.cat([ids, torch.tensor([[100, 101, 102], [103, 100, 101]])], 1)
    mask = torch.cat([mask, torch.ones(2, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        full = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        kept = response_logits(policy, ids, mask, context_length=4)  # the LM head on 3 positions only

        class NoLogitsToKeep(torch.nn.Module):  # a policy whose forward has no `logits_to_keep`: sliced instead
            def forward(self, input_ids, attention_mask, position_ids, use_cache):
                return policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

        sliced = response_logits(NoLogitsToKeep(), ids, mask, context_length=4)
    assert kept.shape == sliced.shape == (2, 3, full.shape[-1])
    torch.testing.assert_close(kept, full[:, 3:6], rtol=0, atol=1e-5)
    torch.testing.assert_close(sliced, full[:, 3:6], rtol=0, atol=0)


def test_reusing_the_rollout_forward_for_the_first_epoch_changes_nothing(tmp_path, smol_tokenizer):
    """With one micro-batch per update the rollout's policy + value forward (with gradients) is the first PPO epoch's;
    training must be the same as with separate no-grad rollout forwards."""

    def run(name, reuse):
        recorder = LogRecorder()
        trainer = build_trainer(
            tmp_path,
            smol_tokenizer,
            trainer_kwargs={"callbacks": [recorder]},
            output_dir=str(tmp_path / name),
            total_episodes=16,
            num_ppo_epochs=3,
            temperature=0.7,
            learning_rate=3e-4,  # Adam turns rounding-level gradient differences into steps of about lr
        )
        assert trainer.reuse_rollout_forward  # 8 episodes per update in one micro-batch
        trainer.reuse_rollout_forward = reuse
        trainer.train()
        return trainer, [log for log in recorder.logs if "objective/scores" in log]

    reused, reused_logs = run("reused", True)
    separate, separate_logs = run("separate", False)
    initial = make_policy(smol_tokenizer).lm_head.weight
    assert (reused.model.policy.lm_head.weight - initial).abs().max() > 1e-3  # it did train
    for (name, a), (_, b) in zip(reused.model.state_dict().items(), separate.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert len(reused_logs) == len(separate_logs) == 2
    for a, b in zip(reused_logs, separate_logs, strict=True):
        for key in ("objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg", "policy/entropy_avg"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_bf16_mixed_precision_gives_the_fp32_gradients_and_a_first_ratio_of_one(tmp_path, smol_tokenizer):
    """`bf16=True` (autocast over fp32 weights, CPU here): one update's gradients point where fp32's do, and the
    rollout's log-probs come from the same autocast forward as the update's, so the one epoch's ratio is exactly 1."""
    grads, logs = {}, {}
    for bf16 in (False, True):
        recorder = LogRecorder()
        trainer = build_trainer(
            tmp_path,
            smol_tokenizer,
            trainer_kwargs={"callbacks": [recorder]},
            output_dir=str(tmp_path / f"bf16={bf16}"),
            total_episodes=8,
            num_ppo_epochs=1,
            bf16=bf16,
            max_grad_norm=0,
        )
        step = trainer.optimizer.step

        def record_then_step(*args, _trainer=trainer, _bf16=bf16, _step=step, **kwargs):
            named = _trainer.model.named_parameters()
            grads[_bf16] = {name: p.grad.detach().float().clone() for name, p in named if p.grad is not None}
            return _step(*args, **kwargs)

        trainer.optimizer.step = record_then_step
        trainer.train()
        (logs[bf16],) = [log for log in recorder.logs if "objective/scores" in log]

    assert logs[True]["val/ratio"] == logs[False]["val/ratio"] == 1.0
    assert logs[True]["policy/approxkl_avg"] == 0.0
    # The same sampled answers (generation runs outside autocast), so the same scores up to the reward model's bf16.
    assert logs[True]["objective/scores"] == pytest.approx(logs[False]["objective/scores"], rel=4e-3)
    # Where the gradient carries the signal (the LM head; every weight of the value model) bf16 agrees with fp32. (The
    # policy's backbone gradients are ~1e-10 by this test policy's construction: there bf16 keeps only rounding noise.)
    compared = [name for name, g in grads[False].items() if name.startswith("value_model") or "lm_head" in name]
    assert len(compared) > 10
    for name in compared:
        cosine = torch.nn.functional.cosine_similarity(grads[False][name].flatten(), grads[True][name].flatten(), dim=0)
        assert cosine > 0.999, (name, cosine.item())


def test_bf16_weights_learn_the_easy_reward(tmp_path, smol_tokenizer):
    """All four models in bf16 with `bf16=True`, as TRL's GPU reference runs them."""
    recorder = LogRecorder()
    policy, reward_model, value_model = (
        model.to(torch.bfloat16)
        for model in (
            make_policy(smol_tokenizer),
            make_token_fraction_rm(smol_tokenizer),
            make_value_model(smol_tokenizer),
        )
    )
    trainer = build_trainer(
        tmp_path,
        smol_tokenizer,
        policy=policy,
        reward_model=reward_model,
        value_model=value_model,
        trainer_kwargs={"callbacks": [recorder]},
        total_episodes=8 * 6,
        bf16=True,
    )
    trainer.train()
    scores = _scores(recorder)
    assert len(scores) == 6 and all(math.isfinite(s) for s in scores)
    assert_learned(scores)
    assert trainer.model.policy.lm_head.weight.dtype == torch.bfloat16


def test_lora_policy_uses_the_adapter_free_model_as_reference(tmp_path, smol_tokenizer):
    peft = pytest.importorskip("peft")
    recorder = LogRecorder()
    policy = make_policy(smol_tokenizer)
    base_before = policy.lm_head.weight.detach().clone()
    lora = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = build_trainer(
        tmp_path,
        smol_tokenizer,
        policy=policy,
        trainer_kwargs={"callbacks": [recorder], "peft_config": lora},
        total_episodes=16,
        gradient_checkpointing=True,
    )
    assert trainer.is_peft_model and trainer.ref_model is None
    lora_before = {k: v.detach().clone() for k, v in trainer.policy_model.named_parameters() if "lora_B" in k}
    trainer.train()
    logs = [log for log in recorder.logs if "objective/kl" in log]
    assert logs[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity: policy == ref
    lora_after = dict(trainer.policy_model.named_parameters())
    assert any(not torch.equal(lora_after[k], v) for k, v in lora_before.items())
    assert torch.equal(trainer.policy_model.get_base_model().lm_head.weight, base_before)  # base stays frozen
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_text_prompts_are_tokenized_and_any_collator_output_is_left_aligned(tmp_path, smol_tokenizer):
    from transformers import DataCollatorWithPadding

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.padding_side = "right"  # a collator padding on the wrong side must not break generation
    texts = ["hello there", "one two three four five six"] * 8
    trainer = build_trainer(
        tmp_path,
        tokenizer,
        train_dataset=Dataset.from_dict({"prompt": texts}),
        trainer_kwargs={"data_collator": DataCollatorWithPadding(tokenizer)},
    )
    assert trainer.train_dataset.column_names == ["input_ids"]
    ids, mask = trainer._collate([trainer.train_dataset[0], trainer.train_dataset[1]])
    short, long = (tokenizer(text)["input_ids"] for text in texts[:2])
    assert mask[:, -1].tolist() == [1, 1] and mask.sum(1).tolist() == [len(short), len(long)]
    assert ids[0, -len(short) :].tolist() == short and ids[1].tolist() == long
    # the prompts of an update depend on its index only (seeded shuffle per epoch), which makes resuming exact
    first, again = trainer._prompt_batch(0)[0], trainer._prompt_batch(0)[0]
    assert torch.equal(first, again)
    # ... in `prompt_order`, which another trainer can be given (benchmarks/ppo_vs_grpo.py's grpo_ppo_order arm)
    order = prompt_order(len(texts), trainer.args.seed, 0)[: trainer.batch_sizes.prompts_per_update]
    assert torch.equal(first, trainer._collate([trainer.train_dataset[i] for i in order])[0])


def test_a_reward_model_with_another_tokenizer_scores_re_tokenised_text(tmp_path, smol_tokenizer, bert_tokenizer):
    from trl_robust.scoring import BRMEScorer

    torch.manual_seed(3)
    bert = tiny_text_config("bert", len(bert_tokenizer))
    brme = BRMERewardModel(BRMEConfig(text_config=bert, num_heads=3)).eval()
    with pytest.raises(ValueError, match="reward_processing_class"):  # policy ids would index past the RM's vocabulary
        build_trainer(tmp_path, smol_tokenizer, reward_model=brme)
    trainer = build_trainer(
        tmp_path, smol_tokenizer, reward_model=brme, trainer_kwargs={"reward_processing_class": bert_tokenizer}
    )
    prompts, responses = ["hello world", "the film"], [" was great", " was awful and long"]
    query = [smol_tokenizer(p)["input_ids"] for p in prompts]
    reply = [smol_tokenizer(r)["input_ids"] + [smol_tokenizer.eos_token_id] for r in responses]
    queries, query_mask = pad_batch(query, smol_tokenizer.pad_token_id, "left")
    width = max(map(len, reply))
    replies = torch.tensor([r + [smol_tokenizer.pad_token_id] * (width - len(r)) for r in reply])
    reply_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in reply])
    got = trainer.score(torch.cat([queries, replies], 1), torch.cat([query_mask, reply_mask], 1), queries.shape[1])
    expected = BRMEScorer(brme, bert_tokenizer, "robust", robust_lambda=0.4).score(prompts, responses)
    torch.testing.assert_close(got["means"], expected.means)
    torch.testing.assert_close(got["scores"], expected.rewards)


def test_value_model_starts_from_the_reward_model_when_they_share_a_tokenizer(tmp_path, smol_tokenizer, bert_tokenizer):
    from trl_robust.robust_ppo_trainer import load_value_model

    policy_dir, reward_dir = tmp_path / "policy", tmp_path / "reward"
    make_policy(smol_tokenizer).save_pretrained(policy_dir)
    make_token_fraction_rm(smol_tokenizer).save_pretrained(reward_dir)
    reward_embed = make_token_fraction_rm(smol_tokenizer).model.embed_tokens.weight
    policy_embed = make_policy(smol_tokenizer).model.embed_tokens.weight

    value, reward_tokenizer = load_value_model(str(policy_dir), str(reward_dir), smol_tokenizer, smol_tokenizer)
    assert reward_tokenizer is None  # same vocabulary: the trainer scores the policy's tokens directly
    assert torch.equal(value.model.embed_tokens.weight, reward_embed)

    value, reward_tokenizer = load_value_model(str(policy_dir), str(reward_dir), smol_tokenizer, bert_tokenizer)
    assert reward_tokenizer is bert_tokenizer  # another vocabulary: re-tokenised text, value model from the policy
    assert torch.equal(value.model.embed_tokens.weight, policy_embed) and value.config.num_labels == 1

    value, _ = load_value_model(str(policy_dir), str(reward_dir), smol_tokenizer, bert_tokenizer, str(reward_dir))
    assert torch.equal(value.model.embed_tokens.weight, reward_embed)  # an explicit value_path wins


def test_a_critic_free_run_loads_no_value_model(tmp_path, smol_tokenizer, bert_tokenizer):
    from trl_robust.robust_ppo_trainer import load_ppo_models

    policy_dir, same_dir, other_dir = tmp_path / "policy", tmp_path / "same", tmp_path / "other"
    for folder, model, tokenizer in [
        (policy_dir, make_policy(smol_tokenizer), smol_tokenizer),
        (same_dir, make_token_fraction_rm(smol_tokenizer), smol_tokenizer),
        (other_dir, make_token_fraction_rm(smol_tokenizer), bert_tokenizer),
    ]:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    models = load_ppo_models(str(policy_dir), str(other_dir), use_critic=False)
    assert models["value_model"] is None
    assert models["reward_processing_class"].get_vocab() == bert_tokenizer.get_vocab()  # still re-tokenised
    assert load_ppo_models(str(policy_dir), str(same_dir), use_critic=False)["reward_processing_class"] is None
    with_critic = load_ppo_models(str(policy_dir), str(other_dir))
    assert with_critic["value_model"].config.num_labels == 1


def test_hacking_monitor_reads_the_rollout_scores_and_stops_the_run(tmp_path, smol_tokenizer):
    """Every member of the constant BRME scores every answer MEANS, so each sample's epistemic uncertainty is the
    population std of MEANS; against a reference that narrow every sample is out, the window of 8 (one update) is
    full after update 1, and with patience 1 the alarm stops the run there."""
    monitor = HackingMonitor([0.0, 1e-9], window=8, patience=1, action="stop")
    recorder = LogRecorder()
    trainer = build_trainer(
        tmp_path,
        smol_tokenizer,
        reward_model=make_constant_brme(smol_tokenizer),
        trainer_kwargs={"callbacks": [recorder, monitor]},
        total_episodes=8 * 4,
        num_ppo_epochs=1,
    )
    trainer.train()
    assert trainer.state.global_step == 1 and monitor.first_alarm_step == 1
    log = recorder.logs[-1]
    assert log["monitor/alarm"] == 1.0 and log["monitor/frac_out"] == 1.0
    assert log["monitor/epistemic"] == pytest.approx(torch.tensor(MEANS).std(unbiased=False).item(), abs=1e-5)
    assert "monitor/gap" not in log  # no reference gap given: not tracked
    # the answers' repetition, from the rollout's real response tokens (at most response_length of them)
    assert 0.0 < log["monitor/distinct_2"] <= 1.0 and "monitor/distinct_2_ratio" in log  # window full: a reference
    assert monitor.distinct_reference == pytest.approx(log["monitor/distinct_2"])


# --------------------------------------------------------------------------------------------------------------------
# Critic, baselines and their diagnostics
# --------------------------------------------------------------------------------------------------------------------


def _one_rollout(trainer):
    """The first update's rollout batch and PPO statistics, as `train` makes them."""
    trainer._start_time, trainer._session_episodes, trainer.state.episode = 0.0, 0, 0
    queries, query_mask = trainer._prompt_batch(0)
    trainer.model.eval()
    batch = trainer._rollout(queries, query_mask)
    return batch, trainer._ppo_epochs(batch)


def _real(tensor, mask):
    return [float(x) for x, m in zip(tensor.reshape(-1).tolist(), mask.reshape(-1).tolist(), strict=True) if m]


def test_critic_diagnostics_are_logged_and_match_a_hand_computation(tmp_path, smol_tokenizer):
    trainer = build_trainer(tmp_path, smol_tokenizer, total_episodes=8, num_ppo_epochs=1)
    batch, stats = _one_rollout(trainer)
    metrics = trainer._metrics(batch, stats)
    mask = batch["response_mask"]
    returns, values = _real(batch["returns"], mask), _real(batch["values"], mask)
    errors = [r - v for r, v in zip(returns, values, strict=True)]

    def var(xs):
        mu = sum(xs) / len(xs)
        return sum((x - mu) ** 2 for x in xs) / len(xs)

    assert metrics["val/explained_variance"] == pytest.approx(1 - var(errors) / var(returns), rel=1e-4)
    assert metrics["val/value_mean"] == pytest.approx(sum(values) / len(values), abs=1e-5)
    assert metrics["val/return_mean"] == pytest.approx(sum(returns) / len(returns), abs=1e-5)
    # per episode: the mean of its unwhitened advantages against its score
    adv = [sum(_real(a, m)) / int(m.sum()) for a, m in zip(batch["raw_advantages"], mask, strict=True)]
    scores = batch["scores"].tolist()
    ma, ms = sum(adv) / 8, sum(scores) / 8
    cov = sum((a - ma) * (s - ms) for a, s in zip(adv, scores, strict=True))
    corr = cov / math.sqrt(sum((a - ma) ** 2 for a in adv) * sum((s - ms) ** 2 for s in scores))
    assert metrics["val/advantage_score_corr"] == pytest.approx(corr, abs=1e-4)
    assert {"loss/value_avg", "val/clipfrac_avg"} <= set(metrics)


def test_a_zero_value_head_gives_advantages_equal_to_the_discounted_returns(tmp_path, smol_tokenizer):
    from trl_robust.ppo_utils import compute_rewards, discounted_returns

    value_model = make_value_model(smol_tokenizer)
    trainer = build_trainer(
        tmp_path, smol_tokenizer, value_model=value_model, total_episodes=8, value_head_init="zero", gamma=0.9, lam=0.8
    )
    assert not value_model.score.weight.any()
    queries, query_mask = trainer._prompt_batch(0)
    trainer.model.eval()
    batch = trainer._rollout(queries, query_mask)
    mask = batch["response_mask"]
    assert not batch["values"].any()
    # the rollout keeps no graph but the first epoch's forward: the policy loss must not reach the critic through A
    assert not any(batch[k].requires_grad for k in ("advantages", "returns", "values", "scores", "logprobs"))
    rewards, _ = compute_rewards(batch["kl"], batch["scores"], mask.sum(1), trainer.args.kl_coef)
    expected = discounted_returns(rewards, mask, 0.9 * 0.8)
    assert torch.allclose(batch["raw_advantages"], expected, atol=1e-6)
    assert torch.allclose(batch["returns"], expected, atol=1e-6)
    assert batch["raw_advantages"][mask].abs().sum() > 0  # the scores are not all 0: the check has content


def test_critic_warmup_updates_train_the_value_model_only(tmp_path, smol_tokenizer):
    policy, value_model = make_policy(smol_tokenizer), make_value_model(smol_tokenizer)
    policy_before = copy.deepcopy(policy.state_dict())
    value_before = copy.deepcopy(value_model.state_dict())
    trainer = build_trainer(
        tmp_path,
        smol_tokenizer,
        policy=policy,
        value_model=value_model,
        total_episodes=16,
        num_critic_warmup_updates=2,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert all(torch.equal(v, policy_before[k]) for k, v in policy.state_dict().items())
    changed = [k for k, v in value_model.state_dict().items() if not torch.equal(v, value_before[k])]
    assert "score.weight" in changed and len(changed) > 5


def test_value_learning_rate_gets_its_own_parameter_groups(tmp_path, smol_tokenizer):
    value_model = make_value_model(smol_tokenizer)
    trainer = build_trainer(tmp_path, smol_tokenizer, value_model=value_model, value_learning_rate=1e-1)
    value_ids = {id(p) for p in value_model.parameters()}
    seen = set()
    for group in trainer.optimizer.param_groups:
        kinds = {id(p) in value_ids for p in group["params"]}
        assert len(kinds) == 1  # a group is all policy or all value
        assert group["lr"] == pytest.approx(1e-1 if kinds == {True} else 3e-2)
        seen |= {id(p) for p in group["params"]}
    assert value_ids <= seen and len(seen) == len(value_ids) + len(list(trainer.policy_model.parameters()))


def test_critic_free_group_baseline_centres_each_prompts_scores_and_learns(tmp_path, smol_tokenizer):
    recorder = LogRecorder()
    value_model = make_value_model(smol_tokenizer)
    trainer = build_trainer(
        tmp_path,
        smol_tokenizer,
        value_model=value_model,  # passed as old scripts do, then dropped
        trainer_kwargs={"callbacks": [recorder]},
        total_episodes=8 * 6,
        use_critic=False,
        num_samples_per_prompt=4,
        advantage_baseline="prompt_mean",
    )
    assert trainer.model.value_model is None
    assert not {id(p) for p in value_model.parameters()} & {
        id(p) for g in trainer.optimizer.param_groups for p in g["params"]
    }
    assert trainer.batch_sizes.prompts_per_update == 2
    queries, query_mask = trainer._prompt_batch(0)
    assert torch.equal(queries[0], queries[3]) and not torch.equal(queries[0], queries[4])  # 2 prompts x 4 answers
    trainer.model.eval()
    batch = trainer._rollout(queries, query_mask)
    assert batch["values"] is None
    # gamma 1: the first token's return is the sum of the answer's KL rewards plus its score minus its prompt's mean
    scores = batch["scores"].view(2, 4)
    centred = (scores - scores.mean(1, keepdim=True)).reshape(-1)
    kl_part = (-trainer.args.kl_coef * batch["kl"]).sum(1)
    assert torch.allclose(batch["returns"][:, 0], centred + kl_part, atol=1e-5)

    trainer.train()
    assert_learned(_scores(recorder))
    log = recorder.logs[-1]
    assert "val/advantage_score_corr" in log and "val/explained_variance" not in log and "loss/value_avg" not in log


def test_scale_by_prompt_std_divides_each_centred_score_by_its_prompts_std(tmp_path, smol_tokenizer):
    trainer = build_trainer(
        tmp_path,
        smol_tokenizer,
        total_episodes=8,
        use_critic=False,
        num_samples_per_prompt=4,
        advantage_baseline="prompt_mean",
        scale_by_prompt_std=True,
    )
    queries, query_mask = trainer._prompt_batch(0)
    trainer.model.eval()
    batch = trainer._rollout(queries, query_mask)
    scores = batch["scores"].view(2, 4)  # the logged scores stay the raw ones
    scaled = ((scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-4)).reshape(-1)
    kl_part = (-trainer.args.kl_coef * batch["kl"]).sum(1)
    assert scores.std(1).min() > 0.01 and (scores.std(1) - 1).abs().max() > 0.05  # the scaling has an effect here
    assert torch.allclose(batch["returns"][:, 0], scaled + kl_part, atol=1e-4)


def train_preference_rm(tokenizer, seed=0, steps=150):
    """A reward model LEARNED from preferences (no hand-set weights): a random tiny Llama trained with the
    Bradley-Terry loss on pairs of candidate-token responses, the one with more TARGET tokens preferred."""
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_config(tokenizer, num_labels=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    prompt = torch.tensor(tokenizer("hello world 3")["input_ids"])
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        responses = torch.tensor(CANDIDATES)[torch.randint(0, 4, (32, 6), generator=generator)]
        rewards = model(input_ids=torch.cat([prompt.expand(32, -1), responses], 1)).logits[:, 0]
        count = (responses == TARGET).sum(1)
        sign = torch.sign((count[:16] - count[16:]).float())  # +1: the first of the pair is preferred
        keep = sign != 0
        loss = -torch.nn.functional.logsigmoid(sign[keep] * (rewards[:16] - rewards[16:])[keep]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_learns_a_learned_reward_model(tmp_path, smol_tokenizer):
    """PPO (defaults: a critic) raises the score of a reward model trained on preferences. Measured over seeds 0-7
    (model and run seed alike): last-two-update mean 5.6-7.0, gain over the first two 4.0-7.8; with learning_rate=0
    (seeds 0-5) the last-two mean stays <= 1.1 and the 'gain' <= 2.2 (the learned scores are noisier per update than
    the hand-made reward's)."""
    recorder = LogRecorder()
    trainer = build_trainer(
        tmp_path,
        smol_tokenizer,
        reward_model=train_preference_rm(smol_tokenizer),
        trainer_kwargs={"callbacks": [recorder]},
        total_episodes=8 * 6,
    )
    trainer.train()
    scores = _scores(recorder)
    assert sum(scores[-2:]) / 2 > 4.0, scores
    assert_learned(scores, margin=3.0)


def test_zero_value_head_of_a_brme_value_model_zeroes_its_means_only(smol_tokenizer):
    from trl_robust.robust_ppo_trainer import token_values, zero_value_head

    brme = make_constant_brme(smol_tokenizer)
    ids = torch.tensor([smol_tokenizer("hello world")["input_ids"]])
    assert torch.allclose(token_values(brme, ids, torch.ones_like(ids)), torch.tensor(sum(MEANS) / 3))
    zero_value_head(brme)
    assert not token_values(brme, ids, torch.ones_like(ids)).any()
    assert brme.score.bias[3:].tolist() == pytest.approx(RAW_STDS)  # the std rows are left as they were


def test_reward_normalization_uses_the_initial_policys_score_statistics_and_resumes_with_them(tmp_path, smol_tokenizer):
    def build(name, **overrides):
        return build_trainer(
            tmp_path,
            smol_tokenizer,
            output_dir=str(tmp_path / name),
            **{"total_episodes": 16, "reward_normalization_batches": 2, "save_strategy": "steps", "save_steps": 1}
            | overrides,
        )

    trainer = build("stats")
    scored, score = [], trainer.score

    def recording_score(*args):
        out = score(*args)
        scored.append(out["scores"])
        return out

    trainer.score = recording_score
    torch.manual_seed(0)
    mean, std = trainer._reward_statistics(2)
    raw = torch.cat(scored)
    assert raw.numel() == 2 * 8 and raw.std() > 0  # two batches of 8 answers, scores that vary
    assert (mean, std) == pytest.approx((raw.mean().item(), raw.std().item()), rel=1e-6)

    full = build("full")
    full.train()
    assert full.reward_normalization is not None
    shift, scale = full.reward_normalization
    logs = [log for log in full.state.log_history if "objective/scores" in log]
    for log in logs:  # scores are the raw ones shifted and scaled (no EOS penalty here), so their batch means too
        assert log["objective/scores"] == pytest.approx((log["objective/raw_scores"] - shift) / scale, abs=1e-5)
    assert scale != pytest.approx(1.0) and logs[0]["objective/scores"] != pytest.approx(logs[0]["objective/raw_scores"])

    resumed = build("resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-1"))
    assert resumed.reward_normalization == pytest.approx(full.reward_normalization)  # read back, not re-sampled
    last = [log for log in resumed.state.log_history if "objective/scores" in log][-1]
    assert last["objective/scores"] == pytest.approx(logs[-1]["objective/scores"], abs=1e-6)

    # a checkpoint of a run without normalisation cannot be resumed with it: its scores' scale is unknown
    plain = build("plain", reward_normalization_batches=0)
    plain.train()
    with pytest.raises(ValueError, match="reward_normalization.json"):
        build("mixed").train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-1"))
    with pytest.raises(ValueError, match="reward_normalization_batches must be >= 0"):
        _args(tmp_path, reward_normalization_batches=-1)
