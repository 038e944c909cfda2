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


PRIOR_SEED = 0  # the seed of every new BRME's randomised prior weights (`prior_weights`)


def prior_weights(num_heads: int, hidden_size: int, seed: int = PRIOR_SEED) -> torch.Tensor:
    """K frozen prior rows `[K, H]`, each `N(0, 1/H)`, from a generator of their own seeded with `seed`: the same on
    every process and whatever the global random state (members differ row by row; BRMEs built alike share them)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_heads, hidden_size, generator=generator) * hidden_size**-0.5


class GaussianHeads(nn.Module):
    """
    What every member type shares: K members' raw outputs become K means (plus, with `prior_scale > 0`, each member's
    frozen random prior, Osband et al. 2018) and K stds (`softplus + std_floor`).

    Features are `[..., H]` (shared by all members: a pooled feature `[B, H]`, or per-token hidden states `[B, T, H]`
    as a value model reads them) or, with `per_member=True`, `[K, N, H]` (member k reads its own row block k).
    Outputs are `[..., K]` (or `[N, K]`).
    The prior is a buffer (saved, never trained) on the layer-normalised, detached feature, with `N(0, 1/H)` weights,
    so each member's prior is of unit scale whatever the backbone's feature norm and moves no backbone weight. Its
    weights come from their own generator seeded with `PRIOR_SEED` (`prior_weights`), not from the global random state:
    every process of a distributed run builds the same prior without communicating (under ZeRO-3, transformers
    initialises weights inside a rank-0 gather that broadcasts parameters, not buffers: a prior drawn there was left
    uninitialised memory on the other ranks).
    """

    def __init__(self, hidden_size: int, num_heads: int, std_floor: float, prior_scale: float = 0.0):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.std_floor = std_floor
        self.prior_scale = prior_scale
        if prior_scale > 0:
            self.register_buffer("prior_weight", prior_weights(num_heads, hidden_size))

    def raw_outputs(self, features: torch.Tensor, per_member: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and pre-softplus stds `[..., K]` of each member before its prior."""
        raise NotImplementedError

    def prior(self, features: torch.Tensor, per_member: bool) -> torch.Tensor:
        x = F.layer_norm(features.detach().float(), (self.hidden_size,))
        weight = self.prior_weight.float()
        out = torch.einsum("knh,kh->nk", x, weight) if per_member else x @ weight.T
        return self.prior_scale * out

    def forward(self, features: torch.Tensor, per_member: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        means, raw_stds = self.raw_outputs(features, per_member)
        if self.prior_scale > 0:
            means = means + self.prior(features, per_member)
        return means, F.softplus(raw_stds) + self.std_floor


class BRMEHeads(GaussianHeads):
    """`head_type="linear"`: K Gaussian heads as one linear map, rows `[:K]` the means and `[K:]` the raw stds."""

    def __init__(self, hidden_size: int, num_heads: int, std_floor: float, prior_scale: float = 0.0):
        super().__init__(hidden_size, num_heads, std_floor, prior_scale)
        self.weight = nn.Parameter(torch.empty(2 * num_heads, hidden_size))
        self.bias = nn.Parameter(torch.empty(2 * num_heads))

    def raw_outputs(self, features: torch.Tensor, per_member: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.to(self.weight.dtype)
        if per_member:  # member k's rows of the weight on member k's feature
            weight = self.weight.view(2, self.num_heads, -1)
            out = torch.einsum("knh,jkh->njk", x, weight).flatten(1) + self.bias
        else:
            out = F.linear(x, self.weight, self.bias)
        return out.float().split(self.num_heads, dim=-1)


class BRMEMLPHeads(GaussianHeads):
    """`head_type="mlp"`: each member its own MLP, `H -> width (GELU) -> (mean, raw std)`, as batched weights."""

    def __init__(self, hidden_size: int, num_heads: int, std_floor: float, width: int, prior_scale: float = 0.0):
        super().__init__(hidden_size, num_heads, std_floor, prior_scale)
        self.width = width
        self.fc1_weight = nn.Parameter(torch.empty(num_heads, hidden_size, width))
        self.fc1_bias = nn.Parameter(torch.empty(num_heads, width))
        self.fc2_weight = nn.Parameter(torch.empty(num_heads, width, 2))
        self.fc2_bias = nn.Parameter(torch.empty(num_heads, 2))

    def raw_outputs(self, features: torch.Tensor, per_member: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.to(self.fc1_weight.dtype)
        pattern = "knh,khw->nkw" if per_member else "...h,khw->...kw"
        hidden = F.gelu(torch.einsum(pattern, x, self.fc1_weight) + self.fc1_bias)
        out = (torch.einsum("...kw,kwo->...ko", hidden, self.fc2_weight) + self.fc2_bias).float()  # [..., K, 2]
        return out[..., 0], out[..., 1]


class MemberLoRA(nn.Module):
    """
    `head_type="lora"`: K low-rank deltas on one linear layer of the backbone's top layers. The batch reaching those
    layers is member-major, `[K * B, ..., in]`; member k's delta `x A_k B_k` is added to row block k. `B_k` starts
    at zero (every member starts as the pretrained layer), `A_k` at random, so members drift apart as they train.
    It is applied by a forward hook on the wrapped layer, so PEFT adapters on that layer still work beside it.
    """

    def __init__(self, in_features: int, out_features: int, num_members: int, rank: int):
        super().__init__()
        self.num_members = num_members
        self.out_features = out_features
        self.lora_A = nn.Parameter(torch.empty(num_members, in_features, rank))
        self.lora_B = nn.Parameter(torch.empty(num_members, rank, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(self.num_members, -1, x.shape[-1]).to(self.lora_A.dtype)
        delta = torch.bmm(torch.bmm(rows, self.lora_A), self.lora_B)
        return delta.reshape(*x.shape[:-1], self.out_features)

    def add_delta(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # A bound method, not a closure: a deep-copied model then hooks its own copy of this module.
        return output + self(args[0]).to(output.dtype)


class MemberBatch(nn.Module):
    """Forward pre-hook of each adapted layer: repeat every batch-sized input K times (member-major), so the top
    layers run once per member; the first adapted layer sees the shared batch B, the later ones K * B already."""

    def __init__(self, num_members: int, first: bool):
        super().__init__()
        self.num_members = num_members
        self.first = first

    def expand(self, layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        batch = hidden.shape[0] if self.first else hidden.shape[0] // self.num_members

        def repeat(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
                return value.repeat(self.num_members, *([1] * (value.dim() - 1)))
            if isinstance(value, tuple):  # e.g. the rotary (cos, sin) pair
                return tuple(repeat(v) for v in value)
            return value

        return tuple(repeat(v) for v in args), {key: repeat(v) for key, v in kwargs.items()}


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of `num_hidden_layers` layers (`model.layers` of a decoder, `encoder.layer` of BERT)."""
    count = getattr(backbone.config, "num_hidden_layers", None)
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(
        f"head_type='lora' needs the backbone's list of {count} layers; none found in {type(backbone).__name__}."
    )


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
        hidden, k = config.text_config.hidden_size, config.num_heads
        if config.head_type == "mlp":
            width = config.head_hidden_size or max(16, hidden // 4)
            self.score = BRMEMLPHeads(hidden, k, config.std_floor, width, config.prior_scale)
        else:
            self.score = BRMEHeads(hidden, k, config.std_floor, config.prior_scale)
        if config.head_type == "lora":
            self._add_member_adapters()
        self.post_init()

    def _add_member_adapters(self) -> None:
        """Per-member LoRA on every linear layer of the top `member_layers` backbone layers (`head_type="lora"`)."""
        config = self.config
        top = list(transformer_layers(self.backbone))[-config.member_layers :]
        self.member_adapters = nn.ModuleDict()
        self.member_batches = nn.ModuleList()
        for i, layer in enumerate(top):
            batcher = MemberBatch(config.num_heads, first=i == 0)
            self.member_batches.append(batcher)
            layer.register_forward_pre_hook(batcher.expand, with_kwargs=True)
            for name, linear in layer.named_modules():
                if isinstance(linear, nn.Linear):
                    adapter = MemberLoRA(
                        linear.in_features, linear.out_features, config.num_heads, config.member_lora_rank
                    )
                    self.member_adapters[f"{i}_{name}".replace(".", "_")] = adapter
                    linear.register_forward_hook(adapter.add_delta)

    def _init_weights(self, module):
        if isinstance(module, MemberLoRA):
            nn.init.normal_(module.lora_A, std=module.lora_A.shape[1] ** -0.5)
            nn.init.zeros_(module.lora_B)
            return None
        if not isinstance(module, GaussianHeads):
            return super()._init_weights(module)
        init_range = self.config.head_init_range
        if init_range is None:
            init_range = getattr(self.config.text_config, "initializer_range", None) or 0.02
        k = module.num_heads
        std_bias = inverse_softplus(self.config.init_std - self.config.std_floor)
        # Distinct random weights give each member its own start, the first source of ensemble diversity.
        if isinstance(module, BRMEMLPHeads):
            nn.init.normal_(module.fc1_weight, std=module.hidden_size**-0.5)
            nn.init.zeros_(module.fc1_bias)
            nn.init.normal_(module.fc2_weight, std=init_range)
            with torch.no_grad():
                module.fc2_bias[:, 0].zero_()
                module.fc2_bias[:, 1].fill_(std_bias)
        else:
            nn.init.normal_(module.weight, std=init_range)
            with torch.no_grad():
                module.bias[:k].zero_()
                module.bias[k:].fill_(std_bias)
        if module.prior_scale > 0:  # the seeded prior again (the same on every rank), not a global-RNG draw
            with torch.no_grad():
                module.prior_weight.copy_(prior_weights(k, module.hidden_size).to(module.prior_weight))
        return None

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
        head_type: str = "linear",
        prior_scale: float = 0.0,
        head_hidden_size: int | None = None,
        member_layers: int = 1,
        member_lora_rank: int = 8,
        **from_pretrained_kwargs,
    ) -> "BRMERewardModel":
        """
        Build a new BRME on the weights of any pretrained causal LM, encoder or base model checkpoint; the members
        start from a fresh random init. The member settings (`head_type`, `prior_scale`, ...) are [`BRMEConfig`]'s.
        `from_pretrained_kwargs` go to `AutoModel.from_pretrained` (`dtype`, `trust_remote_code`, `revision`, ...).
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
            head_type=head_type,
            prior_scale=float(prior_scale),
            head_hidden_size=head_hidden_size,
            member_layers=member_layers,
            member_lora_rank=member_lora_rank,
        )
        config._name_or_path = str(pretrained_model_name_or_path)
        model = cls(config, backbone=backbone)
        model.score.to(device=backbone.device, dtype=backbone.dtype)
        if config.head_type == "lora":
            model.member_adapters.to(device=backbone.device, dtype=backbone.dtype)
        return model

    def score_hidden(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The members' `(means, stds)` `[N, ..., K]` on backbone outputs `[N, ..., H]` (pooled features, or per-token
        hidden states as a PPO value model reads them). With `head_type="lora"` the backbone's output is
        member-major, `[K * N, ..., H]`, and member k reads its own block.
        """
        if self.config.head_type != "lora":
            return self.score(hidden)
        k = self.config.num_heads
        means, stds = self.score(hidden.reshape(k, -1, hidden.shape[-1]), per_member=True)
        shape = (hidden.shape[0] // k, *hidden.shape[1:-1], k)
        return means.reshape(shape), stds.reshape(shape)

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
        hidden = out.last_hidden_state
        k = self.config.num_heads if self.config.head_type == "lora" else 1  # lora: a member-major [K * B, T, H]
        mask = attention_mask.repeat(k, 1) if attention_mask is not None and k > 1 else attention_mask
        means, stds = self.score_hidden(self.pool(hidden, mask))
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
