"""Metrics of preference predictions shared by the reward trainer, evaluation and the RL harness: the pair
probability of Gaussian rewards, reliability bins and the expected calibration error computed from them, and AUROC."""

import math

import torch

PROBIT_SCALE = math.pi / 8.0  # E[sigmoid(z)] ~ sigmoid(m / sqrt(1 + pi/8 * v)) for z ~ N(m, v) (MacKay 1992)


def pair_probability(diff: torch.Tensor, var: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """P(chosen > rejected) under each head, `sigmoid(diff / (T * sqrt(1 + pi/8 * var)))`: E[sigmoid(z)] for
    z ~ N(diff, var) in closed (probit) form (MacKay 1992), its logit divided by the temperature T (temperature
    scaling, Guo et al. 2017). T < 1 sharpens, T > 1 softens; with `var = 0` and `T = 1` it is the Bradley-Terry
    `sigmoid(diff)`. (T scales the final logit, not the sampled gap: a temperature inside the expectation,
    `sigmoid(diff / sqrt(T^2 + pi/8 * var))`, cannot sharpen past the flattening of large predicted stds, and on
    MiniLM BRMEs trained for one epoch it ran into its bound; see docs/results.md.)"""
    return torch.sigmoid(diff / (temperature * torch.sqrt(1.0 + PROBIT_SCALE * var)))


def pair_nll(diff: torch.Tensor, var: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of "chosen beats rejected" of the ensemble's [`pair_probability`] averaged over
    the K heads; `diff` and `var` are `[N, K]`."""
    prob = pair_probability(diff.double(), var.double(), temperature).mean(-1)
    return -torch.log(prob.clamp_min(1e-300)).mean().item()


def fit_temperature(
    diff: torch.Tensor, var: torch.Tensor, low: float = 0.01, high: float = 20.0, grid: int = 41, iters: int = 40
) -> float:
    """
    The temperature T in [`low`, `high`] that minimises [`pair_nll`] of N pairs (`diff`, `var`: `[N, K]`):
    a grid of `grid` points even in log T, then golden-section search on log T in the two grid cells around the
    best point. Deterministic. Returns 1.0 for no pairs.
    """
    if not 0.0 < low < 1.0 < high:
        raise ValueError(f"fit_temperature needs 0 < low < 1 < high, got low={low!r}, high={high!r}.")
    if diff.numel() == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return pair_nll(diff, var, math.exp(log_t))

    points = torch.linspace(math.log(low), math.log(high), grid).tolist()
    best = min(range(grid), key=lambda i: nll(points[i]))
    a, b = points[max(best - 1, 0)], points[min(best + 1, grid - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(iters):  # the NLL is unimodal in log T within one grid cell either side of the best point
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    candidates = [points[best], (a + b) / 2.0]
    return math.exp(min(candidates, key=nll))


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


def change_beyond_noise(values: list[float], window: int = 3) -> dict[str, float | bool]:
    """
    Did a logged quantity move, or only wobble? The mean of its last `window` values against the mean of its first
    `window`: `change = last - first`, with the standard error of that difference from the spread of the values inside
    the two windows, `se = sqrt(var_first / n_first + var_last / n_last)` (sample variances). `beyond_noise` is
    `|change| > 2 se`. With fewer than `2 * window` values the windows shrink to half the values each.
    """
    n = min(window, len(values) // 2)
    if n < 2:
        raise ValueError(f"change_beyond_noise needs at least 4 values, got {len(values)}.")
    first, last = torch.tensor(values[:n], dtype=torch.float64), torch.tensor(values[-n:], dtype=torch.float64)
    change = (last.mean() - first.mean()).item()
    se = math.sqrt(first.var().item() / n + last.var().item() / n)
    return {"first": first.mean().item(), "last": last.mean().item(), "change": change, "se": se,
            "window": n, "beyond_noise": abs(change) > 2 * se}  # fmt: skip
