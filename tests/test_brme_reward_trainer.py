import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import LlamaForCausalLM
from trl import RewardConfig, RewardTrainer

from tests.conftest import preference_rows, tiny_text_config
from trl_robust import BRMEConfig, BRMERewardConfig, BRMERewardModel, BRMERewardTrainer
from trl_robust.brme_reward_trainer import bootstrap_weights, brme_pair_losses, gaussian_regression_losses
from trl_robust.metrics import expected_calibration_error


def tiny_brme(tokenizer, kind="llama", num_heads=3, **member_settings):
    torch.manual_seed(0)
    config = BRMEConfig(text_config=tiny_text_config(kind, len(tokenizer)), num_heads=num_heads, **member_settings)
    return BRMERewardModel(config)


@pytest.fixture
def plain_llama(tmp_path, smol_tokenizer):
    """A plain tiny causal LM and its tokenizer saved in a folder: a string model the trainer builds a BRME on."""
    torch.manual_seed(0)
    plain = tmp_path / "plain"
    LlamaForCausalLM(tiny_text_config("llama", len(smol_tokenizer))).save_pretrained(plain)
    smol_tokenizer.save_pretrained(plain)
    return plain


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        num_train_epochs=1,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    values.update(overrides)
    return BRMERewardConfig(**values)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_training_changes_parameters_and_learns(tmp_path, smol_tokenizer):
    model = tiny_brme(smol_tokenizer)
    before = snapshot(model)
    data = Dataset.from_list(preference_rows(64))
    trainer = BRMERewardTrainer(
        model=model,
        args=config(tmp_path, num_train_epochs=4, eval_strategy="epoch"),
        train_dataset=data,
        eval_dataset=data.select(range(16)),
        processing_class=smol_tokenizer,
    )
    trainer.train()
    for name, param in trainer.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[-1]["loss"] < 0.6 * logs[0]["loss"]
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evals[-1]["eval_accuracy"] == 1.0 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    expected = {
        "accuracy",
        "margin",
        "min_reward",
        "mean_reward",
        "max_reward",
        "accuracy_nominal",
        "accuracy_worst",
        "accuracy_mean",
        "mean_std",
        "head_disagreement",
        "ece",
        "num_tokens",
    }
    expected |= {f"accuracy_head_{k}" for k in range(3)}
    assert expected <= set(logs[-1])
    assert {f"eval_{name}" for name in expected} <= set(evals[-1])


