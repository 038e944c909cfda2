"""The Bayesian Reward Model Ensemble: one backbone, K Gaussian reward heads."""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from . import aggregation as agg
from .configuration_brme import BRMEConfig


@dataclass
class BRMEOutput(ModelOutput):
    """
    Output of [`BRMERewardModel`].

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, 1)`): the robust reward
            `robust_lambda * nominal + (1 - robust_lambda) * worst`.
        means (`torch.FloatTensor` of shape `(batch_size, num_heads)`): each head's reward mean.
        stds (`torch.FloatTensor` of shape `(batch_size, num_heads)`): each head's reward standard deviation (> 0).
        nominal (`torch.FloatTensor` of shape `(batch_size,)`): mean of the head with the smallest std, per sample.
        worst (`torch.FloatTensor` of shape `(batch_size,)`): smallest head mean, per sample.
        epistemic (`torch.FloatTensor` of shape `(batch_size,)`): the members' disagreement, the population std of
            their means, `sqrt((1/K) sum_k (mu_k - mean_k mu_k)^2)`: uncertainty about the reward function itself,
            which more data of that kind would reduce (0 for K = 1).
        aleatoric (`torch.FloatTensor` of shape `(batch_size,)`): the members' mean predicted std,
            `(1/K) sum_k sigma_k`: the noise each member expects in the labels themselves.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    means: torch.FloatTensor | None = None
    stds: torch.FloatTensor | None = None
    nominal: torch.FloatTensor | None = None
    worst: torch.FloatTensor | None = None
    epistemic: torch.FloatTensor | None = None
    aleatoric: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def epistemic_uncertainty(means: torch.Tensor) -> torch.Tensor:
    """The members' disagreement `[B]`: population std over the K members of their means `[B, K]`."""
    return means.std(dim=-1, unbiased=False)


def aleatoric_uncertainty(stds: torch.Tensor) -> torch.Tensor:
    """The members' mean predicted std `[B]` from their stds `[B, K]`."""
    return stds.mean(dim=-1)


def inverse_softplus(value: float) -> float:
    return value + torch.log(-torch.expm1(torch.tensor(-value))).item()


class BRMEHeads(nn.Module):
    """K Gaussian heads as one linear map: features -> K means and K raw stds."""

    def __init__(self, hidden_size: int, num_heads: int, std_floor: float):
        super().__init__()
        self.num_heads = num_heads
        self.std_floor = std_floor
        self.weight = nn.Parameter(torch.empty(2 * num_heads, hidden_size))
        self.bias = nn.Parameter(torch.empty(2 * num_heads))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.linear(features.to(self.weight.dtype), self.weight, self.bias).float()
        means, raw_stds = out.split(self.num_heads, dim=-1)
        return means, F.softplus(raw_stds) + self.std_floor


def backbone_class(text_config):
    """The bare transformers model class for a backbone config (e.g. `LlamaModel`, `BertModel`)."""
    try:
        return MODEL_MAPPING[type(text_config)]
    except KeyError:
        raise ValueError(
            f"No transformers base model is registered for backbone type {text_config.model_type!r}; BRME needs an "
            "architecture that `AutoModel` can build."
        ) from None


