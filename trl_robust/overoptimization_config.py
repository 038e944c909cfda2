"""Configuration of the over-optimisation harness (`trl_robust.overoptimization`)."""

from dataclasses import dataclass, field

from .aggregation import Aggregation
from .recipe_checks import check_field_ranges, ranged, value_range

METHODS = ("ppo", "grpo", "bon")
DEFAULT_SETTINGS = ["nominal", "mean", "worst", "uwo", "robust:0.2", "robust:0.4", "robust:0.6", "robust:0.8"]


@dataclass
class OverOptimizationConfig:
    """
    The over-optimisation experiment of Gao et al. (2022) and Coste et al. (2023) with a BRME proxy: a gold scorer
    labels pairs of the initial policy's answers (with label noise), a proxy BRME learns from them, and each method
    optimises the policy against the proxy under each reward aggregation, while gold reward, proxy reward and KL to
    the initial policy are tracked. Defaults: SmolLM2-135M-Instruct policy, all-MiniLM-L6-v2 proxy, VADER gold,
    prompts from the shipped HH-RLHF data, all offline.
    """

    output_dir: str = field(
        default="outputs/overoptimization", metadata={"help": "Where the CSV, summary table and plots are written."}
    )
    policy_model: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Policy to optimise: 'smollm2-135m-instruct' (offline copy) or a causal LM path / hub id."},
    )
    proxy_backbone: str = field(
        default="all-minilm-l6-v2",
        metadata={
            "help": "Backbone of the proxy BRME: 'all-minilm-l6-v2', 'smollm2-135m-instruct' or a path / hub id."
        },
    )
    gold: str = field(
        default="vader",
        metadata={
            "help": "Gold scorer: 'vader' (sentiment of the answer, offline), a reward model folder, or "
            "'package.module:function' taking (prompts, completions) and returning one float per pair."
        },
    )
    methods: list[str] = field(
        default_factory=lambda: list(METHODS),
        metadata={"help": "What optimises against the proxy: 'ppo', 'grpo', and 'bon' (best-of-n over a fixed pool)."},
    )
    settings: list[str] = field(
        default_factory=lambda: list(DEFAULT_SETTINGS),
        metadata={
            "help": "Reward aggregations to compare: a name of trl_robust.aggregation.AGGREGATIONS, optionally with "
            "its parameter after a colon ('robust:0.4' is lambda, 'uwo:1.0' the variance penalty, 'kl_dro:1.0' beta)."
        },
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "RL and best-of-n seeds."})

    # Proxy reward model
    num_proxy_pairs: int = field(
        default=256,
        metadata={
            "help": "Gold-labelled pairs (two answers of the initial policy) the proxy trains on.",
            **ranged(value_range(1)),
        },
    )
    num_proxy_eval_pairs: int = field(
        default=64, metadata={"help": "Noise-free gold-labelled pairs on which the proxy's gold agreement is measured."}
    )
    label_noise: float = field(
        default=0.25,
        metadata={
            "help": "Probability that a training pair's gold label is flipped, in [0, 0.5].",
            **ranged(value_range(0, 0.5)),
        },
    )
    min_gold_margin: float = field(
        default=0.0,
        metadata={"help": "Pairs whose gold scores differ by this much or less are ties and are not used."},
    )
    proxy_num_heads: int = field(default=5, metadata={"help": "Gaussian heads K of the proxy BRME."})
    proxy_epochs: float = field(default=2.0, metadata={"help": "Passes of proxy training over its pairs."})
    proxy_learning_rate: float = field(default=1e-4, metadata={"help": "Proxy BRME learning rate."})
    proxy_batch_size: int = field(default=16, metadata={"help": "Pairs per proxy training step."})
    proxy_seed: int = field(default=0, metadata={"help": "Seed of pair sampling, label noise and proxy training."})
    proxy_model: str | None = field(
        default=None,
        metadata={
            "help": "A proxy BRME folder from an earlier run (its `proxy/`): reuse it and skip the gold-labelled pairs "
            "and proxy training, to compare methods or settings against one proxy across runs."
        },
    )

    # Sampling
    max_prompt_length: int = field(
        default=48, metadata={"help": "Prompts longer than this (policy tokens) are left out, and counted."}
    )
    response_length: int = field(default=24, metadata={"help": "New tokens per answer."})
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature of rollouts, evaluation and pools."}
    )
    generation_batch_size: int = field(default=32, metadata={"help": "Prompts per generate() call."})
    num_eval_prompts: int = field(
        default=32,
        metadata={"help": "Held-out prompts on which gold, proxy and KL are measured.", **ranged(value_range(1))},
    )

    # RL
    rl_steps: int = field(default=16, metadata={"help": "Optimiser updates per RL run.", **ranged(value_range(1))})
    eval_every: int = field(
        default=2, metadata={"help": "Measure gold, proxy and KL every this many updates.", **ranged(value_range(1))}
    )
    rl_batch_size: int = field(
        default=8,
        metadata={
            "help": "Episodes per update: answers, num_generations per prompt (GRPO, and PPO in its group mode).",
            **ranged(value_range(1)),
        },
    )
    num_generations: int = field(
        default=4,
        metadata={
            "help": "Answers per prompt, for GRPO and for PPO (its group mode: GRPO's advantages, no critic; "
            "docs/overoptimization.md).",
            **ranged(value_range(1)),
        },
    )
    num_ppo_epochs: int = field(
        default=1,
        metadata={
            "help": "PPO: epochs over each batch. 1: at 8 episodes per update a second epoch moved the policy far "
            "on the first update without more reward (docs/benchmarks.md, PPO against GRPO).",
            **ranged(value_range(1)),
        },
    )
    rl_learning_rate: float = field(default=1e-5, metadata={"help": "Policy learning rate."})
    kl_coef: float = field(
        default=0.0,
        metadata={
            "help": "KL penalty (PPO kl_coef, GRPO beta). 0, as in Gao et al.'s RL runs: KL is measured, not "
            "penalised, so over-optimisation shows."
        },
    )

    # Best-of-n
    bon_pool_size: int = field(
        default=16,
        metadata={
            "help": "Best-of-n: answers sampled once per evaluation prompt; n runs over powers of 2.",
            **ranged(value_range(1)),
        },
    )

    # Early warning
    monitor_window: int = field(
        default=32,
        metadata={
            "help": "RL runs: samples in the window of the HackingMonitor that watches each run (its reference "
            "quantiles fitted on the proxy's scores of 128 answers of the initial policy); curves.csv and runs.md "
            "record its first alarm beside the gold peak. 0 turns the monitor off.",
            **ranged(value_range(0)),
        },
    )

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"OverOptimizationConfig.methods: {unknown or '[]'} not allowed; choose from {METHODS}.")
        if not self.settings:
            raise ValueError("OverOptimizationConfig.settings is empty; give at least one aggregation.")
        for setting in self.settings:
            Aggregation.from_setting(setting)
        check_field_ranges(self)
        if self.rl_batch_size % self.num_generations:
            raise ValueError(
                f"OverOptimizationConfig.rl_batch_size ({self.rl_batch_size}) must be a multiple of "
                f"num_generations ({self.num_generations})."
            )
        if not self.seeds:
            raise ValueError("OverOptimizationConfig.seeds is empty; give at least one seed.")
