"""Aggregations of a BRME's K Gaussian heads into one reward per sample.

Every function takes `means` (and where needed `stds`) of shape `[batch, K]` and returns `[batch]`.
"""

import torch


def nominal(means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Mean of the most confident head (smallest std) for each sample (arXiv 2409.15360)."""
    most_confident = stds.argmin(dim=-1, keepdim=True)
    return means.gather(-1, most_confident).squeeze(-1)


def worst(means: torch.Tensor) -> torch.Tensor:
    """Worst case over the heads, `min_k mu_k`, for each sample (arXiv 2409.15360; WCO in Coste et al. 2023)."""
    return means.min(dim=-1).values


def robust(means: torch.Tensor, stds: torch.Tensor, robust_lambda: float = 0.4) -> torch.Tensor:
    """`robust_lambda * nominal + (1 - robust_lambda) * worst` (arXiv 2409.15360); lambda weighs the nominal term."""
    return robust_lambda * nominal(means, stds) + (1.0 - robust_lambda) * worst(means)
