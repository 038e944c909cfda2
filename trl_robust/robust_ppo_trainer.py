"""PPO for RLHF on current TRL, with the old `PPOTrainer` call shape and a robust (BRME) reward.

The PPO maths (masked statistics, KL estimators, GAE, losses, token log-probabilities, batch sizes) lives in
`ppo_utils.py`. This file reads top to bottom: the model plumbing (value/reward backbones and heads, the policy's
response logits, the policy + value module), then the trainer: construction in named steps, data, rollout, PPO epochs,
metrics, the training loop, and saving / resuming.
"""

import copy
import functools
import inspect
import json
import math
import os
import textwrap
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn as nn
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import is_peft_available, is_rich_available, logging
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.base_trainer import _BaseTrainer
from trl.trainer.utils import disable_dropout_in_model

from .aggregation import Aggregation
from .checkpointing import atomic_checkpoint
from .fsdp import layer_classes_to_wrap, root_unsharded
from .model_card import RobustModelCardMixin, write_model_card
from .modeling_brme import BRMEHeads, BRMERewardModel
from .monitor import distinct_bigram_ratio, masked_token_lists, monitor_metrics, watched
from .ppo_utils import (
    PPOBatchSizes,
    apply_missing_stop_penalty,
    close_with_eos,
    compute_gae,
    compute_rewards,
    correlation,
    discounted_returns,
    entropy_from_logits,
    explained_variance,
    group_baseline,
    group_std,
    kl_penalty,
    last_real_index,
    lengths_to_mask,
    masked_mean,
    masked_whiten,
    policy_loss,
    position_ids_from_mask,
    ppo_batch_sizes,
    prompt_order,
    token_logprobs,
    truncate_after_stop,
    value_loss,
    whiten_advantages,
)
from .robust_ppo_config import RobustPPOConfig
from .tokenization import pad_batch, padding_id, tokenize_for_reward
from .validation import check_finite_scores, token_id_bound, validate_prompt_rows, validate_token_rows

if is_peft_available():
    from peft import PeftConfig, PeftModel, get_peft_model

logger = logging.get_logger(__name__)

_REWARD_NORMALIZATION = "reward_normalization.json"  # (mean, std) of reward_normalization_batches, for resuming
_STATE = "policy_and_value.pt"  # full policy + value weights in non-DeepSpeed checkpoints, for resuming


def load_value_model(
    policy_path: str,
    reward_path: str,
    tokenizer: PreTrainedTokenizerBase,
    reward_tokenizer: PreTrainedTokenizerBase,
    value_path: str | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """
    The value model a PPO run starts from, and the `reward_processing_class` to give the trainer. The value model reads
    the policy's tokens: it starts from the reward model (as the PPO implementation details advise) when the two share
    a vocabulary, else from the policy; `value_path` overrides both. The reward tokenizer comes back only when it
    differs from the policy's (the trainer then scores re-tokenised text), else None.
    """
    reward_processing_class = _reward_tokenizer_if_different(tokenizer, reward_tokenizer)
    path = value_path or (reward_path if reward_processing_class is None else policy_path)
    value_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **from_pretrained_kwargs)
    return value_model, reward_processing_class


def _reward_tokenizer_if_different(
    tokenizer: PreTrainedTokenizerBase, reward_tokenizer: PreTrainedTokenizerBase
) -> PreTrainedTokenizerBase | None:
    """The trainer's `reward_processing_class`: None where the reward model reads the policy's vocabulary (it scores
    the policy's tokens as they are), else the reward tokenizer (answers are re-tokenised for it)."""
    return None if reward_tokenizer.get_vocab() == tokenizer.get_vocab() else reward_tokenizer


def load_ppo_models(
    policy_path: str,
    reward_path: str,
    value_path: str | None = None,
    use_critic: bool = True,
    **from_pretrained_kwargs: Any,
) -> dict[str, Any]:
    """
    Everything a PPO run loads from folders (or hub ids), as `RobustPPOTrainer` keyword arguments: `processing_class`
    (the policy's tokenizer), `model` and `ref_model` (the policy, twice: the reference keeps its initial weights),
    `reward_model`, and `value_model` with `reward_processing_class` from [`load_value_model`]. With
    `use_critic=False` (a critic-free run, `RobustPPOConfig.use_critic`) no value model is loaded: `value_model` is
    None, which saves a policy-sized load and its memory. `from_pretrained_kwargs` (e.g. `trust_remote_code`) go to
    every load.
    """
    tokenizer = AutoTokenizer.from_pretrained(policy_path, **from_pretrained_kwargs)
    reward_tokenizer = AutoTokenizer.from_pretrained(reward_path, **from_pretrained_kwargs)
    if use_critic:
        value_model, reward_processing_class = load_value_model(
            policy_path, reward_path, tokenizer, reward_tokenizer, value_path, **from_pretrained_kwargs
        )
    else:
        value_model, reward_processing_class = None, _reward_tokenizer_if_different(tokenizer, reward_tokenizer)
    return {
        "processing_class": tokenizer,
        "model": AutoModelForCausalLM.from_pretrained(policy_path, **from_pretrained_kwargs),
        "ref_model": AutoModelForCausalLM.from_pretrained(policy_path, **from_pretrained_kwargs),
        "reward_model": AutoModelForSequenceClassification.from_pretrained(reward_path, **from_pretrained_kwargs),
        "value_model": value_model,
        "reward_processing_class": reward_processing_class,
    }


# --------------------------------------------------------------------------------------------------------------------
# Model plumbing
# --------------------------------------------------------------------------------------------------------------------


def _is_peft(model: nn.Module) -> bool:
    return is_peft_available() and isinstance(model, PeftModel)


