"""Configuration of the RobustGRPOTrainer."""

from dataclasses import dataclass

from trl import GRPOConfig

from .config_utils import RobustRewardFields


@dataclass
class RobustGRPOConfig(RobustRewardFields, GRPOConfig):
    r"""
    Configuration for [`RobustGRPOTrainer`]: every field of TRL's [`~trl.GRPOConfig`] plus how the BRME's K heads
    become the reward that GRPO optimises.

    Parameters:
        reward_aggregation, robust_lambda, uwo_coef, kl_dro_beta:
            How the K heads become one reward; defined and documented once in [`RobustRewardFields`]
            (`trl_robust.config_utils`), checked by [`trl_robust.aggregation.Aggregation`]. `robust_lambda` unset
            (None) takes the BRME's own; it also sets the logged `brme/robust` metric whatever the aggregation.

    > Changed default: `bf16` is on only where it runs (a bf16-capable GPU), not whenever `fp16` is off.
    """