class BRMERewardModel(PreTrainedModel):
    """
    Bayesian Reward Model Ensemble: a transformers backbone and `num_heads` Gaussian heads reading one pooled token.

    `forward` returns a [`BRMEOutput`] whose `logits[:, 0]` is the robust reward, so any code that reads a TRL reward
    model the usual way (GRPO, RLOO, `pipeline`) gets the robust reward; `means` and `stds` carry the heads.

    Build one on a pretrained checkpoint with [`BRMERewardModel.from_backbone`], reload a trained one with
    `from_pretrained` (or `AutoModelForSequenceClassification.from_pretrained` once `trl_robust` is imported).
    """

    config_class = BRMEConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: BRMEConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        # Instantiating the class directly (not AutoModel.from_config) keeps DeepSpeed ZeRO-3 init working.
        self.backbone = backbone if backbone is not None else backbone_class(config.text_config)(config.text_config)
        self.score = BRMEHeads(config.text_config.hidden_size, config.num_heads, config.std_floor)
        self.post_init()

    def _init_weights(self, module):
        if not isinstance(module, BRMEHeads):
            return super()._init_weights(module)
        init_range = self.config.head_init_range
        if init_range is None:
            init_range = getattr(self.config.text_config, "initializer_range", None) or 0.02
        k = module.num_heads
        # Distinct random rows give each head its own start, the first source of ensemble diversity.
        nn.init.normal_(module.weight, std=init_range)
        with torch.no_grad():
            module.bias[:k].zero_()
            module.bias[k:].fill_(inverse_softplus(self.config.init_std - self.config.std_floor))

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    @classmethod
    def from_backbone(
        cls,
        pretrained_model_name_or_path: str,
        num_heads: int = 5,
        robust_lambda: float = 0.4,
        std_floor: float = 1e-3,
        init_std: float = 1.0,
        pooling: str | None = None,
        **from_pretrained_kwargs,
    ) -> "BRMERewardModel":
        """
        Build a new BRME on the weights of any pretrained causal LM, encoder or base model checkpoint; the heads start
        from a fresh random init. `from_pretrained_kwargs` go to `AutoModel.from_pretrained` (`dtype`,
        `trust_remote_code`, `revision`, ...).
        """
        from_pretrained_kwargs.setdefault("trust_remote_code", False)
        text_config = AutoConfig.from_pretrained(
            pretrained_model_name_or_path,
            trust_remote_code=from_pretrained_kwargs["trust_remote_code"],
            revision=from_pretrained_kwargs.get("revision"),
        )
        if isinstance(text_config, BRMEConfig):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} is already a BRME checkpoint; load it with "
                "BRMERewardModel.from_pretrained instead of from_backbone."
            )
        backbone = AutoModel.from_pretrained(pretrained_model_name_or_path, **from_pretrained_kwargs)
        config = BRMEConfig(
            text_config=backbone.config,
            num_heads=num_heads,
            robust_lambda=robust_lambda,
            std_floor=std_floor,
            init_std=init_std,
            pooling=pooling,
        )
        config._name_or_path = str(pretrained_model_name_or_path)
        model = cls(config, backbone=backbone)
        model.score.to(device=backbone.device, dtype=backbone.dtype)
        return model

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Pick one feature vector per sequence: the first token, or the last real (non-padding) token."""
        if self.config.pooling == "first":
            return hidden[:, 0]
        if attention_mask is None:
            # No mask means no padding (the transformers convention); looking for pad ids instead would misread an EOS
            # that doubles as the pad token.
            return hidden[:, -1]
        # Highest position holding a real token: right for left padding, right padding and pad == eos alike.
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask.to(hidden.device).long() * positions).argmax(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BRMEOutput:
        kwargs.pop("margin", None)  # TRL's preference collator sends it; it belongs to the loss, not the model
        kwargs.pop("labels", None)
        kwargs.pop("return_dict", None)  # PEFT's sequence-classification wrapper passes it; we always return one
        backbone_kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )
        if position_ids is not None:
            backbone_kwargs["position_ids"] = position_ids
        if getattr(self.config.text_config, "is_decoder", False) or self.config.pooling == "last":
            backbone_kwargs["use_cache"] = False if use_cache is None else use_cache
        out = self.backbone(**backbone_kwargs)
        features = self.pool(out.last_hidden_state, attention_mask)
        means, stds = self.score(features)
        nominal = agg.nominal(means, stds)
        worst = agg.worst(means)
        robust = agg.robust(means, stds, self.config.robust_lambda)  # the one formula scorers and trainers use
        return BRMEOutput(
            logits=robust.unsqueeze(-1),
            means=means,
            stds=stds,
            nominal=nominal,
            worst=worst,
            epistemic=epistemic_uncertainty(means),
            aleatoric=aleatoric_uncertainty(stds),
            hidden_states=out.hidden_states if output_hidden_states else None,
            attentions=out.attentions if output_attentions else None,
        )


def register_auto_classes() -> None:
    """Let `AutoConfig` / `AutoModel` / `AutoModelForSequenceClassification` load BRME checkpoints."""
    from transformers import AutoModelForSequenceClassification

    AutoConfig.register("brme", BRMEConfig, exist_ok=True)
    AutoModel.register(BRMEConfig, BRMERewardModel, exist_ok=True)
    AutoModelForSequenceClassification.register(BRMEConfig, BRMERewardModel, exist_ok=True)
