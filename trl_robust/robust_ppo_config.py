"""Configuration of the RobustPPOTrainer: every field of TRL 1.12's PPOConfig, plus the robust reward's."""

from dataclasses import dataclass, field
from typing import Literal

from trl.trainer.base_config import _BaseConfig

from .config_utils import RobustRewardFields
from .recipe_checks import ranged, value_range

# PPO's group mode: GRPO's advantages inside PPO (each answer's score centred on its prompt's mean and divided by its
# prompt's std), no critic. With num_samples_per_prompt >= 2 it is GRPO's algorithm (docs/benchmarks.md, "PPO against
# GRPO on a learned reward": reseeded each update, the same curve); the quickstart and the harness run it.
GROUP_MODE = {"use_critic": False, "advantage_baseline": "prompt_mean", "scale_by_prompt_std": True}


@dataclass
class RobustPPOConfig(RobustRewardFields, _BaseConfig):
    r"""
    Configuration for [`RobustPPOTrainer`].

    It carries every field of `trl.experimental.ppo.PPOConfig` (TRL <= 1.12) with the same name and default, so a
    PPO script migrates by changing its import, plus the fields of the robust reward. Batch sizes follow the old
    trainer: one PPO update (one rollout) holds `batch_size = per_device_train_batch_size *
    gradient_accumulation_steps * num_processes` episodes, split into `num_mini_batches` optimiser steps for each of
    `num_ppo_epochs` epochs. The derived sizes are computed once by the trainer, into `trainer.batch_sizes`
    (`trl_robust.ppo_utils.ppo_batch_sizes`); the old config fields of the same names are kept so that TRL 1.12
    configs still parse, and are neither read nor filled in.
    """

    # TrainingArguments defaults that the old PPOConfig changed.
    learning_rate: float = field(default=3e-6, metadata={"help": "The initial learning rate for AdamW."})
    logging_steps: float = field(
        default=10, metadata={"help": "Log every X updates (an int), or this fraction of all updates (< 1)."}
    )

    # Fields of TRL 1.12's PPOConfig, same names and defaults.
    dataset_num_proc: int | None = field(
        default=None, metadata={"help": "Number of processes to use for processing the dataset."}
    )
    num_mini_batches: int = field(
        default=1, metadata={"help": "Number of minibatches to split a batch into.", **ranged(value_range(1))}
    )
    total_episodes: int | None = field(
        default=None,
        metadata={
            "help": "Total number of episodes (prompts answered) to train on; defaults to num_train_epochs "
            "passes over the dataset."
        },
    )
    local_rollout_forward_batch_size: int = field(
        default=64,
        metadata={
            "help": "Per-rank batch size of the no-grad forwards (and generation) of the rollout.",
            **ranged(value_range(1)),
        },
    )
    num_sample_generations: int = field(
        default=10,
        metadata={"help": "Number of times sample completions are generated and logged over training (0: never)."},
    )
    response_length: int = field(
        default=53, metadata={"help": "Maximum number of generated tokens per response.", **ranged(value_range(1))}
    )
    stop_token: Literal["eos"] | None = field(
        default=None,
        metadata={"help": "'eos' stops responses at the tokenizer's EOS token; exclusive with stop_token_id."},
    )
    stop_token_id: int | None = field(
        default=None, metadata={"help": "Token id that ends a response; exclusive with stop_token."}
    )
    temperature: float = field(
        default=0.7,
        metadata={
            "help": "Sampling temperature, used in rollout and training.",
            **ranged(value_range(0, low_inclusive=False)),
        },
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={
            "help": "Subtracted from the score of responses that never produce the stop token (>= 0).",
            **ranged(value_range(0)),
        },
    )
    sft_model_path: str = field(
        default="EleutherAI/pythia-160m",
        metadata={"help": "Path to the SFT model (kept so old scripts parse; the trainer does not read it)."},
    )
    # TRL 1.12's `world_size` field is not redeclared: it would shadow `TrainingArguments.world_size`, the property
    # that transformers' DeepSpeed integration reads; `args.world_size` still gives the number of processes.
    # TRL 1.12's trainer wrote its derived sizes into these fields. They are kept so that old configs parse; the
    # trainer neither reads nor fills them: its sizes are `trainer.batch_sizes` (one owner, computed once).
    num_total_batches: int | None = field(
        default=None, metadata={"help": "Unused (TRL 1.12 field); the run's updates: trainer.batch_sizes."}
    )
    micro_batch_size: int | None = field(
        default=None, metadata={"help": "Unused (TRL 1.12 field); the sizes of a run: trainer.batch_sizes."}
    )
    local_batch_size: int | None = field(
        default=None, metadata={"help": "Unused (TRL 1.12 field); the sizes of a run: trainer.batch_sizes."}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "Unused (TRL 1.12 field); the sizes of a run: trainer.batch_sizes."}
    )
    local_mini_batch_size: int | None = field(
        default=None, metadata={"help": "Unused (TRL 1.12 field); the sizes of a run: trainer.batch_sizes."}
    )
    mini_batch_size: int | None = field(
        default=None, metadata={"help": "Unused (TRL 1.12 field); the sizes of a run: trainer.batch_sizes."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Whether to push the model to the Hub."})
    reward_model_path: str = field(
        default="outputs/quickstart/brme",
        metadata={
            "help": "Reward model that `trl-robust ppo` loads: a BRME folder as `trl-robust quickstart` or `trl-robust "
            "reward` saved it (its heads are aggregated as reward_aggregation says), or a plain one-output reward "
            "model (its score). The default is the quickstart's BRME. RobustPPOTrainer itself takes the model object."
        },
    )
    model_adapter_name: str | None = field(
        default=None, metadata={"help": "Name of the trained adapter when the policy is a PeftModel."}
    )
    ref_adapter_name: str | None = field(
        default=None,
        metadata={"help": "Adapter to use as the reference policy; None uses the base model (adapters disabled)."},
    )
    num_ppo_epochs: int = field(
        default=4, metadata={"help": "Number of epochs of PPO over each rollout.", **ranged(value_range(1))}
    )
    whiten_rewards: bool = field(default=False, metadata={"help": "Whether to whiten the per-token rewards."})
    kl_coef: float = field(default=0.05, metadata={"help": "KL penalty coefficient (per token)."})
    kl_estimator: Literal["k1", "k3"] = field(
        default="k1",
        metadata={
            "help": "KL estimator: 'k1' (log ratio, unbiased, can be negative) or 'k3' (lower variance, "
            "always >= 0); see http://joschu.net/blog/kl-approx.html.",
            "choices": ["k1", "k3"],
        },
    )
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss coefficient."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value function."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of generalised advantage estimation (GAE)."})
    # Critic and baseline (not in TRL 1.12's PPOConfig; the defaults are its behaviour). See docs/robust_ppo_trainer.md
    # ("Critic and baseline") for what was measured.
    use_critic: bool = field(
        default=True,
        metadata={
            "help": "Train a value model and take advantages from GAE. False: no value model (value_model may be "
            "None; one that is passed is neither run nor trained), advantages are the discounted KL-penalised "
            "returns minus advantage_baseline, then whitened over the batch (REINFORCE/RLOO-style PPO)."
        },
    )
    value_head_init: Literal["keep", "zero"] = field(
        default="keep",
        metadata={
            "help": "'keep' the value model's score head as given; 'zero' sets it to output 0, so that the first "
            "update's GAE advantages are the discounted returns instead of a random head's per-token noise (for a "
            "value model started from the policy, whose head is random). Needs a linear head (or a linear BRME head "
            "without a prior: its means are zeroed).",
            "choices": ["keep", "zero"],
        },
    )
    value_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the value model (its own AdamW parameter group); None: learning_rate. Under "
            "Adam, vf_coef barely changes the critic's step size: this does.",
            **ranged(value_range(0)),
        },
    )
    num_critic_warmup_updates: int = field(
        default=0,
        metadata={
            "help": "The first N updates train the value model only (value loss alone, the policy unchanged), on "
            "rollouts of the initial policy, as OpenRLHF's freezing_actor_steps. They count in the run's updates.",
            **ranged(value_range(0)),
        },
    )
    num_samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "Answers sampled per prompt in a rollout; an update then answers batch_size / k prompts k times "
            "(per_device_train_batch_size * gradient_accumulation_steps must be divisible by it).",
            **ranged(value_range(1)),
        },
    )
    advantage_baseline: Literal["none", "prompt_mean", "prompt_loo"] = field(
        default="none",
        metadata={
            "help": "Subtracted from every sequence score before the rewards: 'none'; 'prompt_mean', the mean score "
            "of the prompt's answers (GRPO); 'prompt_loo', the mean of its other answers (RLOO). The prompt "
            "baselines need num_samples_per_prompt >= 2. The logged objective/scores stay the raw scores.",
            "choices": ["none", "prompt_mean", "prompt_loo"],
        },
    )
    reward_normalization_batches: int = field(
        default=0,
        metadata={
            "help": "Before the first update, sample this many batches of answers from the initial policy and score "
            "them; every later score is then (score - their mean) / their std, so the rewards of the initial policy "
            "have mean 0 and std 1 (Ziegler et al. 2019; Huang et al. 2024's detail). 0: scores as the reward model "
            "gives them. The statistics are saved with checkpoints; objective/scores logs the normalised scores, "
            "objective/raw_scores the reward model's.",
            **ranged(value_range(0)),
        },
    )
    scale_by_prompt_std: bool = field(
        default=False,
        metadata={
            "help": "Divide each score, after advantage_baseline, by the std of its prompt's scores (+ 1e-4), as "
            "GRPO's scale_rewards='group' does: every prompt's answers then weigh alike, however close their scores. "
            "Needs num_samples_per_prompt >= 2."
        },
    )
    ds3_gather_for_generation: bool = field(
        default=True,
        metadata={
            "help": "Under DeepSpeed ZeRO-3, gather the policy's weights for generation (fast); False "
            "generates from sharded weights (slow, for models larger than one device)."
        },
    )

    def __post_init__(self):
        # RobustRewardFields: our bf16 default, the base checks, the ranges of the fields' metadata, the aggregation's
        super().__post_init__()
        if self.stop_token is not None and self.stop_token_id is not None:
            raise ValueError("RobustPPOConfig: set stop_token or stop_token_id, not both.")
        if self.stop_token not in (None, "eos"):
            raise ValueError(f"RobustPPOConfig.stop_token must be None or 'eos', got {self.stop_token!r}.")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"RobustPPOConfig.kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        if self.value_head_init not in ("keep", "zero"):
            raise ValueError(f"RobustPPOConfig.value_head_init must be 'keep' or 'zero', got {self.value_head_init!r}.")
        if self.advantage_baseline not in ("none", "prompt_mean", "prompt_loo"):
            raise ValueError(
                "RobustPPOConfig.advantage_baseline must be 'none', 'prompt_mean' or 'prompt_loo', got "
                f"{self.advantage_baseline!r}."
            )
        if self.advantage_baseline != "none" and self.num_samples_per_prompt < 2:
            raise ValueError(
                f"RobustPPOConfig.advantage_baseline={self.advantage_baseline!r} needs num_samples_per_prompt >= 2 "
                f"(a baseline from the prompt's other answers), got {self.num_samples_per_prompt}."
            )
        if self.scale_by_prompt_std and self.num_samples_per_prompt < 2:
            raise ValueError(
                "RobustPPOConfig.scale_by_prompt_std needs num_samples_per_prompt >= 2 (a std of the prompt's "
                f"answers), got {self.num_samples_per_prompt}."
            )
        if not self.use_critic:
            for name, default in (
                ("num_critic_warmup_updates", 0),
                ("value_head_init", "keep"),
                ("value_learning_rate", None),
            ):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"RobustPPOConfig.{name} needs use_critic=True (there is no value model to train)."
                    )
