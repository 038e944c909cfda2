"""RobustGRPOTrainer: TRL's GRPOTrainer optimising a Bayesian Reward Model Ensemble's robust reward."""

from trl import GRPOTrainer

from .brme_rewards_mixin import BRMERewardsMixin
from .checkpointing import AtomicCheckpointMixin
from .model_card import RobustModelCardMixin
from .robust_grpo_config import RobustGRPOConfig


class RobustGRPOTrainer(AtomicCheckpointMixin, RobustModelCardMixin, BRMERewardsMixin, GRPOTrainer):
    """
    TRL's [`~trl.GRPOTrainer`] with a [`BRMERewardModel`] among its reward functions: the same constructor, data formats
    and options, and the BRME's reward is

    - scored as [`BRMERewardTrainer`] tokenised its training pairs (chat template for conversational data, EOS closing
      standard text), not on TRL's EOS-less re-tokenisation of the decoded completion;
    - the K heads aggregated with `args.reward_aggregation` (`"robust"`: `lambda * nominal + (1 - lambda) * worst`,
      `lambda = args.robust_lambda`; or `"nominal"`, `"worst"`, `"mean"`, `"uwo"`, `"kl_dro"`);
    - logged per step under `brme/` (each aggregation, `mean_std`, `head_disagreement`, `head_{k}_mean`) next to
      TRL's own metrics.

    Pass the BRME the TRL way, in `reward_funcs`: a checkpoint path (TRL loads it; importing `trl_robust` registers
    the auto classes) or a `BRMERewardModel`, alone or beside other reward functions and `args.reward_weights`. Its
    tokenizer comes from `reward_processing_classes`, else from the checkpoint. TRL prepares the BRME like any reward
    model, so DeepSpeed ZeRO-3 shards it.

    With `args.beta > 0` TRL reloads the reference model from the policy's `config._name_or_path`; a policy built in
    memory (no `_name_or_path`) is first saved to `output_dir/reference_model`.

    Example:

    ```python
    from trl_robust import RobustGRPOConfig, RobustGRPOTrainer

    trainer = RobustGRPOTrainer(
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        reward_funcs="path/to/brme",
        args=RobustGRPOConfig(output_dir="robust-grpo", reward_aggregation="robust", robust_lambda=0.4),
        train_dataset=prompts,
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "grpo", "trl-robust", "brme"]
    _name = "Robust GRPO"
    config_class = RobustGRPOConfig
