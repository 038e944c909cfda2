"""RobustRLOOTrainer: TRL's RLOOTrainer optimising a Bayesian Reward Model Ensemble's robust reward."""

from trl import RLOOTrainer

from .brme_rewards_mixin import BRMERewardsMixin
from .checkpointing import AtomicCheckpointMixin
from .model_card import RobustModelCardMixin
from .robust_rloo_config import RobustRLOOConfig


class RobustRLOOTrainer(AtomicCheckpointMixin, RobustModelCardMixin, BRMERewardsMixin, RLOOTrainer):
    """
    TRL's [`~trl.RLOOTrainer`] with a [`BRMERewardModel`] among its reward functions: everything
    [`RobustGRPOTrainer`] says holds here (scoring as the BRME was trained, `args.reward_aggregation`, the `brme/`
    metrics, the reference model saved for `args.beta > 0`, ZeRO-3), on RLOO's leave-one-out baseline instead of
    GRPO's group normalisation. RLOO's default `beta > 0` keeps a reference model.

    Example: `RobustRLOOTrainer(model=..., reward_funcs="path/to/brme", args=RobustRLOOConfig(output_dir="rloo"),
    train_dataset=prompts).train()`.
    """

    _tag_names = ["trl", "rloo", "trl-robust", "brme"]
    _name = "Robust RLOO"
    config_class = RobustRLOOConfig
