"""Reward-model evaluation on preference pairs: accuracy of every head and aggregation, calibration, and how well the
predicted uncertainty flags the pairs the model gets wrong. Works for a BRME and for a plain TRL reward model (one
head, no std), so the two can be compared on the same data."""

import json
import math
from pathlib import Path

import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from . import rewards
from .brme_reward_trainer import expected_calibration_error, pair_probability
from .modeling_brme import BRMERewardModel
from .plotting import plot_reliability
from .tokenization import tokenize_for_reward


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for the boolean `positives` (Mann-Whitney U with ties counted half);
    NaN when one class is empty."""
    scores, positives = scores.double().flatten(), positives.bool().flatten()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique():  # average ranks of tied scores
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return ((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def reliability_bins(prob_chosen: torch.Tensor, num_bins: int = 10) -> list[dict]:
    """Per confidence bin on [0.5, 1]: pairs, mean confidence, accuracy (the predicted side is the likelier one)."""
    p = prob_chosen.double().flatten()
    confidence = torch.maximum(p, 1.0 - p)
    correct = (p > 0.5).double()
    index = ((confidence - 0.5) * 2.0 * num_bins).long().clamp(0, num_bins - 1)
    bins = []
    for b in range(num_bins):
        members = index == b
        n = int(members.sum())
        bins.append(
            {
                "low": 0.5 + b / (2 * num_bins),
                "high": 0.5 + (b + 1) / (2 * num_bins),
                "count": n,
                "confidence": confidence[members].mean().item() if n else float("nan"),
                "accuracy": correct[members].mean().item() if n else float("nan"),
            }
        )
    return bins


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
    robust_c = rewards.robust(means_c, stds_c, robust_lambda)
    robust_r = rewards.robust(means_r, stds_r, robust_lambda)
    wrong = robust_c <= robust_r
    out: dict[str, float] = {"pairs": float(len(gap)), "num_heads": float(gap.shape[1])}
    for k in range(gap.shape[1]):
        out[f"accuracy_head_{k}"] = (gap[:, k] > 0).double().mean().item()
    out["accuracy_robust"] = (~wrong).double().mean().item()
    out["accuracy_nominal"] = (
        (rewards.nominal(means_c, stds_c) > rewards.nominal(means_r, stds_r)).double().mean().item()
    )
    out["accuracy_worst"] = (rewards.worst(means_c) > rewards.worst(means_r)).double().mean().item()
    out["accuracy_mean"] = (rewards.mean(means_c) > rewards.mean(means_r)).double().mean().item()
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


@torch.no_grad()
def score_sequences(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sequences: list[list[int]], batch_size: int):
    """Means `[N, K]` and stds (`None` for a plain reward model) of tokenised sequences, right-padded in batches."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    means, stds = [], []
    for start in tqdm(range(0, len(sequences), batch_size), desc="Scoring", unit="batch", leave=False):
        chunk = sequences[start : start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, seq in enumerate(chunk):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
        if hasattr(out, "means") and out.means is not None:
            means.append(out.means.float().cpu())
            stds.append(out.stds.float().cpu())
        else:
            means.append(out.logits[:, :1].float().cpu())
    return torch.cat(means), (torch.cat(stds) if stds else None)


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
    means, stds = score_sequences(model, tokenizer, [chosen[i] for i in keep] + [rejected[i] for i in keep], batch_size)
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
