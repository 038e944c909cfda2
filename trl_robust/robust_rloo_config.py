"""Configuration of the RobustRLOOTrainer."""

from dataclasses import dataclass

from trl import RLOOConfig

from .config_utils import RobustRewardFields, check_reward_aggregation, resolve_bf16


@dataclass
class RobustRLOOConfig(RobustRewardFields, RLOOConfig):
    r"""
    Configuration for [`RobustRLOOTrainer`]: every field of TRL's [`~trl.RLOOConfig`] plus how the BRME's K heads
    become the reward that RLOO optimises.

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

    def __post_init__(self):
        self.bf16 = resolve_bf16(self.bf16, self.fp16, self.use_cpu)
        super().__post_init__()
        check_reward_aggregation(self)
