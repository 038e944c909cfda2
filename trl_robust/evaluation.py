"""Reward-model evaluation on preference pairs: accuracy of every head and aggregation, calibration, and how well the
predicted uncertainty flags the pairs the model gets wrong. Works for a BRME and for a plain TRL reward model (one
head, no std), so the two can be compared on the same data."""

import json
import math
from pathlib import Path

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import aggregation as agg
from .metrics import auroc, expected_calibration_error, pair_probability, reliability_bins
from .modeling_brme import BRMERewardModel
from .plotting import plot_reliability
from .scoring import reward_model_outputs
from .tokenization import padding_id, tokenize_for_reward


def preference_metrics(
    means_c: torch.Tensor,
    means_r: torch.Tensor,
    stds_c: torch.Tensor | None = None,
    stds_r: torch.Tensor | None = None,
    robust_lambda: float = 0.4,
    num_bins: int = 10,
) -> dict[str, float]:
    """
    Metrics of N pairs from the heads' means (and stds) of the chosen and rejected sides, each `[N, K]`:
    accuracy of each head and of nominal / worst / robust / mean, ECE and Brier score of the predicted
    P(chosen > rejected), and the AUROC with which the uncertainty (predicted std of the robust reward's gap, and the
    heads' disagreement on the gap) flags the pairs the robust reward ranks wrong. A plain reward model is K = 1 with
    no stds: its probability is sigmoid(gap) and it has no uncertainty metrics.
    """
    has_std = stds_c is not None
    if not has_std:
        stds_c = stds_r = torch.zeros_like(means_c)
    gap = means_c - means_r  # [N, K]
    robust_c = agg.robust(means_c, stds_c, robust_lambda)
    robust_r = agg.robust(means_r, stds_r, robust_lambda)
    wrong = robust_c <= robust_r
    out: dict[str, float] = {"pairs": float(len(gap)), "num_heads": float(gap.shape[1])}
    for k in range(gap.shape[1]):
        out[f"accuracy_head_{k}"] = (gap[:, k] > 0).double().mean().item()
    out["accuracy_robust"] = (~wrong).double().mean().item()
    out["accuracy_nominal"] = (agg.nominal(means_c, stds_c) > agg.nominal(means_r, stds_r)).double().mean().item()
    out["accuracy_worst"] = (agg.worst(means_c) > agg.worst(means_r)).double().mean().item()
    out["accuracy_mean"] = (agg.mean(means_c) > agg.mean(means_r)).double().mean().item()
    prob = pair_probability(gap, stds_c.pow(2) + stds_r.pow(2)).mean(-1)  # the ensemble's Bayesian model average
    out["ece"] = expected_calibration_error(prob, num_bins)
    out["brier"] = (1.0 - prob.double()).pow(2).mean().item()  # the chosen side is the true winner of every pair
    if has_std:
        out["mean_std"] = torch.cat([stds_c, stds_r]).mean().item()
        out["auroc_std_flags_errors"] = auroc((stds_c.pow(2) + stds_r.pow(2)).mean(-1).sqrt(), wrong)
    if gap.shape[1] > 1:
        out["head_disagreement"] = torch.cat([means_c, means_r]).std(-1, unbiased=False).mean().item()
        out["auroc_disagreement_flags_errors"] = auroc(gap.std(-1, unbiased=False), wrong)
    return out


def evaluate_reward_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    batch_size: int = 16,
    max_length: int | None = None,
    robust_lambda: float | None = None,
    num_bins: int = 10,
    output_dir: str | Path | None = None,
) -> dict:
    """
    Evaluate a BRME (or a plain reward model) on preference pairs (`chosen` / `rejected`, optional `prompt`; text or
    conversational), tokenised as `BRMERewardTrainer` trains. Pairs longer than `max_length` tokens are dropped and
    counted. `robust_lambda` defaults to the BRME's own. With `output_dir`, writes `metrics.json`, `metrics.md` and
    `reliability.png` there. Returns the metrics, with the reliability bins under `"reliability"`.
    """
    missing = {"chosen", "rejected"} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"The evaluation dataset needs columns {sorted(missing)}; it has {sorted(dataset.column_names)}."
        )
    model.eval()
    if robust_lambda is None:
        robust_lambda = model.config.robust_lambda if isinstance(model, BRMERewardModel) else 1.0
    chosen, rejected = [], []
    for row in dataset:
        prompt = row.get("prompt")
        chosen.append(tokenize_for_reward(tokenizer, row["chosen"], prompt))
        rejected.append(tokenize_for_reward(tokenizer, row["rejected"], prompt))
    keep = [i for i in range(len(chosen)) if max_length is None or max(len(chosen[i]), len(rejected[i])) <= max_length]
    if not keep:
        raise ValueError(f"Every pair is longer than max_length={max_length} tokens.")
    sequences = [chosen[i] for i in keep] + [rejected[i] for i in keep]
    means, stds = reward_model_outputs(model, sequences, padding_id(tokenizer), batch_size, progress="Scoring")
    means, stds = means.cpu(), None if stds is None else stds.cpu()
    n = len(keep)
    metrics = preference_metrics(
        means[:n],
        means[n:],
        None if stds is None else stds[:n],
        None if stds is None else stds[n:],
        robust_lambda,
        num_bins,
    )
    metrics["dropped_over_max_length"] = float(len(chosen) - n)
    metrics["robust_lambda"] = robust_lambda
    gap = means[:n] - means[n:]
    var = torch.zeros_like(gap) if stds is None else stds[:n].pow(2) + stds[n:].pow(2)
    metrics["reliability"] = reliability_bins(pair_probability(gap, var).mean(-1), num_bins)
    if output_dir is not None:
        write_report(metrics, output_dir)
    return metrics


def write_report(metrics: dict, output_dir: str | Path) -> Path:
    """`metrics.json`, a Markdown table `metrics.md` and the reliability diagram `reliability.png`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    lines = ["| metric | value |", "| --- | ---: |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, float) and not math.isnan(v)]
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    plot_reliability(metrics["reliability"], metrics["ece"], out / "reliability.png")
    return out