@pytest.mark.parametrize("loss_type", ["gaussian_bt", "reparam", "bt"])
def test_each_loss_trains(tmp_path, smol_tokenizer, loss_type):
    model = tiny_brme(smol_tokenizer)
    std_bias = model.score.bias[3:].detach().clone()
    trainer = BRMERewardTrainer(
        model=model,
        args=config(tmp_path, num_train_epochs=3, brme_loss=loss_type),
        train_dataset=Dataset.from_list(preference_rows(48)),
        processing_class=smol_tokenizer,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[-1]["loss"] < logs[0]["loss"]
    stds_moved = not torch.allclose(trainer.model.score.bias[3:], std_bias)
    assert stds_moved == (loss_type != "bt")  # the std heads learn except under the means-only ablation


def test_pair_losses_match_their_formulas():
    mc, mr = torch.tensor([[1.0, -0.5]]), torch.tensor([[0.2, 0.5]])
    sc, sr = torch.tensor([[0.3, 1.0]]), torch.tensor([[0.4, 2.0]])
    bt = brme_pair_losses(mc, sc, mr, sr, "bt")
    torch.testing.assert_close(bt, -torch.nn.functional.logsigmoid(mc - mr))
    gbt = brme_pair_losses(mc, sc, mr, sr, "gaussian_bt")
    scale = torch.sqrt(1 + math.pi / 8 * (sc**2 + sr**2))
    torch.testing.assert_close(gbt, -torch.nn.functional.logsigmoid((mc - mr) / scale))
    # The probit form tracks the exact Gaussian expectation of the sigmoid closely.
    z = (mc - mr) + torch.randn(200_000, 1, 1) * torch.sqrt(sc**2 + sr**2)
    exact = -torch.log(torch.sigmoid(z).mean(0))
    torch.testing.assert_close(gbt, exact, atol=0.02, rtol=0.02)
    # As the stds vanish, the Gaussian loss becomes plain Bradley-Terry.
    tiny = torch.full_like(sc, 1e-6)
    torch.testing.assert_close(brme_pair_losses(mc, tiny, mr, tiny, "gaussian_bt"), bt)
    torch.manual_seed(0)
    rep = brme_pair_losses(mc, sc, mr, sr, "reparam", num_samples=50_000)
    torch.testing.assert_close(rep, -torch.nn.functional.logsigmoid(z).mean(0), atol=0.02, rtol=0.02)
    margin = torch.tensor([0.3])
    torch.testing.assert_close(
        brme_pair_losses(mc, sc, mr, sr, "bt", margin), -torch.nn.functional.logsigmoid(mc - mr - 0.3)
    )


def test_bootstrap_weights_are_deterministic_per_pair_and_differ_across_heads():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [5, 6, 0, 0], [4, 4, 4, 4]])
    mask = (ids != 0).long()
    w = bootstrap_weights(ids, mask, num_heads=6, seed=0, kind="bayesian")
    assert w.shape == (2, 6) and (w > 0).all() and w[0].std() > 0
    assert torch.equal(w, bootstrap_weights(ids, mask, 6, 0, "bayesian"))
    assert not torch.equal(w, bootstrap_weights(ids, mask, 6, 1, "bayesian"))
    # The same pair in another batch position or with more padding gets the same weights.
    swapped = ids[[1, 0, 3, 2]]
    padded = torch.cat([swapped, torch.zeros(4, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(bootstrap_weights(padded, (padded != 0).long(), 6, 0, "bayesian"), w[[1, 0]])
    poisson = bootstrap_weights(ids, mask, 6, 0, "poisson")
    assert torch.equal(poisson, poisson.round()) and (poisson >= 0).all()
    assert torch.equal(bootstrap_weights(ids, mask, 6, 0, "none"), torch.ones(2, 6))


def test_expected_calibration_error_by_hand():
    # confidences 0.9 (right), 0.9 (wrong, p=0.1), 0.6 (right): bins [0.9,1.0) holds two at acc 0.5, [0.6,0.65) one.
    p = torch.tensor([0.9, 0.1, 0.6])
    expected = (2 / 3) * abs(0.5 - 0.9) + (1 / 3) * abs(1.0 - 0.6)
    assert expected_calibration_error(p, num_bins=10) == pytest.approx(expected)
    assert expected_calibration_error(torch.tensor([1.0, 1.0]), 10) == pytest.approx(0.0)


def test_margin_and_center_rewards(tmp_path, smol_tokenizer):
    rows = [dict(r, margin=1.0) for r in preference_rows(32)]
    trainer = BRMERewardTrainer(
        model=tiny_brme(smol_tokenizer),
        args=config(tmp_path, num_train_epochs=4, center_rewards_coefficient=0.5),
        train_dataset=Dataset.from_list(rows),
        processing_class=smol_tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "margin" in batch
    trainer.train()
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.means.mean().abs() < 0.5  # centred by the penalty
    gap = (out.means.chunk(2)[0] - out.means.chunk(2)[1]).mean()
    assert gap > 0.5  # pushed past the margin of 1 that the loss subtracts


def test_conversational_explicit_prompt_and_tokenized_data(tmp_path, smol_tokenizer):
    conversational = [
        {
            "prompt": [{"role": "user", "content": f"How was {i}?"}],
            "chosen": [{"role": "assistant", "content": "great"}],
            "rejected": [{"role": "assistant", "content": "awful"}],
        }
        for i in range(16)
    ]
    explicit = [{"prompt": f"Q{i}: ", "chosen": "great", "rejected": "awful"} for i in range(16)]
    tokenized = [{"chosen_ids": [1, 2, 3, i], "rejected_ids": [1, 2, 4]} for i in range(5, 21)]
    for rows in (conversational, explicit, tokenized):
        trainer = BRMERewardTrainer(
            model=tiny_brme(smol_tokenizer),
            args=config(tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=smol_tokenizer,
        )
        sample = trainer.train_dataset[0]
        if "prompt" in rows[0] and isinstance(rows[0]["prompt"], list):
            messages = rows[0]["prompt"] + rows[0]["chosen"]
            expected = smol_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
            assert sample["chosen_ids"] == list(expected)
        elif "prompt" in rows[0]:
            assert sample["chosen_ids"] == smol_tokenizer("Q0: great" + smol_tokenizer.eos_token)["input_ids"]
        else:
            assert sample["chosen_ids"] == [1, 2, 3, 5]
        trainer.train()
        assert trainer.state.global_step == 2


def test_string_model_builds_or_loads_a_brme(tmp_path, smol_tokenizer, plain_llama):
    plain, data = plain_llama, Dataset.from_list(preference_rows(16))
    trainer = BRMERewardTrainer(model=str(plain), args=config(tmp_path / "a", num_heads=4), train_dataset=data)
    assert isinstance(trainer.model, BRMERewardModel) and trainer.model.config.num_heads == 4
    trainer.train()
    trainer.save_model(str(tmp_path / "brme"))
    again = BRMERewardTrainer(
        model=str(tmp_path / "brme"), args=config(tmp_path / "b", num_heads=9), train_dataset=data
    )
    assert again.model.config.num_heads == 4  # a BRME checkpoint keeps its own heads
    torch.testing.assert_close(again.model.score.weight, trainer.model.score.weight)


def test_plain_reward_model_instance_is_refused(tmp_path, smol_tokenizer):
    from transformers import LlamaForSequenceClassification

    cfg = tiny_text_config("llama", len(smol_tokenizer))
    cfg.num_labels = 1
    with pytest.raises(TypeError, match="BRMERewardModel"):
        BRMERewardTrainer(
            model=LlamaForSequenceClassification(cfg),
            args=config(tmp_path),
            train_dataset=Dataset.from_list(preference_rows(8)),
            processing_class=smol_tokenizer,
        )


def test_missing_columns_are_named(tmp_path, smol_tokenizer):
    with pytest.raises(ValueError, match="'chosen' and 'rejected'.*'answer'"):
        BRMERewardTrainer(
            model=tiny_brme(smol_tokenizer),
            args=config(tmp_path),
            train_dataset=Dataset.from_list([{"answer": "x", "rejected": "y"}]),
            processing_class=smol_tokenizer,
        )


def test_encoder_backbone_without_eos_token(tmp_path, bert_tokenizer):
    assert bert_tokenizer.eos_token is None
    model = tiny_brme(bert_tokenizer, kind="bert")
    trainer = BRMERewardTrainer(
        model=model,
        args=config(tmp_path, num_train_epochs=3),
        train_dataset=Dataset.from_list(preference_rows(32)),
        processing_class=bert_tokenizer,
    )
    ids = trainer.train_dataset[0]["chosen_ids"]
    assert ids[0] == bert_tokenizer.cls_token_id and ids[-1] == bert_tokenizer.sep_token_id
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_lora_trains_adapters_and_heads(tmp_path, smol_tokenizer):
    model = tiny_brme(smol_tokenizer)
    base_before = model.backbone.layers[0].self_attn.q_proj.weight.detach().clone()
    heads_before = model.score.weight.detach().clone()
    trainer = BRMERewardTrainer(
        model=model,
        args=config(tmp_path, num_train_epochs=2),
        train_dataset=Dataset.from_list(preference_rows(32)),
        processing_class=smol_tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8),
    )
    assert isinstance(trainer.model, PeftModel)
    trainer.train()
    brme = trainer.model.get_base_model()
    assert torch.equal(brme.backbone.layers[0].self_attn.q_proj.base_layer.weight, base_before)
    lora_b = brme.backbone.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert lora_b.abs().sum() > 0  # LoRA B starts at zero
    trained_heads = trainer.model.base_model.model.score.modules_to_save["default"].weight.detach().clone()
    assert not torch.equal(trained_heads, heads_before)

    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(tiny_brme(smol_tokenizer), str(tmp_path / "adapter"))
    ids = torch.randint(1, 100, (2, 5))
    trainer.model.eval()
    torch.testing.assert_close(reloaded.eval()(input_ids=ids).means, trainer.model(input_ids=ids).means)


def run_trl_reward_script(trainer_cls, config_cls, model, tokenizer, out_dir):
    """A script as a TRL user writes it for RewardTrainer; the test runs it with only the classes swapped."""
    dataset = Dataset.from_list(preference_rows(32))
    dataset = dataset.train_test_split(test_size=0.25, seed=0)
    training_args = config_cls(
        output_dir=out_dir,
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=1e-3,
        eval_strategy="epoch",
        report_to="none",
        save_strategy="no",
        max_length=64,
        bf16=False,
    )
    trainer = trainer_cls(
        model=model,
        args=training_args,
        processing_class=tokenizer,
        train_dataset=dataset["train"],
        eval_dataset=dataset["test"],
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(out_dir)
    return metrics


def test_a_trl_reward_script_runs_with_the_class_swapped(tmp_path, smol_tokenizer):
    from transformers import LlamaForSequenceClassification

    cfg = tiny_text_config("llama", len(smol_tokenizer))
    cfg.num_labels = 1
    trl_metrics = run_trl_reward_script(
        RewardTrainer, RewardConfig, LlamaForSequenceClassification(cfg), smol_tokenizer, str(tmp_path / "trl")
    )
    ours = run_trl_reward_script(
        BRMERewardTrainer, BRMERewardConfig, tiny_brme(smol_tokenizer), smol_tokenizer, str(tmp_path / "ours")
    )
    assert set(trl_metrics) <= set(ours)  # every metric a TRL user reads is still there
    assert isinstance(BRMERewardModel.from_pretrained(tmp_path / "ours"), BRMERewardModel)


def test_a_string_model_gets_the_same_heads_for_the_same_seed(tmp_path, smol_tokenizer):
    plain = tmp_path / "plain"
    LlamaForCausalLM(tiny_text_config("llama", len(smol_tokenizer))).save_pretrained(plain)
    smol_tokenizer.save_pretrained(plain)
    data = Dataset.from_list(preference_rows(8))
    heads = []
    for run, seed in enumerate((0, 0, 1)):
        torch.manual_seed(100 + run)  # whatever the global RNG holds before the trainer
        trainer = BRMERewardTrainer(model=str(plain), args=config(tmp_path / str(run), seed=seed), train_dataset=data)
        heads.append(trainer.model.score.weight.detach().clone())
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


def test_gaussian_regression_losses_match_sampling():
    mc, mr = torch.tensor([[1.0, -0.5]]), torch.tensor([[0.2, 0.5]])
    sc, sr = torch.tensor([[0.3, 1.0]]), torch.tensor([[0.4, 2.0]])
    target = torch.tensor([2.0])
    closed = gaussian_regression_losses(mc, sc, mr, sr, target)
    torch.testing.assert_close(closed, (mc - 2) ** 2 + sc**2 + (mr + 2) ** 2 + sr**2)
    torch.manual_seed(0)
    eps = torch.randn(200_000, 2, 1, 2)
    sampled = ((mc + sc * eps[:, 0] - 2) ** 2 + (mr + sr * eps[:, 1] + 2) ** 2).mean(0)
    torch.testing.assert_close(closed, sampled, atol=0.05, rtol=0.02)


def test_bt_then_gaussian_trains_bt_then_regresses_onto_frozen_targets(tmp_path, smol_tokenizer):
    model = tiny_brme(smol_tokenizer)
    data = Dataset.from_list(preference_rows(48))
    trainer = BRMERewardTrainer(
        model=model,
        args=config(tmp_path, num_train_epochs=4, brme_loss="bt_then_gaussian", bt_phase_fraction=0.5),
        train_dataset=data,
        processing_class=smol_tokenizer,
    )
    std_bias = trainer.model.score.bias[3:].detach().clone()
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    phases = [entry["bt_phase"] for entry in logs]
    assert phases[: len(phases) // 2] == [1.0] * (len(phases) // 2) and phases[-1] == 2.0
    targets = trainer._bt_targets
    assert targets is not None and len(targets) == 48 and all(0.0 < p < 1.0 for p in targets.values())
    # Phase 1 learned the task: the frozen teacher prefers the chosen side of every pair.
    assert min(targets.values()) > 0.5
    # Phase 2 moved the means towards +-10 (p - 0.5) and the stds (which get no BT signal in phase 1) down.
    means_c, means_r, stds_c, _ = trainer._score_pairs(trainer.model, *trainer._pair_ids(trainer.train_dataset))
    assert (means_c > means_r).all()
    assert trainer.model.score.bias[3:].mean() < std_bias.mean()
    phase_two = [entry["loss"] for entry in logs if entry["bt_phase"] == 2.0]
    assert phase_two[-1] < phase_two[0]


def test_calibration_fits_a_temperature_and_saves_it(tmp_path, smol_tokenizer):
    data = Dataset.from_list(preference_rows(48))
    trainer = BRMERewardTrainer(
        model=tiny_brme(smol_tokenizer),
        args=config(tmp_path, num_train_epochs=3, eval_strategy="no"),
        train_dataset=data,
        eval_dataset=data.select(range(16)),
        processing_class=smol_tokenizer,
    )
    trainer.train()
    temperature = trainer.model.config.calibration_temperature
    assert temperature != 1.0
    logged = [entry for entry in trainer.state.log_history if "calibration_temperature" in entry][-1]
    assert logged["calibration_temperature"] == temperature
    assert logged["eval_calibrated_ece"] <= logged["eval_calibration_ece"] + 1e-9
    # on demand, on raw text pairs (tokenised as the eval split was), with the same fit
    assert trainer.calibrate(data.select(range(16))) == pytest.approx(temperature)
    trainer.save_model(tmp_path / "saved")
    assert BRMERewardModel.from_pretrained(tmp_path / "saved").config.calibration_temperature == temperature

    off = BRMERewardTrainer(
        model=tiny_brme(smol_tokenizer),
        args=config(tmp_path / "off", max_steps=1, calibrate=False),
        train_dataset=data,
        eval_dataset=data.select(range(16)),
        processing_class=smol_tokenizer,
    )
    off.train()
    assert off.model.config.calibration_temperature == 1.0
    assert not any("calibration_temperature" in entry for entry in off.state.log_history)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("brme_loss", "paper", "brme_loss"),
        ("bt_phase_fraction", 1.0, "bt_phase_fraction"),
        ("bt_target_scale", 0.0, "bt_target_scale"),
    ],
)
def test_paper_recipe_settings_are_checked(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **{field: value})


def test_string_model_gets_the_member_type_of_the_config(tmp_path, smol_tokenizer, plain_llama):
    plain, data = plain_llama, Dataset.from_list(preference_rows(16))
    args = config(tmp_path / "a", max_steps=1, head_type="mlp", head_hidden_size=12, prior_scale=2.0)
    trainer = BRMERewardTrainer(model=str(plain), args=args, train_dataset=data, processing_class=smol_tokenizer)
    built = trainer.model.config
    assert (built.head_type, built.head_hidden_size, built.prior_scale) == ("mlp", 12, 2.0)
    with pytest.raises(ValueError, match="member_layers"):
        BRMERewardTrainer(
            model=str(plain),
            args=config(tmp_path / "b", head_type="lora", member_layers=5),
            train_dataset=data,
            processing_class=smol_tokenizer,
        )


def test_peft_trains_mlp_members_with_priors_and_refuses_lora_members(tmp_path, smol_tokenizer):
    model = tiny_brme(smol_tokenizer, head_type="mlp", prior_scale=1.0)
    prior = model.score.prior_weight.clone()
    before = model.score.fc2_weight.detach().clone()
    trainer = BRMERewardTrainer(
        model=model,
        args=config(tmp_path),
        train_dataset=Dataset.from_list(preference_rows(16)),
        processing_class=smol_tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8),
    )
    trainer.train()
    heads = trainer.model.base_model.model.score.modules_to_save["default"]
    assert not torch.equal(heads.fc2_weight, before)  # the members train beside the adapter
    torch.testing.assert_close(heads.prior_weight, prior)  # their priors do not
    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(
        tiny_brme(smol_tokenizer, head_type="mlp", prior_scale=1.0), str(tmp_path / "adapter")
    )
    ids = torch.randint(1, 100, (2, 5))
    trainer.model.eval()
    torch.testing.assert_close(reloaded.eval()(input_ids=ids).means, trainer.model(input_ids=ids).means)

    with pytest.raises(ValueError, match="head_type='lora' already trains per-member low-rank adapters"):
        BRMERewardTrainer(
            model=tiny_brme(smol_tokenizer, head_type="lora"),
            args=config(tmp_path / "lora"),
            train_dataset=Dataset.from_list(preference_rows(16)),
            processing_class=smol_tokenizer,
            peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8),
        )


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("head_type", "ensemble", "BRMERewardConfig.head_type must be one of linear, mlp, lora"),
        ("prior_scale", -0.5, "BRMERewardConfig.prior_scale must be a finite number >= 0"),
        ("member_layers", 0, "BRMERewardConfig.member_layers must be >= 1, got 0."),
    ],
)
def test_member_settings_are_checked_when_the_config_is_made(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **{field: value})
