"""Defaults shared by the package's trainer configs."""

import math
from dataclasses import dataclass, field

import torch

from .rewards import AGGREGATIONS


def resolve_bf16(bf16: bool | None, fp16: bool, use_cpu: bool = False) -> bool:
    """TRL turns bf16 on whenever it is unset, which fails on machines without bf16 support; we turn it on only
    where it runs (a bf16-capable GPU), so one config serves a laptop CPU and a GPU node alike. An explicit value
    always wins."""
    if bf16 is not None:
        return bf16
    if fp16 or use_cpu:
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def check_reward_aggregation(config) -> None:
    """Raise a `ValueError` naming the field when a robust RL config's reward aggregation setting is out of range."""
    name = type(config).__name__
    if config.reward_aggregation not in AGGREGATIONS:
        raise ValueError(
            f"{name}.reward_aggregation must be one of {', '.join(AGGREGATIONS)}; got {config.reward_aggregation!r}."
        )
    if not 0.0 <= config.robust_lambda <= 1.0:
        raise ValueError(f"{name}.robust_lambda must be in [0, 1], got {config.robust_lambda!r}.")
    if not (math.isfinite(config.uwo_coef) and config.uwo_coef >= 0.0):
        raise ValueError(f"{name}.uwo_coef must be a finite number >= 0, got {config.uwo_coef!r}.")
    if not (math.isfinite(config.kl_dro_beta) and config.kl_dro_beta > 0.0):
        raise ValueError(f"{name}.kl_dro_beta must be a finite number > 0, got {config.kl_dro_beta!r}.")


def aggregation_params(config) -> dict[str, float]:
    """The `trl_robust.rewards.aggregate` parameters of a robust RL config's `reward_aggregation`."""
    return {
        "robust": {"robust_lambda": config.robust_lambda},
        "uwo": {"c": config.uwo_coef},
        "kl_dro": {"beta": config.kl_dro_beta},
    }.get(config.reward_aggregation, {})


@dataclass
class RobustRewardFields:
    """
    The fields of the robust RL configs (PPO, GRPO, RLOO) that say how a BRME's K heads become one reward:

    - `reward_aggregation` (`"robust"`): one of `"robust"`, `"nominal"`, `"worst"`, `"mean"`, `"uwo"`, `"kl_dro"`
      (see `trl_robust.rewards`);
    - `robust_lambda` (0.4): weight of the nominal reward in `lambda * nominal + (1 - lambda) * worst`;
    - `uwo_coef` (1.0): variance penalty c of `uwo = mean - c * Var_k mu_k` (Coste et al. 2023);
    - `kl_dro_beta` (1.0): temperature of `kl_dro = -beta * log mean_k exp(-mu_k / beta)` (arXiv 2606.09073).
    """

    reward_aggregation: str = field(
        default="robust",
        metadata={
            "help": "How the BRME's K Gaussian heads become one reward. 'robust': lambda * nominal + (1 - lambda) * "
            "worst; 'nominal': mean of the most confident head; 'worst': min over head means; 'mean': ensemble mean; "
            "'uwo': mean - c * variance of the head means; 'kl_dro': -beta * log mean_k exp(-mu_k / beta).",
            "choices": list(AGGREGATIONS),
        },
    )
    robust_lambda: float = field(
        default=0.4,
        metadata={
            "help": "Weight of the nominal reward in the robust reward lambda * nominal + (1 - lambda) * worst, in "
            "[0, 1]: 1 is standard RLHF on the most confident head, 0 is pure worst case."
        },
    )
    uwo_coef: float = field(
        default=1.0,
        metadata={"help": "Variance penalty c >= 0 of the 'uwo' aggregation, mean - c * variance of the head means."},
    )
    kl_dro_beta: float = field(
        default=1.0,
        metadata={
            "help": "Temperature beta > 0 of the 'kl_dro' aggregation, -beta * log mean_k exp(-mu_k / beta): it "
            "tends to the worst head as beta -> 0 and to the ensemble mean as beta -> inf."
        },
    )
