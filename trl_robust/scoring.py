"""Score (prompt, completion) pairs with a BRME exactly as `BRMERewardTrainer` tokenised its training pairs.

TRL's `GRPOTrainer` and `RLOOTrainer` score a reward model on `prompt + completion` decoded without special tokens and
re-tokenised without them, while reward training closes standard text with EOS: the reward model then reads its
score off a token it never saw in training. [`BRMEScorer`] goes through `tokenize_for_reward`, the tokenisation the
trainer used, so the same text gets the same score in both places.
"""

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .aggregation import Aggregation, aggregate
from .tokenization import pad_batch, padding_id, tokenize_for_reward


@torch.no_grad()
def reward_model_outputs(
    model: nn.Module,
    sequences: list[list[int]],
    pad_token_id: int,
    batch_size: int | None = None,
    device: torch.device | None = None,
    progress: str | None = None,
    **forward_kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    The one "pad -> score" loop of the package: score tokenised sequences (tokenise them with `tokenize_for_reward`
    first, as the reward trainer did) in right-padded batches of `batch_size` (all at once when None) on `device`
    (the model's first parameter's by default). Returns float `(means [N, K], stds [N, K])` for a BRME, or
    `(logits[:, :1], None)` for a plain reward model. `progress` names a progress bar over the batches.
    """
    device = device if device is not None else next(model.parameters()).device
    step = batch_size or max(len(sequences), 1)
    starts = range(0, len(sequences), step)
    means, stds = [], []
    for start in tqdm(starts, desc=progress, unit="batch", leave=False) if progress else starts:
        input_ids, attention_mask = pad_batch(sequences[start : start + step], pad_token_id)
        out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **forward_kwargs)
        if getattr(out, "means", None) is not None:
            means.append(out.means.float())
            stds.append(out.stds.float())
        else:
            means.append(out.logits[:, :1].float())
    if not means:
        empty = torch.zeros(0, 0, device=device)
        return empty, empty
    return torch.cat(means), (torch.cat(stds) if stds else None)


@dataclass
class BRMEScores:
    """
    Scores of N (prompt, completion) pairs.

    Args:
        means (`torch.Tensor` of shape `(N, K)`): each head's reward mean.
        stds (`torch.Tensor` of shape `(N, K)`): each head's reward standard deviation.
        rewards (`torch.Tensor` of shape `(N,)`): the heads aggregated with the scorer's aggregation.
    """

    means: torch.Tensor
    stds: torch.Tensor
    rewards: torch.Tensor


class BRMEScorer:
    """
    Batched scoring of (prompt, completion) pairs with a [`BRMERewardModel`], tokenised as `BRMERewardTrainer` does:
    the chat template over prompt + completion messages for conversational data, prompt + completion closed with EOS
    for standard text.

    Args:
        model (`nn.Module`):
            A `BRMERewardModel`, or any wrapper whose forward returns its output (a DeepSpeed engine, DDP). It is put
            in eval mode: a reward is a deterministic score, so dropout stays off.
        tokenizer (`PreTrainedTokenizerBase`):
            The tokenizer the BRME was trained with.
        aggregation (`str` or `Aggregation`, defaults to `"robust"`):
            How the K heads become one reward: an [`Aggregation`], or a name of `trl_robust.aggregation.AGGREGATIONS`
            (with its parameter in `**aggregation_params`).
        batch_size (`int`, *optional*):
            Pairs per forward pass; all pairs in one pass when unset.
        device (`torch.device`, *optional*):
            Where inputs go; defaults to the device of the model's first parameter.
        chat_template_kwargs (`dict`, *optional*):
            Extra arguments to the chat template of conversational pairs.
        **aggregation_params:
            The named aggregation's parameter (`robust_lambda`, `uwo_coef` or `kl_dro_beta`), see
            [`trl_robust.aggregation.aggregate`]; the RL configs' defaults otherwise.

    Example:

    ```python
    scorer = BRMEScorer(BRMERewardModel.from_pretrained("brme"), AutoTokenizer.from_pretrained("brme"))
    scores = scorer.score(["The film was"], [" great."])
    scores.rewards, scores.means, scores.stds
    ```
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        aggregation: str | Aggregation = "robust",
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        chat_template_kwargs: dict | None = None,
        **aggregation_params: float,
    ):
        # Fail on a bad name or parameter now, not at the first batch of a training run.
        if isinstance(aggregation, Aggregation):
            if aggregation_params:
                raise ValueError(f"Pass the aggregation's parameters in the Aggregation, got {aggregation_params}.")
        else:
            aggregate(aggregation, torch.zeros(1, 1), torch.ones(1, 1), **aggregation_params)
            aggregation = Aggregation(aggregation, **aggregation_params)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size!r}.")
        model.eval()  # not `model = model.eval()`: a DeepSpeed engine's eval() returns None
        self.model = model
        self.tokenizer = tokenizer
        self.aggregation = aggregation
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.chat_template_kwargs = chat_template_kwargs
        self.pad_token_id = padding_id(tokenizer)

    def tokenize(
        self,
        prompts: list | None,
        completions: list,
        tools: list | None = None,
    ) -> list[list[int]]:
        """Token ids of each pair, as `BRMERewardTrainer` tokenises a chosen or rejected side. `prompts` may be None
        (completions carry the whole text); `tools` is one entry per pair (or None)."""
        prompts = [None] * len(completions) if prompts is None else prompts
        tools = [None] * len(completions) if tools is None else tools
        if not len(prompts) == len(completions) == len(tools):
            raise ValueError(
                f"Got {len(prompts)} prompts, {len(completions)} completions and {len(tools)} tools entries; "
                "expected one of each per pair."
            )
        return [
            tokenize_for_reward(self.tokenizer, completion, prompt, tool, self.chat_template_kwargs)
            for prompt, completion, tool in zip(prompts, completions, tools, strict=True)
        ]

    def score_ids(self, input_ids: list[list[int]]) -> BRMEScores:
        """Score already tokenised sequences: right-padded batches with an attention mask, on `self.device`."""
        means, stds = reward_model_outputs(
            self.model, input_ids, self.pad_token_id, self.batch_size, self.device, use_cache=False
        )
        if not len(input_ids):
            return BRMEScores(means=means, stds=stds, rewards=torch.zeros(0, device=self.device))
        return BRMEScores(means, stds, self.aggregation(means, stds))

    def score(self, prompts: list | None, completions: list, tools: list | None = None) -> BRMEScores:
        """Tokenise (see [`tokenize`]) and score each (prompt, completion) pair."""
        return self.score_ids(self.tokenize(prompts, completions, tools))
