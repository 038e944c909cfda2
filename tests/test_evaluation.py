import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForSequenceClassification

from tests.conftest import preference_rows, tiny_text_config
from trl_robust import BRMEConfig, BRMERewardModel, cli
from trl_robust.evaluation import evaluate_reward_model, preference_metrics
from trl_robust.metrics import auroc, expected_calibration_error, fit_temperature, pair_probability, reliability_bins


def test_auroc_by_hand():
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 (positive, negative) pairs are ordered right
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1, 0])) == pytest.approx(0.5)  # a tie counts half
    assert math.isnan(auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])))


def test_preference_metrics_by_hand():
    # 3 pairs, 2 heads. Gaps: head 0 = [1, -1, 2], head 1 = [0.5, 0.5, -1].
    means_c = torch.tensor([[1.0, 0.5], [-1.0, 0.5], [2.0, -1.0]])
    means_r = torch.zeros(3, 2)
    stds_c = torch.tensor([[0.1, 1.0], [1.0, 0.1], [0.1, 1.0]])  # most confident: head 0, head 1, head 0
    stds_r = torch.tensor([[0.1, 1.0], [1.0, 0.1], [0.1, 1.0]])
    m = preference_metrics(means_c, means_r, stds_c, stds_r, robust_lambda=0.5)
    assert m["accuracy_head_0"] == pytest.approx(2 / 3) and m["accuracy_head_1"] == pytest.approx(2 / 3)
    assert m["accuracy_nominal"] == pytest.approx(1.0)  # gaps of the confident heads: 1, 0.5, 2
    assert m["accuracy_worst"] == pytest.approx(1 / 3)  # worst of chosen: 0.5, 0, -1 against 0
    assert m["accuracy_mean"] == pytest.approx(2 / 3)  # mean gaps 0.75, -0.25, 0.5
    # robust = 0.5 nominal + 0.5 worst of chosen: 0.75, -0.25, 0.5 against the rejected side's 0: pair 1 is wrong
    assert m["accuracy_robust"] == pytest.approx(2 / 3)
    var = stds_c**2 + stds_r**2
    prob = torch.sigmoid((means_c - means_r) / torch.sqrt(1 + math.pi / 8 * var)).mean(-1).double()
    assert m["brier"] == pytest.approx(((1 - prob) ** 2).mean().item())
    assert m["head_disagreement"] == pytest.approx(torch.cat([means_c, means_r]).std(-1, unbiased=False).mean().item())
    assert m["auroc_std_flags_errors"] == pytest.approx(0.5)  # every pair has the same predicted std: a tie
    # disagreement on the gap: 0.25, 0.75 (the wrong pair), 1.5: above one right pair, below the other
    assert m["auroc_epistemic_flags_errors"] == pytest.approx(0.5)
    # aleatoric (mean std of both answers): 0.55, 0.55 (wrong), 0.55: all tied
    assert m["auroc_aleatoric_flags_errors"] == pytest.approx(0.5)
    # |robust margin|: 0.75, 0.25 (the wrong pair), 0.5: the wrong pair has the smallest, a perfect flag
    assert m["auroc_margin_flags_errors"] == pytest.approx(1.0)
    assert m["ece"] == m["calibrated_ece"] and m["calibration_temperature"] == 1.0
    hot = preference_metrics(means_c, means_r, stds_c, stds_r, robust_lambda=0.5, temperature=3.0)
    expected = torch.sigmoid((means_c - means_r) / (3.0 * torch.sqrt(1 + math.pi / 8 * var))).mean(-1)
    assert hot["calibrated_ece"] == pytest.approx(expected_calibration_error(expected))
    assert hot["ece"] == m["ece"] and hot["calibration_temperature"] == 3.0
    skewed = stds_c.clone()
    skewed[1] = 5.0  # the wrong pair now has the largest aleatoric uncertainty
    assert preference_metrics(means_c, means_r, skewed, stds_r, 0.5)["auroc_aleatoric_flags_errors"] == 1.0

    plain = preference_metrics(torch.tensor([[2.0], [-1.0]]), torch.zeros(2, 1))
    assert plain["accuracy_head_0"] == plain["accuracy_robust"] == pytest.approx(0.5)
    expected_brier = ((1 - torch.sigmoid(torch.tensor([2.0, -1.0]))) ** 2).mean().item()
    assert plain["brier"] == pytest.approx(expected_brier)
    assert "auroc_std_flags_errors" not in plain and "head_disagreement" not in plain
    assert "auroc_margin_flags_errors" in plain and "auroc_epistemic_flags_errors" not in plain


def test_reliability_bins_by_hand():
    bins = reliability_bins(torch.tensor([0.95, 0.05, 0.55]), num_bins=5)
    assert [b["count"] for b in bins] == [1, 0, 0, 0, 2]
    assert bins[4]["accuracy"] == pytest.approx(0.5) and bins[4]["confidence"] == pytest.approx(0.95)