def _peft_base(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (`get_base_model()`: its adapter layers are still injected and
    active), or `model` itself when it is not a `PeftModel`. Its attributes (`score`, `generation_config`, the forward's
    signature) are the ones to read; the reference policy of a PEFT run is `PeftModel.disable_adapter()`, in
    `RobustPPOTrainer._reference`."""
    return model.get_base_model() if _is_peft(model) else model


def _backbone(model: nn.Module) -> nn.Module:
    """The bare transformer of a sequence-classification or BRME model (`model.<base_model_prefix>`)."""
    model = _peft_base(model)
    prefix = getattr(model, "base_model_prefix", None)
    backbone = getattr(model, prefix, None) if prefix else None
    if backbone is None or not hasattr(model, "score"):
        raise ValueError(
            f"{type(model).__name__} is not usable as a value/reward model: it needs a backbone at "
            "`model.<base_model_prefix>` and a `score` head (any AutoModelForSequenceClassification decoder with "
            "num_labels=1, or a BRMERewardModel)."
        )
    return backbone


def _is_brme(model: nn.Module) -> bool:
    return isinstance(_peft_base(model), BRMERewardModel)


def _head(model: nn.Module) -> nn.Module:
    return _peft_base(model).score


def token_values(value_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """
    Per-token values `[batch, seq]` of a value model: its backbone's hidden states through its `score` head. A
    sequence-classification model gives its single label; a BRME gives the mean of its heads' means.
    """
    hidden = _backbone(value_model)(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state
    if _is_brme(value_model):  # the mean of its members' means (`score_hidden` knows each member type's layout)
        return _peft_base(value_model).score_hidden(hidden)[0].mean(-1)
    return _head(value_model)(hidden)[..., 0].float()


def zero_value_head(value_model: nn.Module) -> None:
    """Make a value model output 0 everywhere (`value_head_init="zero"`) by zeroing its linear `score` head, so that
    GAE starts from the discounted returns; the head still learns (its gradient is the hidden state), the backbone
    from the second step on."""
    head = _head(value_model)
    if isinstance(head, nn.Linear):
        rows = slice(None)
    elif isinstance(head, BRMEHeads) and head.prior_scale == 0:  # rows [:K] are the means, the value's mean of them
        rows = slice(0, head.num_heads)
    else:
        raise ValueError(
            f"value_head_init='zero' needs a linear `score` head (or a linear BRME head without a prior); "
            f"{type(value_model).__name__} has a {type(head).__name__}. Use value_head_init='keep'."
        )
    with torch.no_grad():
        head.weight[rows].zero_()
        if head.bias is not None:
            head.bias[rows].zero_()


@functools.cache
def _accepts_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def response_logits(
    policy: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
) -> torch.Tensor:
    """
    Policy logits `[batch, response_length, vocab]` at the positions that predict the response tokens
    (`context_length - 1` to the second-to-last). A causal LM of transformers gets these positions as `logits_to_keep`,
    so its LM head runs on them only: the prompt's full-vocabulary logits are never computed, and no slice of a larger
    logits tensor has to be back-propagated.
    """
    positions = torch.arange(context_length - 1, input_ids.shape[1] - 1, device=input_ids.device)
    keep = _accepts_logits_to_keep(type(_peft_base(policy)))
    logits = policy(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **({"logits_to_keep": positions} if keep else {}),
    ).logits
    return logits if keep else logits[:, context_length - 1 : -1]


class PolicyAndValue(nn.Module):
    """Policy and value model in one module, so one `accelerator.prepare` (DDP / DeepSpeed) trains both."""

    def __init__(
        self, policy: nn.Module, value_model: nn.Module | None, gradient_checkpointing_kwargs: dict | None = None
    ):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        self.config = policy.config  # read by Trainer utilities (model card, tags)
        self.gradient_checkpointing_kwargs = gradient_checkpointing_kwargs

    @property
    def _no_split_modules(self) -> list[str]:
        # FSDP's TRANSFORMER_BASED_WRAP reads it from the prepared model: shard the layers of both one by one.
        return layer_classes_to_wrap(self.policy, self.value_model)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return getattr(self.policy, "is_gradient_checkpointing", False)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None):
        # TRL's generation context re-enables checkpointing without kwargs: keep the configured ones.
        kwargs = gradient_checkpointing_kwargs or self.gradient_checkpointing_kwargs
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_disable(self):
        self.policy.gradient_checkpointing_disable()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns `(policy logits [B, R, V], values [B, R])` at the positions that predict the R response tokens;
        positions come from the mask (left padding). Without a value model (`use_critic=False`) the values are None."""
        # V(s_t) for response token t is read where the token is predicted: position context_length - 1 + t.
        values = None
        if self.value_model is not None:
            values = token_values(self.value_model, input_ids, attention_mask)[:, context_length - 1 : -1]
        # The policy runs second so that the backward, which starts from the latest operations, finishes the policy
        # (whose tied embedding and LM head gradients are summed at the end) before the value model's gradients exist.
        logits = response_logits(self.policy, input_ids, attention_mask, context_length)
        return logits, values


def _empty_cache() -> None:
    """Return cached accelerator memory to the device (a no-op on CPU). No `gc.collect()`: tensors are freed by
    reference counting once deleted, and a full collection costs ~1 s per call in a large Python process."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.empty_cache()


@contextmanager
def _as_model_generation_config(model: nn.Module, config: GenerationConfig):
    """Make `config` the model's own generation config while generating: transformers fills the fields a passed
    config leaves unset (such as `eos_token_id=None`, "never stop") from the model's, which would stop rollouts at
    EOS when no stop token was asked for."""
    target = _peft_base(model)
    saved = target.generation_config
    target.generation_config = config
    try:
        yield
    finally:
        target.generation_config = saved


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------


class RobustPPOTrainer(RobustModelCardMixin, _BaseTrainer):
    """
    Proximal Policy Optimization for RLHF (Ziegler et al. 2019; Ouyang et al. 2022) with a robust reward.

    The constructor keeps the argument order of TRL 1.12's `PPOTrainer`, so an old script migrates by changing its
    import. The reward model is either a [`BRMERewardModel`] (the score is `args.reward_aggregation` of its heads, and
    the heads' statistics are logged under `robust/`) or any sequence-classification reward model with one label.

    Args:
        args ([`RobustPPOConfig`]): training configuration.
        processing_class ([`~transformers.PreTrainedTokenizerBase`]): tokenizer of the policy, value and reward
            models (they must share it).
        model ([`~transformers.PreTrainedModel`]): the policy, a causal LM.
        ref_model ([`~transformers.PreTrainedModel`] or `None`): the reference policy of the KL penalty; `None` uses a
            frozen copy of the policy, or the policy with its adapters disabled when it is a PEFT model.
        reward_model ([`~transformers.PreTrainedModel`]): a BRME or a sequence-classification model (num_labels=1).
        train_dataset ([`~datasets.Dataset`]): prompts, as a tokenized `input_ids` column (the old format) or a
            `prompt` column of text or conversational messages (tokenized here, with the chat template and
            `add_generation_prompt=True` for messages).
        value_model ([`~transformers.PreTrainedModel`]): the critic: a sequence-classification model with one label
            (usually initialised from the reward model) or a BRME (value = mean of its heads).
        data_collator (`Callable`, *optional*): turns a list of dataset rows into a batch with `input_ids` (and
            `attention_mask`); the trainer left-aligns its output. Defaults to left padding with the pad token.
        eval_dataset ([`~datasets.Dataset`], *optional*): prompts for the sample completions printed during training.
        optimizers (`tuple`, *optional*): `(optimizer, lr_scheduler)`; defaults to AdamW (with `args.adam_epsilon`)
            and `args.lr_scheduler_type`, stepped once per PPO update.
        callbacks (`list` of [`~transformers.TrainerCallback`], *optional*): extra callbacks.
        peft_config ([`~peft.PeftConfig`], *optional*): wrap the policy in this adapter.
    """

    _tag_names = ["trl", "ppo", "trl-robust"]
    _name = "RobustPPO"
    _paper = {
        "title": "Fine-Tuning Language Models from Human Preferences",
        "id": "1909.08593",
        "citation": textwrap.dedent("""\
            @article{ziegler2019fine,
                title   = {{Fine-Tuning Language Models from Human Preferences}},
                author  = {Daniel M. Ziegler and Nisan Stiennon and Jeffrey Wu and Tom B. Brown and Alec Radford and
                           Dario Amodei and Paul F. Christiano and Geoffrey Irving},
                year    = 2019,
                eprint  = {arXiv:1909.08593}
            }"""),
    }

    def __init__(
        self,
        args: RobustPPOConfig,
        processing_class: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        ref_model: PreTrainedModel | None,
        reward_model: PreTrainedModel,
        train_dataset: Dataset,
        value_model: PreTrainedModel,
        data_collator: Any = None,
        eval_dataset: Dataset | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        callbacks: list[TrainerCallback] | None = None,
        peft_config: "PeftConfig | None" = None,
        reward_processing_class: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self._check_args(args, model, ref_model, reward_model, value_model, train_dataset)
        value_model = self._choose_value_model(args, value_model)
        self._set_token_ids(args, processing_class, model)
        model = self._build_models(args, model, ref_model, value_model, reward_model, peft_config)
        self.reward_tokenizer = self._check_reward_tokenizer(
            self.tokenizer, model, reward_model, reward_processing_class
        )
        train_dataset = self._prepare_dataset(train_dataset, args, "train")
        if eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, args, "eval")
        super().__init__(
            model=PolicyAndValue(model, value_model, args.gradient_checkpointing_kwargs),
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.user_collator = data_collator
        self._derive_batch_sizes(len(train_dataset))  # after Trainer's init: needs the accelerator's process count
        self._build_optimizer_and_place_models()
        # (mean, std) of the initial policy's scores, set by `train` when args.reward_normalization_batches > 0
        self.reward_normalization: tuple[float, float] | None = None

    # ---------------------------------------------------------------------------------------------------------------
    # Construction steps, in the order `__init__` runs them
    # ---------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_args(args, model, ref_model, reward_model, value_model, train_dataset) -> None:
        if args is None or not isinstance(args, RobustPPOConfig):
            raise TypeError(f"args must be a RobustPPOConfig, got {type(args).__name__}.")
        if train_dataset is None:
            raise ValueError("RobustPPOTrainer needs a train_dataset of prompts.")
        if ref_model is not None and ref_model is model:
            raise ValueError("model and ref_model must be different objects; pass ref_model=None to copy the policy.")
        if value_model is not None and value_model is reward_model:
            raise ValueError("value_model and reward_model must be different objects: the value model is trained.")

    @staticmethod
    def _choose_value_model(args: RobustPPOConfig, value_model: PreTrainedModel | None) -> PreTrainedModel | None:
        """The value model that is trained: the one given (its head zeroed for `value_head_init="zero"`), or None in
        the critic-free mode, where a given one is dropped (not run, trained nor saved), so old scripts that always
        build one still run."""
        if not args.use_critic:
            if value_model is not None:
                logger.warning("use_critic=False: the value_model passed to RobustPPOTrainer is not used.")
            return None
        if value_model is None:
            raise ValueError("RobustPPOTrainer needs a value_model unless use_critic=False.")
        if args.value_head_init == "zero":
            zero_value_head(value_model)
        return value_model

    def _set_token_ids(self, args: RobustPPOConfig, processing_class: Any, model: PreTrainedModel) -> None:
        """The policy's tokenizer (given a pad token when it has none) and the token ids the trainer looks for or
        writes: the stop token, the token `missing_eos_penalty` checks, and the filler written at padding positions."""
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("The tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token.")
            # Safe: real tokens are always found through attention masks, never by comparing with the pad id.
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        self.stop_token_id = tokenizer.eos_token_id if args.stop_token == "eos" else args.stop_token_id
        # The token whose absence `missing_eos_penalty` punishes: the stop token, or EOS when there is none.
        self.penalised_stop_id = self.stop_token_id if self.stop_token_id is not None else tokenizer.eos_token_id
        # The id written at padding positions. Its value never matters (masks exclude those positions) but it must index
        # the embeddings: a pad token added to the tokenizer without resizing the models (as TRL's old PPO example did
        # with "[PAD]") would be out of range.
        num_embeddings = model.get_input_embeddings().num_embeddings
        self.filler_id = self.pad_token_id if self.pad_token_id < num_embeddings else 0

    def _build_models(
        self,
        args: RobustPPOConfig,
        model: PreTrainedModel,
        ref_model: PreTrainedModel | None,
        value_model: PreTrainedModel,
        reward_model: PreTrainedModel,
        peft_config: "PeftConfig | None",
    ) -> nn.Module:
        """Wrap the policy in its adapter (`peft_config`), make the reference (a frozen copy of the policy unless given,
        or none for a PEFT policy, whose reference is the policy with adapters disabled), freeze the reward model, turn
        dropout off in all four and set up gradient checkpointing. Returns the policy, a `PeftModel` with an adapter."""
        if peft_config is not None:
            if not is_peft_available():
                raise ImportError("peft_config needs the `peft` package: pip install peft.")
            if not isinstance(peft_config, PeftConfig):
                raise TypeError(f"peft_config must be a peft.PeftConfig, got {type(peft_config).__name__}.")
            if _is_peft(model):
                raise ValueError("model is already a PeftModel; pass its base model with peft_config, or no config.")
            model = get_peft_model(model, peft_config)
        self.is_peft_model = _is_peft(model)
        if ref_model is None and not self.is_peft_model:
            if any(hasattr(p, "ds_id") for p in model.parameters()):
                raise ValueError(
                    "The policy is already partitioned by DeepSpeed ZeRO-3 (loaded after the config enabled it), so it "
                    "cannot be copied into a reference model: pass ref_model explicitly."
                )
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        reward_model.eval().requires_grad_(False)
        for module in (model, ref_model, value_model, reward_model):
            if module is not None:
                disable_dropout_in_model(module)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
            if self.is_peft_model:
                model.enable_input_require_grads()
            if value_model is not None and getattr(value_model, "supports_gradient_checkpointing", False):
                value_model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs
                )
        self.policy_model = model
        self.value_model = value_model
        self.ref_model = ref_model
        self.reward_model = reward_model
        self.reward_is_brme = _is_brme(reward_model)
        # robust_lambda=None means the BRME's own (a PeftModel forwards `.config` to the model it wraps)
        brme_lambda = reward_model.config.robust_lambda if self.reward_is_brme else None
        self.aggregation = Aggregation.from_config(args, brme_robust_lambda=brme_lambda)
        return model

    def _derive_batch_sizes(self, dataset_len: int) -> None:
        """`self.batch_sizes`, every derived size of the run (`ppo_batch_sizes`: checked once, read everywhere), and
        what follows from them."""
        self.train_dataset_len = dataset_len
        self.batch_sizes: PPOBatchSizes = ppo_batch_sizes(self.args, self.accelerator.num_processes, dataset_len)
        # One micro-batch per update: the rollout's forward doubles as the first PPO epoch's (see
        # `_old_logprobs_and_values`). An attribute, so that a test can turn the reuse off and compare.
        self.reuse_rollout_forward = self.batch_sizes.one_micro_batch_per_update
        num_updates = self.batch_sizes.num_total_batches
        self.sample_generations_freq = max(1, num_updates // max(1, self.args.num_sample_generations))

    def _build_optimizer_and_place_models(self) -> None:
        """AdamW and the scheduler (stepped once per update), the distributed wrapping of the trained policy + value
        pair, and the frozen reward and reference models on the device (under DeepSpeed: as inference engines)."""
        self.create_optimizer_and_scheduler(num_training_steps=self.batch_sizes.num_total_batches)
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.is_deepspeed_enabled:
            self.deepspeed = self.model_wrapped
        device = self.accelerator.device
        if self.is_deepspeed_enabled:
            self.reward_model = prepare_deepspeed(self.reward_model, self.accelerator)
            if self.ref_model is not None:
                self.ref_model = prepare_deepspeed(self.ref_model, self.accelerator)
        else:
            self.reward_model = self.reward_model.to(device)
            if self.ref_model is not None:
                self.ref_model = self.ref_model.to(device)
        # Raw modules: their submodules (backbone, score head) are called directly; ZeRO-3 hooks still gather.
        self._reward_module = getattr(self.reward_model, "module", self.reward_model)
        self._ref_module = getattr(self.ref_model, "module", self.ref_model) if self.ref_model is not None else None

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer; with `value_learning_rate`, each of its parameter groups (weight decay or not) is split
        into the policy's part and the value model's, which gets that learning rate (the scheduler scales both). An
        optimizer passed in `optimizers=` is used as it is."""
        given = self.optimizer is not None  # passed in `optimizers=`: its groups are the caller's
        optimizer = super().create_optimizer(model)
        if given or self.args.value_learning_rate is None or self.value_model is None:
            return optimizer
        value_ids = {id(p) for p in self.value_model.parameters()}
        groups, optimizer.param_groups = optimizer.param_groups, []
        for group in groups:
            options = {key: value for key, value in group.items() if key != "params"}
            policy = [p for p in group["params"] if id(p) not in value_ids]
            value = [p for p in group["params"] if id(p) in value_ids]
            if policy:
                optimizer.add_param_group({**options, "params": policy})
            if value:
                optimizer.add_param_group({**options, "params": value, "lr": self.args.value_learning_rate})
        return optimizer

    # ---------------------------------------------------------------------------------------------------------------
    # Data
    # ---------------------------------------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset: Dataset, args: RobustPPOConfig, name: str) -> Dataset:
        """Keep an `input_ids` dataset as it is; tokenize a `prompt` dataset (text, or messages with the template)."""
        columns = dataset.column_names
        if "input_ids" in columns:
            validate_token_rows(dataset, name, token_id_bound(self.tokenizer, self.policy_model, self.value_model))
            return dataset
        if "prompt" not in columns:
            raise ValueError(f"The {name} dataset needs an `input_ids` or a `prompt` column; it has {columns}.")
        validate_prompt_rows(dataset, name)
        tokenizer = self.tokenizer

        def tokenize(row):
            prompt = row["prompt"]
            if isinstance(prompt, list):  # conversational: a list of {"role", "content"} messages
                text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
                return {"input_ids": tokenizer(text, add_special_tokens=False)["input_ids"]}
            return {"input_ids": tokenizer(prompt)["input_ids"]}

        return dataset.map(tokenize, remove_columns=columns, num_proc=args.dataset_num_proc, desc=f"Tokenize {name}")

    def _collate(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded `(input_ids, attention_mask)` of some prompts."""
        if self.user_collator is None:
            return pad_batch([list(row["input_ids"]) for row in rows], self.filler_id, "left")
        batch = self.user_collator(rows)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        # Left-align whatever padding side the collator used.
        return pad_batch([row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)], self.filler_id, "left")

    def _prompt_batch(self, update: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's prompts for update `update` (0-based): a seeded shuffle per epoch, drop-last, so the data order
        depends only on the update index (which makes resuming exact)."""
        sizes = self.batch_sizes
        epoch, index = divmod(update, sizes.batches_per_epoch)
        order = prompt_order(self.train_dataset_len, self.args.seed, epoch)
        start = index * sizes.prompts_per_update + self.accelerator.process_index * sizes.local_prompts_per_update
        indices = order[start : start + sizes.local_prompts_per_update]
        queries, query_mask = self._collate([self.train_dataset[i] for i in indices])
        # num_samples_per_prompt answers per prompt, in consecutive rows (`group_baseline` reads them so)
        samples = sizes.num_samples_per_prompt
        return queries.repeat_interleave(samples, 0), query_mask.repeat_interleave(samples, 0)

    # ---------------------------------------------------------------------------------------------------------------
    # Rollout
    # ---------------------------------------------------------------------------------------------------------------

    def _sampling_config(self, temperature: float) -> GenerationConfig:
        """How rollouts (and, near-greedy, sample completions) are generated: pure sampling at `temperature` up to
        `response_length` tokens, stopping only at the stop token."""
        return GenerationConfig(
            max_new_tokens=self.args.response_length,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=self.stop_token_id,
            pad_token_id=self.filler_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )

    @torch.no_grad()
    def _generate(self, queries: torch.Tensor, query_mask: torch.Tensor, temperature: float) -> torch.Tensor:
        """Sampled responses `[B, response_length]` (right-padded), generated in chunks of
        `local_rollout_forward_batch_size` with the ZeRO-3 weights gathered once (if `ds3_gather_for_generation`)."""
        config = self._sampling_config(temperature)
        chunk = self.args.local_rollout_forward_batch_size
        responses = torch.full(
            (queries.shape[0], self.args.response_length), self.filler_id, dtype=torch.long, device=queries.device
        )
        with (
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
            ) as unwrapped,
            root_unsharded(self.model_wrapped),
        ):
            policy = unwrapped.policy
            with _as_model_generation_config(policy, config):
                for i in range(0, queries.shape[0], chunk):
                    out = policy.generate(
                        input_ids=queries[i : i + chunk],
                        attention_mask=query_mask[i : i + chunk],
                        generation_config=config,
                    )
                    new = out[:, queries.shape[1] :]
                    responses[i : i + chunk, : new.shape[1]] = new
        return responses

    @contextmanager
    def _reference(self):
        """The reference policy: the ref model, or the PEFT policy with its adapters disabled (or `ref_adapter_name`
        active)."""
        if self._ref_module is not None:
            yield self._ref_module
            return
        policy = self.accelerator.unwrap_model(self.model_wrapped).policy
        if self.args.ref_adapter_name:
            policy.set_adapter(self.args.ref_adapter_name)
            try:
                yield policy
            finally:
                policy.set_adapter(self.args.model_adapter_name or "default")
        else:
            with policy.disable_adapter():
                yield policy

    def _policy_logprobs(self, policy: nn.Module, input_ids, attention_mask, responses, context_length: int):
        logits = response_logits(policy, input_ids, attention_mask, context_length)
        return token_logprobs(logits, responses, self.args.temperature)

    @staticmethod
    def _check_reward_tokenizer(tokenizer, policy, reward_model, reward_tokenizer) -> PreTrainedTokenizerBase | None:
        """The reward model's own tokenizer when it differs from the policy's (responses are then re-tokenised as
        text), else None (policy tokens go to the reward model as they are)."""
        if reward_tokenizer is not None:
            reward_tokenizer = getattr(reward_tokenizer, "tokenizer", reward_tokenizer)
            return None if reward_tokenizer.get_vocab() == tokenizer.get_vocab() else reward_tokenizer
        # Policy ids go to the reward model as they are: it must know every id the policy can produce.
        vocab = getattr(reward_model.config.get_text_config(), "vocab_size", None)
        policy_vocab = policy.config.get_text_config().vocab_size  # not the weights: ZeRO-3 partitions them
        if vocab is not None and vocab < policy_vocab:
            raise ValueError(
                f"The reward model's vocabulary ({vocab} tokens) is smaller than the policy's ({policy_vocab}): "
                "they do not share a tokenizer. Pass the reward model's tokenizer as "
                "reward_processing_class= and responses are scored as text, re-tokenised the way the reward model "
                "was trained."
            )
        return None

    def _retokenize(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy tokens -> text -> reward-model tokens through `tokenize_for_reward`, as BRMERewardTrainer trained."""
        rows = []
        limit = self.reward_tokenizer.model_max_length
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            real = [t for t, m in zip(ids, mask, strict=True) if m]
            n_prompt = sum(mask[:context_length])
            prompt = self.tokenizer.decode(real[:n_prompt], skip_special_tokens=True)
            response = self.tokenizer.decode(real[n_prompt:], skip_special_tokens=True)
            tokens = tokenize_for_reward(self.reward_tokenizer, response, prompt)
            if limit is not None and len(tokens) > limit:  # drop the prompt's start, keep the first (CLS/BOS) token
                tokens = tokens[:1] + tokens[len(tokens) - limit + 1 :]
            rows.append(tokens)
        ids, mask = pad_batch(rows, padding_id(self.reward_tokenizer))
        return ids.to(input_ids.device), mask.to(input_ids.device)

    @torch.no_grad()
    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """
        Score (prompt + truncated response) sequences with the reward model at their last real token, each closed with
        EOS as the reward model was trained (`tokenization.tokenize_for_reward`). With a `reward_processing_class` that
        differs from the policy's, the prompt and response are decoded and re-tokenised for the reward model
        (`context_length`: the width of the left-padded prompt block); else the policy's tokens are scored, with EOS
        appended to the answers that did not end in it (`ppo_utils.close_with_eos`).

        Returns `{"scores": [B]}`, plus `"means"` and `"stds"` `[B, K]` for a BRME, whose score is
        `args.reward_aggregation` of its heads.
        """
        rm = self._reward_module
        if self.reward_tokenizer is not None:
            input_ids, attention_mask = self._retokenize(input_ids, attention_mask, context_length)
        elif self.tokenizer.eos_token_id is not None:
            # Closed with EOS as `_retokenize` (tokenize_for_reward) closes the text: a truncated answer is otherwise
            # read at its last word, a position the reward model was never trained to read.
            input_ids, attention_mask = close_with_eos(
                input_ids, attention_mask, self.tokenizer.eos_token_id, self.filler_id
            )
        position_ids = position_ids_from_mask(attention_mask)
        if self.reward_is_brme:
            out = rm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
            scores = self.aggregation(out.means, out.stds)
            return {"scores": scores.float(), "means": out.means.float(), "stds": out.stds.float()}
        if hasattr(rm, "score") and getattr(rm, "base_model_prefix", None):
            # Read the head at the last real token found by the mask (transformers' own pooling compares with the pad
            # id, which is wrong when pad == eos and the response ends with eos).
            hidden = _backbone(rm)(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            logits = _head(rm)(hidden[rows, last_real_index(attention_mask)])
        else:  # e.g. an encoder classifier, which pools its first token
            logits = rm(input_ids=input_ids, attention_mask=attention_mask).logits
        return {"scores": logits[:, 0].float()}

    @torch.no_grad()
    def _score_in_chunks(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> dict[str, torch.Tensor]:
        """[`score`] over the batch in chunks of `local_rollout_forward_batch_size`, under the training forward's
        autocast; the chunks' outputs concatenated (`"scores"`, and a BRME's `"means"`, `"stds"`)."""
        chunk = self.args.local_rollout_forward_batch_size
        parts = []
        for i in range(0, input_ids.shape[0], chunk):
            with self.accelerator.autocast():
                parts.append(self.score(input_ids[i : i + chunk], attention_mask[i : i + chunk], context_length))
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    @torch.no_grad()
    def _sample(self, queries: torch.Tensor, query_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Answers to a batch of prompts, cut after the stop token: `responses`, `lengths`, `has_stop` (whether the
        answer holds the penalised stop token), `response_mask`, and the prompt-plus-answer `input_ids` and
        `attention_mask`."""
        raw_responses = self._generate(queries, query_mask, self.args.temperature)
        responses, lengths, has_stop = truncate_after_stop(raw_responses, self.stop_token_id, self.filler_id)
        response_mask = lengths_to_mask(lengths, responses.shape[1])
        if self.penalised_stop_id != self.stop_token_id:
            has_stop = (response_mask & (responses == self.penalised_stop_id)).any(1)
        input_ids = torch.cat([queries, responses], dim=1)
        attention_mask = torch.cat([query_mask, response_mask.long()], dim=1)
        return responses, lengths, has_stop, response_mask, input_ids, attention_mask

    @torch.no_grad()
    def _reward_statistics(self, num_batches: int) -> tuple[float, float]:
        """Mean and std over every process of the scores of `num_batches` batches of answers of the current (initial)
        policy to the first updates' prompts: the shift and scale of `reward_normalization_batches`."""
        scores = []
        self.model.eval()
        with root_unsharded(self.model_wrapped):
            for update in range(num_batches):
                queries, query_mask = (t.to(self.accelerator.device) for t in self._prompt_batch(update))
                *_, input_ids, attention_mask = self._sample(queries, query_mask)
                scores.append(self._score_in_chunks(input_ids, attention_mask, queries.shape[1])["scores"])
        scores = self.accelerator.gather(torch.cat(scores)).float()
        check_finite_scores(scores, "RobustPPOTrainer, reward normalisation samples")
        if scores.numel() < 2:
            raise ValueError(
                f"RobustPPOConfig.reward_normalization_batches={num_batches} gives {scores.numel()} answer; a std "
                "needs at least 2: raise it or the batch size."
            )
        return scores.mean().item(), scores.std().clamp_min(1e-6).item()

    @torch.no_grad()  # only `_old_logprobs_and_values` keeps a graph (the first epoch's forward), on purpose
    def _rollout(self, queries: torch.Tensor, query_mask: torch.Tensor) -> dict[str, Any]:
        """Generate, truncate, score, and compute the per-token rewards, advantages and returns of one batch."""
        args = self.args
        context_length = queries.shape[1]
        responses, lengths, has_stop, response_mask, input_ids, attention_mask = self._sample(queries, query_mask)

        logprobs, values, first_epoch_forward = self._old_logprobs_and_values(
            input_ids, attention_mask, responses, context_length
        )
        ref_logprobs = []
        chunk = args.local_rollout_forward_batch_size
        for i in range(0, queries.shape[0], chunk):
            ids, mask, resp = input_ids[i : i + chunk], attention_mask[i : i + chunk], responses[i : i + chunk]
            # Same autocast as the training forward (mixed precision), as for the old log-probabilities.
            with self.accelerator.autocast(), self._reference() as reference:
                ref_logprobs.append(self._policy_logprobs(reference, ids, mask, resp, context_length))
        ref_logprobs = torch.cat(ref_logprobs)
        scored = self._score_in_chunks(input_ids, attention_mask, context_length)
        raw_scores = scored["scores"]
        check_finite_scores(
            raw_scores,
            f"RobustPPOTrainer, update {self.state.global_step + 1} (process {self.accelerator.process_index})",
            scored.get("means"),
            scored.get("stds"),
        )

        scores = raw_scores
        if self.reward_normalization is not None:  # (score - mean) / std of the initial policy's scores
            shift, scale = self.reward_normalization
            scores = (raw_scores - shift) / scale
        scores = apply_missing_stop_penalty(scores, has_stop, args.missing_eos_penalty)
        kl = kl_penalty(logprobs, ref_logprobs, args.kl_estimator) * response_mask
        # The per-prompt baseline comes off the score only: the KL part of the reward is each answer's own.
        centred = scores - group_baseline(scores, self.batch_sizes.num_samples_per_prompt, args.advantage_baseline)
        if args.scale_by_prompt_std:  # GRPO's scale_rewards="group"; its 1e-4 keeps a tied group finite
            centred = centred / (group_std(scores, self.batch_sizes.num_samples_per_prompt) + 1e-4)
        rewards, non_score_rewards = compute_rewards(kl, centred, lengths, args.kl_coef)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, response_mask, shift_mean=False) * response_mask
        if values is None:  # critic-free: the reward-to-go, whose batch mean the whitening below takes off
            returns = discounted_returns(rewards, response_mask, args.gamma)
            advantages = returns
        else:
            values = values.float() * response_mask
            advantages, returns = compute_gae(rewards, values, response_mask, args.gamma, args.lam)
        raw_advantages = advantages
        advantages = whiten_advantages(advantages, response_mask)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "responses": responses,
            "response_mask": response_mask,
            "logprobs": logprobs,
            "values": values,
            "advantages": advantages,
            "raw_advantages": raw_advantages,  # before whitening, for the metrics
            "returns": returns,
            "kl": kl,
            "non_score_rewards": non_score_rewards,
            "scores": scores,
            "raw_scores": raw_scores,
            "has_stop": has_stop,
            "context_length": torch.tensor(context_length),
            "first_epoch_forward": first_epoch_forward,  # see `_old_logprobs_and_values`
        }
        if "means" in scored:
            batch["means"], batch["stds"] = scored["means"], scored["stds"]
        return batch

    def _old_logprobs_and_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, responses: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """
        The rollout policy's log-probabilities of the responses and the values, `[B, R]` each: the "old" ones of PPO's
        ratio and value clip. Returns `(logprobs, values, first_epoch_forward)`.

        With one micro-batch per update (`reuse_rollout_forward`), the first PPO epoch would run the policy and value
        model on exactly this batch with these weights. That training forward runs here instead, with gradients, and
        comes back as `first_epoch_forward` (`(logprobs, values, entropy)` with their graph) for the first epoch to
        back-propagate through; the old log-probabilities and values are its detached outputs (so the first ratio is
        exactly 1), and the policy and value forwards are not run twice. Otherwise they come from no-grad forwards in
        chunks of `local_rollout_forward_batch_size`, under the training forward's autocast, and `first_epoch_forward`
        is None.
        """
        if self.reuse_rollout_forward and self.args.num_ppo_epochs > 0:
            self.model.train()
            with torch.enable_grad():
                forward = self._policy_and_value_forward(input_ids, attention_mask, responses, context_length)
            self.model.eval()  # the reference may be this policy with its adapters disabled
            values = forward[1].detach() if forward[1] is not None else None
            return forward[0].detach(), values, forward
        unwrapped = self.accelerator.unwrap_model(self.model_wrapped)
        logprobs, values = [], []
        chunk = self.args.local_rollout_forward_batch_size
        for i in range(0, input_ids.shape[0], chunk):
            ids, mask, resp = input_ids[i : i + chunk], attention_mask[i : i + chunk], responses[i : i + chunk]
            with self.accelerator.autocast():  # mixed precision as in training, so the first PPO ratio is exactly 1
                logprobs.append(self._policy_logprobs(unwrapped.policy, ids, mask, resp, context_length))
                if unwrapped.value_model is not None:
                    # V(s_t) for response token t is read where the token is predicted: context_length - 1 + t.
                    values.append(token_values(unwrapped.value_model, ids, mask)[:, context_length - 1 : -1])
        return torch.cat(logprobs), torch.cat(values) if values else None, None

    # ---------------------------------------------------------------------------------------------------------------
    # Optimisation
    # ---------------------------------------------------------------------------------------------------------------

    def _policy_and_value_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, responses: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training forward of the policy and value model (with gradients when enabled): the responses'
        log-probabilities `[B, R]` at the sampling temperature, the values `[B, R]` and the policy's per-token entropy
        (a metric, computed here without gradient, so that the logits are not held through the backward)."""
        logits, values = self.model_wrapped(
            input_ids=input_ids, attention_mask=attention_mask, context_length=context_length
        )
        logprobs = token_logprobs(logits, responses, self.args.temperature)
        return logprobs, values, entropy_from_logits(logits, self.args.temperature)

    def _ppo_epochs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """`num_ppo_epochs` passes over the rollout, each split in `num_mini_batches` optimiser steps of
        `gradient_accumulation_steps`-many micro-batches. Returns per-micro-batch statistics."""
        args, sizes = self.args, self.batch_sizes
        model = self.model_wrapped
        context_length = int(batch["context_length"])
        is_deepspeed = self.is_deepspeed_enabled
        stats = defaultdict(list)
        first_epoch_forward = batch.pop("first_epoch_forward", None)
        critic = batch["values"] is not None
        # Critic warm-up: the value loss alone, so the policy's parameters get no gradient and AdamW leaves them as
        # they are (it skips parameters without one).
        warmup = self.state.global_step < args.num_critic_warmup_updates
        self.model.train()
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(sizes.local_batch_size)
            for mb_start in range(0, sizes.local_batch_size, sizes.local_mini_batch_size):
                minibatch = order[mb_start : mb_start + sizes.local_mini_batch_size]
                micro = sizes.local_micro_batch_size
                for step, micro_start in enumerate(range(0, len(minibatch), micro)):
                    idx = minibatch[micro_start : micro_start + micro].to(batch["input_ids"].device)
                    last_micro = step == sizes.grad_accum_steps - 1
                    self.accelerator.gradient_state._set_sync_gradients(last_micro)
                    sync = nullcontext() if (is_deepspeed or last_micro) else self.accelerator.no_sync(model)
                    with sync:
                        if first_epoch_forward is not None:  # the rollout ran it (`_old_logprobs_and_values`)
                            new_logprobs, vpred, entropy = (
                                t[idx] if t is not None else None for t in first_epoch_forward
                            )
                            first_epoch_forward = None
                        else:
                            new_logprobs, vpred, entropy = self._policy_and_value_forward(
                                batch["input_ids"][idx],
                                batch["attention_mask"][idx],
                                batch["responses"][idx],
                                context_length,
                            )
                        mask = batch["response_mask"][idx]
                        pg_loss, pg_clipfrac, approxkl = policy_loss(
                            new_logprobs, batch["logprobs"][idx], batch["advantages"][idx], mask, args.cliprange
                        )
                        loss = pg_loss if not warmup else 0.0
                        if critic:
                            vf_loss, vf_clipfrac = value_loss(
                                vpred, batch["values"][idx], batch["returns"][idx], mask, args.cliprange_value
                            )
                            loss = loss + args.vf_coef * vf_loss
                        loss = loss / sizes.grad_accum_steps
                        kwargs = {"scale_wrt_gas": False} if is_deepspeed else {}
                        self.accelerator.backward(loss, **kwargs)
                    with torch.no_grad():
                        stats["pg_loss"].append(pg_loss.detach())
                        stats["pg_clipfrac"].append(pg_clipfrac)
                        if critic:
                            stats["vf_loss"].append(vf_loss.detach())
                            stats["vf_clipfrac"].append(vf_clipfrac)
                        stats["approxkl"].append(approxkl)
                        stats["entropy"].append(masked_mean(entropy, mask))
                        stats["ratio"].append(
                            masked_mean(torch.exp(new_logprobs.detach() - batch["logprobs"][idx]), mask)
                        )
                    del vpred, new_logprobs, loss
                if not is_deepspeed and args.max_grad_norm is not None and args.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
        return {name: torch.stack(values) for name, values in stats.items()}

    def _metrics(self, batch: dict[str, torch.Tensor], stats: dict[str, torch.Tensor]) -> dict[str, float]:
        gather = self.accelerator.gather_for_metrics
        mask = batch["response_mask"].float()

        def mean(t: torch.Tensor) -> float:
            return gather(t.detach().float().reshape(-1)).mean().item()

        kl_per_sample = batch["kl"].sum(1)
        non_score = batch["non_score_rewards"].sum(1)
        scores = batch["scores"]
        ratios = gather(stats["ratio"].float())
        metrics = {
            "eps": self._session_episodes / max(time.time() - self._start_time, 1e-9),  # a float: < 1 on CPUs
            "objective/kl": mean(kl_per_sample),
            "objective/entropy": mean((-batch["logprobs"] * mask).sum(1)),
            "objective/non_score_reward": mean(non_score),
            "objective/rlhf_reward": mean(non_score + scores),
            "objective/scores": mean(scores),
            **({"objective/raw_scores": mean(batch["raw_scores"])} if self.reward_normalization else {}),
            "policy/approxkl_avg": mean(stats["approxkl"]),
            "policy/clipfrac_avg": mean(stats["pg_clipfrac"]),
            "loss/policy_avg": mean(stats["pg_loss"]),
            "policy/entropy_avg": mean(stats["entropy"]),
            "val/ratio": ratios.mean().item(),
            "val/ratio_var": ratios.var().item() if ratios.numel() > 1 else 0.0,
            "val/num_eos_tokens": int(gather(batch["has_stop"].long()).sum().item()),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "episode": self.state.episode,
        }
        metrics.update(self._critic_metrics(batch, stats))
        if "means" in batch:
            means, stds = gather(batch["means"]), gather(batch["stds"])
            metrics.update(self._robust_metrics(means, stds))
            # every update, logged or not: a HackingMonitor's window follows every rollout
            if watched(self.callback_handler.callbacks):  # the same callbacks on every rank: the gather is collective
                answers = masked_token_lists(batch["responses"], batch["response_mask"])
                distinct = gather(distinct_bigram_ratio(answers).to(means.device))
                metrics.update(
                    monitor_metrics(self.callback_handler.callbacks, means, stds, self.state.global_step, distinct)
                )
        return metrics

    def _critic_metrics(self, batch: dict[str, torch.Tensor], stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """How much the critic helps (see the metric table in docs/robust_ppo_trainer.md): the value loss and clip
        fraction (TRL 1.12's names), the explained variance of the returns by the rollout's values, value and return
        means over real tokens, and the correlation over episodes of the mean (unwhitened) advantage with the score.
        Without a critic only the returns and the correlation."""
        gather = self.accelerator.gather_for_metrics
        mask = batch["response_mask"]
        returns = gather(batch["returns"].float())
        all_mask = gather(mask)
        episode_advantage = gather(masked_mean(batch["raw_advantages"].float(), mask, dim=1))
        metrics = {
            "val/return_mean": masked_mean(returns, all_mask).item(),
            "val/advantage_score_corr": correlation(episode_advantage, gather(batch["scores"].float())).item(),
        }
        if batch["values"] is not None:
            values = gather(batch["values"].float())
            metrics.update(
                {
                    "loss/value_avg": gather(stats["vf_loss"].float().reshape(-1)).mean().item(),
                    "val/clipfrac_avg": gather(stats["vf_clipfrac"].float().reshape(-1)).mean().item(),
                    "val/explained_variance": explained_variance(values, returns, all_mask).item(),
                    "val/value_mean": masked_mean(values, all_mask).item(),
                }
            )
        return metrics

    def _robust_metrics(self, means: torch.Tensor, stds: torch.Tensor) -> dict[str, float]:
        """The BRME heads' view of the rollout: every aggregation (with this config's parameters), the mean predicted
        std, the heads' disagreement (std over heads of their means) and each head's mean."""
        return {f"robust/{key}": value for key, value in self.aggregation.head_metrics(means, stds).items()}

    # ---------------------------------------------------------------------------------------------------------------
    # Training loop
    # ---------------------------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs) -> None:
        """Run `num_total_batches` PPO updates: rollout -> score -> rewards -> GAE -> PPO epochs."""
        args, sizes = self.args, self.batch_sizes
        self.state.max_steps = sizes.num_total_batches
        self.state.num_train_epochs = sizes.total_episodes / self.train_dataset_len
        self.state.logging_steps = self._absolute_steps(args.logging_steps)
        self.state.save_steps = self._absolute_steps(args.save_steps)
        self.state.eval_steps = self._absolute_steps(args.eval_steps)
        self.state.global_step = 0
        self.state.episode = 0
        if resume_from_checkpoint:
            self._resume(resume_from_checkpoint)
        if args.reward_normalization_batches and self.reward_normalization is None:  # a resumed run has its own
            self.reward_normalization = self._reward_statistics(args.reward_normalization_batches)
            logger.info(
                "Reward normalisation: the initial policy's scores have mean %.4g, std %.4g", *self.reward_normalization
            )
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        self._start_time, self._session_episodes = time.time(), 0

        for update in range(self.state.global_step, sizes.num_total_batches):
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            queries, query_mask = (t.to(self.accelerator.device) for t in self._prompt_batch(update))
            self.model.eval()
            with root_unsharded(self.model_wrapped):  # FSDP2: the rollout calls the policy's and value's parts
                batch = self._rollout(queries, query_mask)
            stats = self._ppo_epochs(batch)

            self.state.episode += sizes.batch_size
            self._session_episodes += sizes.batch_size
            self.state.global_step += 1
            self.state.epoch = self.state.episode / self.train_dataset_len
            metrics = self._metrics(batch, stats)
            del batch, stats
            self.lr_scheduler.step()
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            # Every logging_steps updates, and the last one (so that a run shorter than logging_steps logs a row).
            if self.control.should_log or self.state.global_step == sizes.num_total_batches:
                self.log(metrics)
                self.control.should_log = False
            # Sample completions before saving: they draw random numbers, and the checkpoint's RNG state must be the
            # one the next update starts from, for a resumed run to continue exactly as an uninterrupted one.
            if args.num_sample_generations > 0 and update % self.sample_generations_freq == 0:
                self.generate_completions()
            if self.control.should_save:
                self._save_checkpoint(self.model, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
            # As the HF Trainer: only when asked. Emptying the cache frees nothing for PyTorch itself and makes the
            # next phase allocate from the driver again.
            if args.torch_empty_cache_steps and self.state.global_step % args.torch_empty_cache_steps == 0:
                _empty_cache()
            if self.control.should_training_stop:
                break

        self.control = self.callback_handler.on_train_end(args, self.state, self.control)

    def _absolute_steps(self, steps: float | None) -> int | None:
        if steps is None:
            return None
        return math.ceil(self.state.max_steps * steps) if steps < 1 else int(steps)

    # ---------------------------------------------------------------------------------------------------------------
    # Sample completions, saving, resuming
    # ---------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_completions(self, num_prompts: int = 4) -> list[dict[str, Any]]:
        """Answer a few `eval_dataset` prompts at near-zero temperature, score them, and print a table on the main
        process. Returns the rows (on every process, its own)."""
        if self.eval_dataset is None:
            return []
        rows = [self.eval_dataset[i] for i in range(min(num_prompts, len(self.eval_dataset)))]
        queries, query_mask = (t.to(self.accelerator.device) for t in self._collate(rows))
        self.model.eval()
        responses = self._generate(queries, query_mask, temperature=0.01)
        responses, lengths, _ = truncate_after_stop(responses, self.stop_token_id, self.filler_id)
        response_mask = lengths_to_mask(lengths, responses.shape[1]).long()
        with self.accelerator.autocast():
            scored = self.score(
                torch.cat([queries, responses], 1), torch.cat([query_mask, response_mask], 1), queries.shape[1]
            )
        scores = scored["scores"]
        table = [
            {
                "query": self.tokenizer.decode(q[m.bool()], skip_special_tokens=True),
                "model response": self.tokenizer.decode(r[: int(n)]),
                "score": float(s),
            }
            for q, m, r, n, s in zip(queries, query_mask, responses, lengths, scores, strict=True)
        ]
        if self.accelerator.is_main_process and is_rich_available():
            from rich.console import Console
            from rich.table import Table

            rich_table = Table(show_lines=True)
            for column in ("query", "model response", "score"):
                rich_table.add_column(column)
            for row in table:
                rich_table.add_row(row["query"], row["model response"], f"{row['score']:.4f}")
            Console().print(rich_table)
        return table

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy alone (safetensors, with its config and the tokenizer), loadable with `from_pretrained`.
        Under DeepSpeed and FSDP2 the full weights are gathered from every rank first (ZeRO-3 needs
        `stage3_gather_16bit_weights_on_model_save`, FSDP2 `fsdp_state_dict_type: FULL_STATE_DICT`)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        state_dict = None
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # FSDP2: FULL_STATE_DICT gathered onto rank 0
            engine = self.deepspeed if self.is_deepspeed_enabled else self.model_wrapped
            full = self.accelerator.get_state_dict(engine)  # collective: every rank must call it
            prefix = "policy."
            state_dict = {k[len(prefix) :]: v for k, v in (full or {}).items() if k.startswith(prefix)}
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            policy = self.accelerator.unwrap_model(self.model_wrapped).policy
            policy.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
            write_model_card(self, output_dir)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """A checkpoint holds the policy (as `save_model` writes it), optimizer, scheduler, RNG and trainer state
        (Trainer's own), plus what resuming needs beyond them: the policy and value weights in full precision
        (`policy_and_value.pt`; under DeepSpeed its own checkpoint holds them). It is written atomically: into a staging
        folder, renamed to `checkpoint-N` once complete (see `trl_robust.checkpointing`)."""
        with atomic_checkpoint(self, trial) as checkpoint:
            super()._save_checkpoint(model, trial)
            if not self.is_deepspeed_enabled and self.args.should_save:
                state_dict = self.accelerator.unwrap_model(self.model_wrapped).state_dict()
                torch.save(state_dict, os.path.join(checkpoint, _STATE))
            if self.reward_normalization is not None and self.args.should_save:
                with open(os.path.join(checkpoint, _REWARD_NORMALIZATION), "w") as f:
                    json.dump(dict(zip(("mean", "std"), self.reward_normalization, strict=True)), f)

    def _resume(self, checkpoint: str | bool) -> None:
        """Restore weights, optimizer, scheduler, RNG and step counters from a checkpoint of this trainer."""
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no checkpoint.")
        if not os.path.isdir(checkpoint):
            raise ValueError(f"Checkpoint {checkpoint!r} is not a directory.")
        if not os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)):  # the Trainer writes it last
            raise ValueError(
                f"{checkpoint!r} has no {TRAINER_STATE_NAME}: it is not a complete training checkpoint (saves are "
                "atomic, so it was not written by this trainer or by a run that finished saving); resume from another."
            )
        if self.is_deepspeed_enabled:
            deepspeed_load_checkpoint(self.model_wrapped, checkpoint, load_module_strict=True)
        else:
            path = os.path.join(checkpoint, _STATE)
            if not os.path.isfile(path):
                raise ValueError(f"{checkpoint!r} has no {_STATE}: it was not written by RobustPPOTrainer.")
            state_dict = torch.load(path, map_location=self.accelerator.device, weights_only=True)
            self.accelerator.unwrap_model(self.model_wrapped).load_state_dict(state_dict)
        self._load_optimizer_and_scheduler(checkpoint)
        self._load_rng_state(checkpoint)
        if self.args.reward_normalization_batches:
            path = os.path.join(checkpoint, _REWARD_NORMALIZATION)
            if not os.path.isfile(path):
                raise ValueError(
                    f"{checkpoint!r} has no {_REWARD_NORMALIZATION}: it was written by a run without "
                    "reward_normalization_batches, so its scores' scale is unknown; resume with the run's settings."
                )
            with open(path) as f:
                saved_normalization = json.load(f)
            self.reward_normalization = (saved_normalization["mean"], saved_normalization["std"])
        saved = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        num_updates = self.batch_sizes.num_total_batches
        if saved.global_step > num_updates:
            raise ValueError(f"{checkpoint!r} is at update {saved.global_step}, past this run's {num_updates}.")
        self.state.global_step = saved.global_step
        self.state.log_history = saved.log_history
        self.state.episode = saved.global_step * self.batch_sizes.batch_size
        self.state.epoch = self.state.episode / self.train_dataset_len
