"""Configuration of the BRMERewardTrainer."""

from dataclasses import dataclass, field

from trl import RewardConfig

from .aggregation import DEFAULT_ROBUST_LAMBDA
from .config_utils import resolve_bf16
from .configuration_brme import BRME_RANGES, MEMBER_FIELDS, MEMBER_RANGES, check_member_settings
from .recipe_checks import check_field_ranges, ranged, value_range

BRME_LOSSES = ("gaussian_bt", "reparam", "bt", "bt_then_gaussian")
BOOTSTRAPS = ("bayesian", "poisson", "none")


@dataclass
class BRMERewardConfig(RewardConfig):
    r"""
    Configuration for [`BRMERewardTrainer`]: every field of TRL's [`~trl.RewardConfig`] plus the ensemble's.

    Parameters:
        num_heads (`int`, defaults to 5): Number of Gaussian heads K when the trainer builds a new BRME.
        robust_lambda (`float`, defaults to 0.4): Weight of the nominal reward in the robust reward of a new BRME.
        std_floor (`float`, defaults to 1e-3): Lower bound of every predicted std of a new BRME.
        init_std (`float`, defaults to 1.0): Std every head of a new BRME predicts at initialisation.
        head_type, head_hidden_size, prior_scale, member_layers, member_lora_rank: What each member of a new BRME
            is (see [`BRMEConfig`]): `"linear"`, `"mlp"` or `"lora"` members, optional randomised priors.
        brme_loss (`str`, defaults to `"gaussian_bt"`): `"gaussian_bt"`, `"reparam"`, `"bt"` or `"bt_then_gaussian"`
            (the paper's two-stage recipe in one run).
        bt_phase_fraction (`float`, defaults to 0.5): For `"bt_then_gaussian"`: share of the optimiser steps of the
            Bradley-Terry phase.
        bt_target_scale (`float`, defaults to 10.0): For `"bt_then_gaussian"`: alpha of the regression targets
            `alpha * (p - 0.5)`.
        num_reparam_samples (`int`, defaults to 8): Monte-Carlo samples per pair for `"reparam"`.
        bootstrap (`str`, defaults to `"bayesian"`): Per-head example weights: `"bayesian"`, `"poisson"`, `"none"`.
        calibration_bins (`int`, defaults to 10): Bins of the expected calibration error metric.
        calibrate (`bool`, defaults to `True`): Fit the temperature of the pair probability on the eval split at the
            end of `train()` and store it in `model.config.calibration_temperature`.
    """

    num_heads: int = field(
        default=5,
        metadata={
            "help": "Number of Gaussian reward heads K, used when the trainer builds a new BRME.",
            **ranged(BRME_RANGES["num_heads"]),
        },
    )
    robust_lambda: float = field(
        default=DEFAULT_ROBUST_LAMBDA,
        metadata={
            "help": "Weight of the nominal reward (mean of the most confident head) in the robust reward "
            "lambda * nominal + (1 - lambda) * worst, used when the trainer builds a new BRME.",
            **ranged(BRME_RANGES["robust_lambda"]),
        },
    )
    std_floor: float = field(
        default=1e-3,
        metadata={"help": "Lower bound added to every predicted standard deviation of a new BRME."},
    )
    init_std: float = field(
        default=1.0,
        metadata={"help": "Standard deviation every head of a new BRME predicts at initialisation."},
    )
    head_type: str = field(
        default="linear",
        metadata={
            "help": "Member type of a new BRME: 'linear' (a linear Gaussian head on the shared feature), 'mlp' (a "
            "per-member MLP) or 'lora' (per-member LoRA adapters on the top member_layers backbone layers).",
            "choices": ["linear", "mlp", "lora"],
        },
    )
    head_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "Hidden units of each 'mlp' member of a new BRME; a quarter of the backbone's when unset.",
            **ranged(MEMBER_RANGES["head_hidden_size"]),
        },
    )
    prior_scale: float = field(
        default=0.0,
        metadata={
            "help": "Randomised prior functions of a new BRME: each member's mean adds prior_scale times a frozen "
            "random head's output (0: off).",
            **ranged(MEMBER_RANGES["prior_scale"]),
        },
    )
    member_layers: int = field(
        default=1,
        metadata={
            "help": "For head_type='lora': top backbone layers carrying per-member adapters.",
            **ranged(MEMBER_RANGES["member_layers"]),
        },
    )
    member_lora_rank: int = field(
        default=8,
        metadata={
            "help": "For head_type='lora': rank of each member's adapters.",
            **ranged(MEMBER_RANGES["member_lora_rank"]),
        },
    )
    brme_loss: str = field(
        default="gaussian_bt",
        metadata={
            "help": "Per-head training loss. 'gaussian_bt': Bradley-Terry likelihood marginalised over the Gaussian "
            "noise (probit approximation); 'reparam': Monte-Carlo reparameterised samples through Bradley-Terry; "
            "'bt': Bradley-Terry on the means only (the stds get no signal); 'bt_then_gaussian': the paper's two "
            "stages in one run: Bradley-Terry on the heads' average mean for the first bt_phase_fraction of the steps, "
            "then every head's Gaussian regressed onto targets bt_target_scale * (p - 0.5) from that frozen BT model.",
            "choices": list(BRME_LOSSES),
        },
    )
    bt_phase_fraction: float = field(
        default=0.5,
        metadata={
            "help": "For brme_loss='bt_then_gaussian': share of the optimiser steps spent on the Bradley-Terry phase "
            "(0 < fraction < 1); the rest regresses the heads onto the BT model's targets.",
            **ranged(value_range(0, 1, low_inclusive=False, high_inclusive=False)),
        },
    )
    bt_target_scale: float = field(
        default=10.0,
        metadata={
            "help": "For brme_loss='bt_then_gaussian': alpha of the regression targets, alpha * (p - 0.5) for the "
            "chosen side and alpha * (0.5 - p) for the rejected side, p the BT model's P(chosen > rejected) (10 in the "
            "public re-implementation).",
            **ranged(value_range(0, low_inclusive=False, finite=True)),
        },
    )
    num_reparam_samples: int = field(
        default=8,
        metadata={"help": "Monte-Carlo samples per pair and head for brme_loss='reparam'.", **ranged(value_range(1))},
    )
    bootstrap: str = field(
        default="bayesian",
        metadata={
            "help": "Per-example, per-head loss weights that make the heads differ, drawn deterministically from the "
            "pair's tokens and the seed. 'bayesian': Exponential(1) (Bayesian bootstrap); 'poisson': Poisson(1) "
            "(online bagging, a head skips ~37%% of pairs); 'none': every head sees every pair with weight 1.",
            "choices": list(BOOTSTRAPS),
        },
    )
    calibration_bins: int = field(
        default=10,
        metadata={
            "help": "Number of equal-width confidence bins of the expected calibration error (ece) metric.",
            **ranged(value_range(1)),
        },
    )

    calibrate: bool = field(
        default=True,
        metadata={
            "help": "At the end of train(), when there is an eval split, fit the temperature T of the pair probability "
            "mean_k E[sigmoid(gap_k / T)] by minimising its NLL on the eval split, and store it in "
            "model.config.calibration_temperature (saved with the model, used by evaluation)."
        },
    )

    def __post_init__(self):
        self.bf16 = resolve_bf16(self.bf16, self.fp16, self.use_cpu)
        super().__post_init__()
        if self.brme_loss not in BRME_LOSSES:
            raise ValueError(f"BRMERewardConfig.brme_loss must be one of {BRME_LOSSES}, got {self.brme_loss!r}.")
        # head_type and the member ranges (MEMBER_RANGES, also these fields' metadata ranges), as BRMEConfig does
        check_member_settings("BRMERewardConfig", **{name: getattr(self, name) for name in MEMBER_FIELDS})
        if self.bootstrap not in BOOTSTRAPS:
            raise ValueError(f"BRMERewardConfig.bootstrap must be one of {BOOTSTRAPS}, got {self.bootstrap!r}.")
        check_field_ranges(self)  # every field with a metadata["range"]