def test_evaluate_a_brme_and_a_plain_reward_model(tmp_path, smol_tokenizer):
    long = {"chosen": "a very long answer " * 10, "rejected": "short"}
    data = Dataset.from_list(preference_rows(11) + [long])
    torch.manual_seed(0)
    brme = BRMERewardModel(BRMEConfig(text_config=tiny_text_config("llama", len(smol_tokenizer)), num_heads=3))
    metrics = evaluate_reward_model(brme, smol_tokenizer, data, batch_size=5, output_dir=tmp_path / "brme")
    assert metrics["pairs"] == 12 and metrics["robust_lambda"] == 0.4
    expected = {"accuracy_head_2", "ece", "calibrated_ece", "brier", "auroc_std_flags_errors"}
    expected |= {"auroc_epistemic_flags_errors", "auroc_aleatoric_flags_errors", "auroc_margin_flags_errors"}
    assert expected <= set(metrics)
    assert not any(k.startswith("exploit_") for k in metrics)  # no prompts to build exploits from: left out
    assert json.loads((tmp_path / "brme" / "metrics.json").read_text())["brier"] == metrics["brier"]
    assert "| accuracy_robust |" in (tmp_path / "brme" / "metrics.md").read_text()
    assert (tmp_path / "brme" / "reliability.png").stat().st_size > 5_000

    cfg = tiny_text_config("llama", len(smol_tokenizer))
    cfg.num_labels, cfg.pad_token_id = 1, smol_tokenizer.pad_token_id
    plain = evaluate_reward_model(LlamaForSequenceClassification(cfg), smol_tokenizer, data, max_length=30)
    assert plain["num_heads"] == 1 and "mean_std" not in plain
    assert plain["pairs"] == 11 and plain["dropped_over_max_length"] == 1
    with pytest.raises(ValueError, match="'chosen'"):
        evaluate_reward_model(brme, smol_tokenizer, Dataset.from_list([{"text": "x", "rejected": "y"}]))


def test_evaluate_subcommand(tmp_path, smol_tokenizer):
    torch.manual_seed(0)
    brme = BRMERewardModel(BRMEConfig(text_config=tiny_text_config("llama", len(smol_tokenizer)), num_heads=2))
    brme.save_pretrained(tmp_path / "brme")
    smol_tokenizer.save_pretrained(tmp_path / "brme")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in preference_rows(6)))
    argv = [
        "evaluate",
        "--model_name_or_path",
        str(tmp_path / "brme"),
        "--dataset_name",
        str(pairs),
        "--dataset_test_split",
        "train",
        "--output_dir",
        str(tmp_path / "report"),
        "--exploits",
        "false",
        "--temperature",
        "2.0",
    ]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["pairs"] == 6 and "auroc_epistemic_flags_errors" in report
    assert report["calibration_temperature"] == 2.0 and not any(k.startswith("exploit_") for k in report)


def test_fit_temperature_repairs_an_overconfident_model():
    torch.manual_seed(0)
    true_gap = torch.randn(2000, 1) * 1.5
    won = torch.rand(2000, 1) < torch.sigmoid(true_gap)
    gap = torch.where(won, true_gap, -true_gap)  # the chosen side is the winner: flip the pairs it lost
    overconfident = 5.0 * gap  # logits scaled by 5
    var = torch.zeros_like(gap)
    before = expected_calibration_error(pair_probability(overconfident, var).mean(-1))
    temperature = fit_temperature(overconfident, var)
    after = expected_calibration_error(pair_probability(overconfident, var, temperature).mean(-1))
    assert temperature == pytest.approx(5.0, rel=0.15)
    assert after < 0.3 * before
    assert fit_temperature(overconfident, var) == temperature  # deterministic
    # The temperature divides the probit logit: sigmoid(2 / (0.5 * sqrt(1 + pi/8 * 4))) by hand.
    torch.testing.assert_close(
        pair_probability(torch.tensor([2.0]), torch.tensor([4.0]), 0.5),
        torch.sigmoid(torch.tensor([2.0 / (0.5 * math.sqrt(1.0 + math.pi / 8 * 4.0))])),
    )
    # ... so it sharpens an underconfident BRME that large stds flatten (a temperature inside the expectation could
    # not: sqrt(T^2 + pi/8 * var) never falls below sqrt(pi/8 * var))
    flat_var = torch.full_like(gap, 2.0)
    underconfident = 0.2 * gap * math.sqrt(1.0 + math.pi / 8 * 2.0)
    t = fit_temperature(underconfident, flat_var)
    assert t == pytest.approx(0.2, rel=0.15)
    assert expected_calibration_error(pair_probability(underconfident, flat_var, t).mean(-1)) < 0.3 * (
        expected_calibration_error(pair_probability(underconfident, flat_var).mean(-1))
    )
    with pytest.raises(ValueError, match="low"):
        fit_temperature(gap, var, low=2.0)


def test_change_beyond_noise_by_hand():
    from trl_robust.metrics import change_beyond_noise

    # first window 1, 2, 3 (mean 2, var 1), last window 5, 6, 7 (mean 6, var 1): se = sqrt(1/3 + 1/3) = 0.816
    moved = change_beyond_noise([1.0, 2.0, 3.0, 9.0, 5.0, 6.0, 7.0], window=3)
    assert moved["change"] == pytest.approx(4.0) and moved["se"] == pytest.approx(math.sqrt(2 / 3))
    assert moved["beyond_noise"] is True
    # the same change with wide windows is noise: 0, 4 (mean 2, var 8) and 2, 10 (mean 6, var 32): se = sqrt(20)
    wobble = change_beyond_noise([0.0, 4.0, 2.0, 10.0], window=3)
    assert wobble["window"] == 2 and wobble["change"] == pytest.approx(4.0)
    assert wobble["se"] == pytest.approx(math.sqrt(20.0)) and wobble["beyond_noise"] is False
    with pytest.raises(ValueError, match="at least 4 values"):
        change_beyond_noise([1.0, 2.0, 3.0])
