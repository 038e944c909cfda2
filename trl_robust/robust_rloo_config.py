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
        reward_aggregation, robust_lambda, uwo_coef, kl_dro_beta:
            How the K heads become one reward; defined and documented once in [`RobustRewardFields`]
            (`trl_robust.config_utils`), checked by [`trl_robust.aggregation.Aggregation`]. `robust_lambda` unset
            (None) takes the BRME's own; it also sets the logged `brme/robust` metric whatever the aggregation.

    > Changed default: `bf16` is on only where it runs (a bf16-capable GPU), not whenever `fp16` is off.
    """

    def __post_init__(self):
        self.bf16 = resolve_bf16(self.bf16, self.fp16, self.use_cpu)
        super().__post_init__()
        check_reward_aggregation(self)
