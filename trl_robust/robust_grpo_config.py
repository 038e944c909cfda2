"""Configuration of the RobustGRPOTrainer."""

from dataclasses import dataclass, field

from trl import GRPOConfig

from .config_utils import check_reward_aggregation, resolve_bf16
from .rewards import AGGREGATIONS


@dataclass
class RobustGRPOConfig(GRPOConfig):
    r"""
    Configuration for [`RobustGRPOTrainer`]: every field of TRL's [`~trl.GRPOConfig`] plus how the BRME's K heads
    become the reward that GRPO optimises.

    Parameters:
        reward_aggregation (`str`, defaults to `"robust"`):
            One of `"robust"`, `"nominal"`, `"worst"`, `"mean"`, `"uwo"`, `"kl_dro"`; see `trl_robust.rewards`.
        robust_lambda (`float`, defaults to 0.4):
            Weight of the nominal reward in `robust = lambda * nominal + (1 - lambda) * worst` (arXiv 2409.15360).
            Also sets the logged `brme/robust` metric whatever the aggregation.
        uwo_coef (`float`, defaults to 1.0):
            Variance penalty c of `uwo = mean - c * Var_k mu_k` (Coste et al. 2023).
        kl_dro_beta (`float`, defaults to 1.0):
            Temperature beta of `kl_dro = -beta * log mean_k exp(-mu_k / beta)` (arXiv 2606.09073): small beta
            approaches the worst head, large beta the mean.

    > Changed default: `bf16` is on only where it runs (a bf16-capable GPU), not whenever `fp16` is off.
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

    def __post_init__(self):
        self.bf16 = resolve_bf16(self.bf16, self.fp16, self.use_cpu)
        super().__post_init__()
        check_reward_aggregation(self)
