"""Configuration of the RobustRLOOTrainer."""

from dataclasses import dataclass

from trl import RLOOConfig

from .config_utils import RobustRewardFields


@dataclass
class RobustRLOOConfig(RobustRewardFields, RLOOConfig):
    r"""
    Configuration for [`RobustRLOOTrainer`]: every field of TRL's [`~trl.RLOOConfig`] plus the robust reward fields,
    as [`RobustGRPOConfig`] adds them to GRPO's (same fields, defaults and checks; see there).
    """
