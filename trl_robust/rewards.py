"""Aggregations of a BRME's K Gaussian heads into one reward per sample.

Every function takes `means` (and where needed `stds`) of shape `[batch, K]` (head k's `mu_k`, `sigma_k`) and returns
`[batch]`. [`aggregate`] dispatches on a name, as the RL trainers' `reward_aggregation` setting does.

| name      | reward                                           | source                                       |
|-----------|--------------------------------------------------|----------------------------------------------|
| `nominal` | `mu_{argmin_k sigma_k}`                          | arXiv 2409.15360                             |
| `worst`   | `min_k mu_k`                                     | arXiv 2409.15360; WCO in Coste et al. 2023   |
| `robust`  | `lambda * nominal + (1 - lambda) * worst`        | arXiv 2409.15360                             |
| `mean`    | `(1/K) sum_k mu_k`                               | Coste et al. 2023                            |
| `uwo`     | `mean - c * (1/K) sum_k (mu_k - mean)^2`         | UWO in Coste et al. 2023 (arXiv 2310.02743)  |
| `kl_dro`  | `-beta * log (1/K) sum_k exp(-mu_k / beta)`      | arXiv 2606.09073                             |
"""

import math

import torch

AGGREGATIONS = ("nominal", "worst", "robust", "mean", "uwo", "kl_dro")


def check_heads(means: torch.Tensor, stds: torch.Tensor | None = None) -> None:
    """Raise a `ValueError` unless `means` (and `stds`, when given) are `[batch, K]` tensors of one shape, K >= 1."""
    if not isinstance(means, torch.Tensor) or means.dim() != 2 or means.shape[-1] < 1:
        shape = tuple(means.shape) if isinstance(means, torch.Tensor) else type(means).__name__
        raise ValueError(f"means must be a [batch, K] tensor with K >= 1 heads, got {shape}.")
    if stds is not None and (not isinstance(stds, torch.Tensor) or stds.shape != means.shape):
        shape = tuple(stds.shape) if isinstance(stds, torch.Tensor) else type(stds).__name__
        raise ValueError(f"stds must have the shape of means {tuple(means.shape)}, got {shape}.")


def check_params(robust_lambda: float = 0.4, c: float = 0.0, beta: float = 1.0) -> None:
    """Raise a `ValueError` naming the parameter when an aggregation parameter is out of range."""
    if not 0.0 <= robust_lambda <= 1.0:
        raise ValueError(f"robust_lambda must be in [0, 1], got {robust_lambda!r}.")
    if not (math.isfinite(c) and c >= 0.0):
        raise ValueError(f"The UWO coefficient c must be a finite number >= 0, got {c!r}.")
    if not (math.isfinite(beta) and beta > 0.0):
        raise ValueError(f"The KL-DRO temperature beta must be a finite number > 0, got {beta!r}.")


def nominal(means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Mean of the most confident head (smallest std) for each sample, `mu_{argmin_k sigma_k}` (arXiv 2409.15360).
    Ties go to the lowest head index."""
    check_heads(means, stds)
    most_confident = stds.argmin(dim=-1, keepdim=True)
    return means.gather(-1, most_confident).squeeze(-1)


def worst(means: torch.Tensor) -> torch.Tensor:
    """Worst case over the heads, `min_k mu_k`, for each sample (arXiv 2409.15360; WCO in Coste et al. 2023)."""
    check_heads(means)
    return means.min(dim=-1).values


def robust(means: torch.Tensor, stds: torch.Tensor, robust_lambda: float = 0.4) -> torch.Tensor:
    """`robust_lambda * nominal + (1 - robust_lambda) * worst` (arXiv 2409.15360); lambda weighs the nominal term, so
    1 is standard RLHF on the most confident head and 0 is pure worst case."""
    check_params(robust_lambda=robust_lambda)
    low = worst(means)
    # worst + lambda * (nominal - worst): the same mix, exactly `worst` wherever the two terms agree (e.g. K = 1)
    return low + robust_lambda * (nominal(means, stds) - low)


def mean(means: torch.Tensor) -> torch.Tensor:
    """Ensemble mean `(1/K) sum_k mu_k` (mean optimisation in Coste et al. 2023)."""
    check_heads(means)
    return means.mean(dim=-1)


def uwo(means: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """
    Uncertainty-weighted optimisation, `mean_k mu_k - c * Var_k mu_k` (Coste et al. 2023, arXiv 2310.02743): the
    ensemble mean penalised by the heads' disagreement. The variance is the population one (divide by K), so a single
    head has none; the heads' own stds do not enter, as in the paper's ensemble of point estimates.
    """
    check_heads(means)
    check_params(c=c)
    return means.mean(dim=-1) - c * means.var(dim=-1, unbiased=False)


def kl_dro(means: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """
    KL-DRO effective reward `-beta * log (1/K) sum_k exp(-mu_k / beta)` (arXiv 2606.09073, pessimistic branch, with
    the heads' means as the reward distribution). `min_k mu_k <= kl_dro <= mean_k mu_k`; it tends to the minimum as
    beta -> 0 and to the mean as beta -> inf.

    Computed as a logsumexp shifted by the minimum, `min - beta * log1p((1/K) sum_k expm1(-(mu_k - min) / beta))`: the
    shift keeps the exponentials in [0, 1] for any beta, and log1p/expm1 keep the small differences that a large beta
    leaves (a plain float32 logsumexp loses them to cancellation against log K), on every device and dtype.
    """
    check_heads(means)
    check_params(beta=beta)
    values = means if means.dtype in (torch.float32, torch.float64) else means.float()
    low = values.min(dim=-1, keepdim=True).values
    shifted = torch.expm1(-(values - low) / beta).mean(dim=-1)
    return (low.squeeze(-1) - beta * torch.log1p(shifted)).to(means.dtype)


def aggregate(name: str, means: torch.Tensor, stds: torch.Tensor | None = None, **params: float) -> torch.Tensor:
    """
    The reward `name` (one of `AGGREGATIONS`) of every sample, shape `[batch]`. Parameters by name: `robust`
    takes `robust_lambda`, `uwo` takes `c`, `kl_dro` takes `beta`; the others take none. `stds` is needed by
    `nominal` and `robust` only.

    Example: `aggregate("kl_dro", out.means, out.stds, beta=0.5)` on a [`BRMERewardModel`] output.
    """
    accepted = {"robust": {"robust_lambda"}, "uwo": {"c"}, "kl_dro": {"beta"}}
    if name not in AGGREGATIONS:
        raise ValueError(f"Unknown reward aggregation {name!r}; allowed: {', '.join(AGGREGATIONS)}.")
    unknown = set(params) - accepted.get(name, set())
    if unknown:
        allowed = ", ".join(sorted(accepted.get(name, set()))) or "none"
        raise ValueError(f"Aggregation {name!r} got unexpected parameters {sorted(unknown)}; it accepts: {allowed}.")
    check_heads(means, stds)
    if name in ("nominal", "robust") and stds is None:
        raise ValueError(f"Aggregation {name!r} needs the heads' stds.")
    if name == "nominal":
        return nominal(means, stds)
    if name == "worst":
        return worst(means)
    if name == "robust":
        return robust(means, stds, **params)
    if name == "mean":
        return mean(means)
    if name == "uwo":
        return uwo(means, **params)
    return kl_dro(means, **params)
