"""Metrics of preference predictions shared by the reward trainer, evaluation and the RL harness: the pair
probability of Gaussian rewards, reliability bins and the expected calibration error computed from them, and AUROC."""

import math

import torch

PROBIT_SCALE = math.pi / 8.0  # E[sigmoid(z)] ~ sigmoid(m / sqrt(1 + pi/8 * v)) for z ~ N(m, v) (MacKay 1992)


def pair_probability(diff: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """P(chosen > rejected) under each head: E[sigmoid(z)], z ~ N(diff, var), in closed (probit) form,
    `sigmoid(diff / sqrt(1 + pi/8 * var))` (MacKay 1992). With `var = 0` it is the Bradley-Terry `sigmoid(diff)`."""
    return torch.sigmoid(diff / torch.sqrt(1.0 + PROBIT_SCALE * var))


def reliability_bins(prob_chosen: torch.Tensor, num_bins: int = 10) -> list[dict]:
    """
    Per equal-width confidence bin on [0.5, 1]: `low`, `high`, `count`, mean `confidence` and `accuracy` (NaN when
    empty). Each pair's predicted label is the likelier side, its confidence `max(p, 1 - p)`, and it is correct when
    `p > 0.5` (the chosen side is the true winner of every pair).
    """
    p = prob_chosen.detach().double().flatten()
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


def expected_calibration_error(prob_chosen: torch.Tensor, num_bins: int = 10) -> float:
    """ECE of binary preference predictions over the [`reliability_bins`]:
    `sum_b (n_b / N) * |accuracy_b - confidence_b|`; NaN for no pairs."""
    bins = reliability_bins(prob_chosen, num_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return float("nan")
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])


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
