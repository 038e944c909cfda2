"""Configuration of the Bayesian Reward Model Ensemble (BRME)."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .aggregation import DEFAULT_ROBUST_LAMBDA, PARAMETER_RANGES
from .recipe_checks import check_ranges, value_range

POOLINGS = ("last", "first")
HEAD_TYPES = ("linear", "mlp", "lora")
# The settings that say what each member is; BRMERewardConfig carries them too, for the BRMEs it builds.
MEMBER_FIELDS = ("head_type", "head_hidden_size", "prior_scale", "member_layers", "member_lora_rank")
# The ranges of the BRME's numeric settings, written once: BRMEConfig checks them, and the fields of the same names
# of BRMERewardConfig (for the BRME it builds) and of the evaluation's arguments declare them as their
# `metadata["range"]`.
MEMBER_RANGES = {
    "head_hidden_size": value_range(1),  # or None: a quarter of the backbone's hidden size
    "prior_scale": value_range(0, finite=True),
    "member_layers": value_range(1),
    "member_lora_rank": value_range(1),
}
BRME_RANGES = {
    "num_heads": value_range(1),
    "robust_lambda": PARAMETER_RANGES["robust_lambda"],
    "std_floor": value_range(0, low_inclusive=False),
    "calibration_temperature": value_range(0, low_inclusive=False, finite=True),
}


def check_member_settings(
    owner: str,
    head_type: str,
    head_hidden_size: int | None,
    prior_scale: float,
    member_layers: int,
    member_lora_rank: int,
) -> None:
    """Raise a `ValueError` naming `owner.field` when a member setting is not one of its choices or out of its range
    (`MEMBER_RANGES`). BRMEConfig checks them here; BRMERewardConfig's fields carry the same ranges as metadata."""
    if head_type not in HEAD_TYPES:
        raise ValueError(f"{owner}.head_type must be one of {', '.join(HEAD_TYPES)}; got {head_type!r}.")
    values = {
        "head_hidden_size": head_hidden_size,
        "prior_scale": prior_scale,
        "member_layers": member_layers,
        "member_lora_rank": member_lora_rank,
    }
    check_ranges(owner, values, MEMBER_RANGES, optional=("head_hidden_size",))


@strict
class BRMEConfig(PreTrainedConfig):
    r"""
    Configuration of a [`BRMERewardModel`]: a transformers backbone (`text_config`) and `num_heads` Gaussian reward
    heads, each predicting a mean and a standard deviation for every sequence.

    `num_labels` stays 1 because the model's `logits` carry one scalar, the robust reward
    `robust_lambda * nominal + (1 - robust_lambda) * worst`; TRL's `RewardTrainer`, `GRPOTrainer` and `RLOOTrainer`
    read that column.

    Args:
        text_config (`dict` or `PreTrainedConfig`):
            Configuration of the backbone (any decoder such as Llama or Qwen2, or an encoder such as BERT).
        num_heads (`int`, defaults to 5):
            Number of Gaussian heads K.
        robust_lambda (`float`, defaults to 0.4):
            Weight of the nominal reward (mean of the most confident head); `1 - robust_lambda` goes to the worst
            case (minimum head mean). 1.0 is standard RLHF on the nominal head, 0.0 is pure worst case.
        std_floor (`float`, defaults to 1e-3):
            Lower bound added to every predicted standard deviation.
        init_std (`float`, defaults to 1.0):
            Standard deviation every head predicts at initialisation.
        head_init_range (`float`, *optional*):
            Standard deviation of the head weight init; defaults to the backbone's `initializer_range` (or 0.02).
        pooling (`str`, *optional*):
            `"last"` reads the last non-padding token (decoders), `"first"` the first token (BERT-style encoders).
            Chosen from the backbone type when unset.
        head_type (`str`, defaults to `"linear"`):
            What each member is. `"linear"`: a linear Gaussian head on the shared pooled feature (cheapest);
            `"mlp"`: a per-member MLP (`head_hidden_size` units, GELU) on that feature; `"lora"`: per-member LoRA
            adapters (rank `member_lora_rank`) on the linear layers of the top `member_layers` backbone layers, so
            each member reads its own feature, then its own linear head.
        head_hidden_size (`int`, *optional*):
            Hidden units of each `"mlp"` member; defaults to a quarter of the backbone's hidden size (at least 16).
        prior_scale (`float`, defaults to 0.0):
            Randomised prior functions (Osband et al. 2018): each member's mean gets `prior_scale` times the output
            of its own frozen, randomly initialised linear head on the (layer-normalised, detached) feature. 0 turns
            priors off.
        member_layers (`int`, defaults to 1):
            For `head_type="lora"`: how many of the backbone's top layers carry per-member adapters.
        member_lora_rank (`int`, defaults to 8):
            For `head_type="lora"`: rank of each member's adapters.
        calibration_temperature (`float`, defaults to 1.0):
            Post-hoc temperature T of the pair probability, `P(chosen > rejected) = E[sigmoid(gap / T)]`, fitted on
            the eval split at the end of `BRMERewardTrainer` training; evaluation uses it. 1.0 is uncalibrated.
    """

    model_type = "brme"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    num_heads: int = 5
    robust_lambda: float = DEFAULT_ROBUST_LAMBDA
    std_floor: float = 1e-3
    init_std: float = 1.0
    head_init_range: float | None = None
    pooling: Literal["last", "first"] | None = None
    head_type: Literal["linear", "mlp", "lora"] = "linear"
    head_hidden_size: int | None = None
    prior_scale: float = 0.0
    member_layers: int = 1
    member_lora_rank: int = 8
    calibration_temperature: float = 1.0
    num_labels: int = 1

    def __post_init__(self, **kwargs):
        # The composite config resets its sub-config's attention implementation, and `text_config` may be a live
        # model's config object: keep what it was set to (else that model falls back to eager attention).
        attn = getattr(self.text_config, "_attn_implementation", None)
        super().__post_init__(**kwargs)
        if attn is not None and "attn_implementation" not in kwargs:
            self.text_config._attn_implementation = attn
        if self.pooling is None:
            is_encoder = self.text_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            self.pooling = "first" if is_encoder and not self.text_config.is_decoder else "last"
        self.validate_brme()

    def validate_brme(self) -> None:
        """Raise a `ValueError` naming the field when a BRME setting is out of range (the types are `@strict`'s)."""
        check_ranges("BRMEConfig", {name: getattr(self, name) for name in BRME_RANGES}, BRME_RANGES)
        if not self.init_std > self.std_floor:
            raise ValueError(
                f"BRMEConfig.init_std must be greater than std_floor ({self.std_floor}), got {self.init_std!r}."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"BRMEConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}.")
        check_member_settings("BRMEConfig", **{name: getattr(self, name) for name in MEMBER_FIELDS})
        layers = getattr(self.text_config, "num_hidden_layers", None)
        if self.head_type == "lora" and layers is not None and self.member_layers > layers:
            raise ValueError(f"BRMEConfig.member_layers ({self.member_layers}) exceeds the backbone's {layers} layers.")
        if self.num_labels != 1:
            raise ValueError(
                f"BRMEConfig.num_labels must be 1 (the robust reward); set the number of heads with num_heads, "
                f"got num_labels={self.num_labels!r}."
            )
