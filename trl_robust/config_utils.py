"""Defaults shared by the package's trainer configs."""

from dataclasses import dataclass, field

import torch

from .aggregation import AGGREGATIONS, PARAMETER_RANGES, Aggregation
from .recipe_checks import check_field_ranges, ranged


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
    """Raise a `ValueError` naming the field when a robust RL config's aggregation setting is out of range (the check
    itself is [`Aggregation.validate`]'s)."""
    Aggregation.from_config(config)


@dataclass
class RobustRewardFields:
    """
    The fields of the robust RL configs (PPO, GRPO, RLOO) that say how a BRME's K heads become one reward:

    - `reward_aggregation` (`"robust"`): one of `"robust"`, `"nominal"`, `"worst"`, `"mean"`, `"uwo"`, `"kl_dro"`
      (see `trl_robust.aggregation`);
    - `robust_lambda` (None: the BRME's own, the lambda its logits use): weight of the nominal reward in
      `lambda * nominal + (1 - lambda) * worst`;
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
    robust_lambda: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the nominal reward in the robust reward lambda * nominal + (1 - lambda) * worst, in "
            "[0, 1]: 1 is standard RLHF on the most confident head, 0 is pure worst case. Unset (None): the BRME's "
            "own robust_lambda (the one its logits use, 0.4 by default); a value given here wins and is logged.",
            **ranged(PARAMETER_RANGES["robust_lambda"]),
        },
    )
    uwo_coef: float = field(
        default=1.0,
        metadata={
            "help": "Variance penalty c >= 0 of the 'uwo' aggregation, mean - c * variance of the head means.",
            **ranged(PARAMETER_RANGES["uwo_coef"]),
        },
    )
    kl_dro_beta: float = field(
        default=1.0,
        metadata={
            "help": "Temperature beta > 0 of the 'kl_dro' aggregation, -beta * log mean_k exp(-mu_k / beta): it "
            "tends to the worst head as beta -> 0 and to the ensemble mean as beta -> inf.",
            **ranged(PARAMETER_RANGES["kl_dro_beta"]),
        },
    )

    def __post_init__(self):
        # The three robust RL configs' shared start: our bf16 default, the base config's own checks, then ours: the
        # ranges of every field with a `metadata["range"]` (the subclass's own too), then the aggregation's.
        self.bf16 = resolve_bf16(self.bf16, self.fp16, self.use_cpu)
        super().__post_init__()
        check_field_ranges(self)
        check_reward_aggregation(self)
