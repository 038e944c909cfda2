"""Score (prompt, completion) pairs with a BRME exactly as `BRMERewardTrainer` tokenised its training pairs.

TRL's `GRPOTrainer` and `RLOOTrainer` score a reward model on `prompt + completion` decoded without special tokens and
re-tokenised without them, while reward training closes standard text with EOS: the reward model then reads its
score off a token it never saw in training. [`BRMEScorer`] goes through `tokenize_for_reward`, the tokenisation the
trainer used, so the same text gets the same score in both places.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import rewards
from .tokenization import tokenize_for_reward


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
        aggregation (`str`, defaults to `"robust"`):
            How the K heads become one reward: a name of `trl_robust.rewards.AGGREGATIONS`.
        batch_size (`int`, *optional*):
            Pairs per forward pass; all pairs in one pass when unset.
        device (`torch.device`, *optional*):
            Where inputs go; defaults to the device of the model's first parameter.
        chat_template_kwargs (`dict`, *optional*):
            Extra arguments to the chat template of conversational pairs.
        **aggregation_params:
            Parameters of the aggregation (`robust_lambda`, `c` or `beta`), see [`trl_robust.rewards.aggregate`].

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
        aggregation: str = "robust",
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        chat_template_kwargs: dict | None = None,
        **aggregation_params: float,
    ):
        # Fail on a bad name or parameter now, not at the first batch of a training run.
        rewards.aggregate(aggregation, torch.zeros(1, 1), torch.ones(1, 1), **aggregation_params)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size!r}.")
        model.eval()  # not `model = model.eval()`: a DeepSpeed engine's eval() returns None
        self.model = model
        self.tokenizer = tokenizer
        self.aggregation = aggregation
        self.aggregation_params = aggregation_params
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.chat_template_kwargs = chat_template_kwargs
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad if pad is not None else 0  # any id works: the attention mask hides padding

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

    @torch.no_grad()
    def score_ids(self, input_ids: list[list[int]]) -> BRMEScores:
        """Score already tokenised sequences: right-padded batches with an attention mask, on `self.device`."""
        means, stds = [], []
        step = self.batch_size or max(len(input_ids), 1)
        for start in range(0, len(input_ids), step):
            chunk = input_ids[start : start + step]
            width = max(len(ids) for ids in chunk)
            ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False)
            means.append(out.means.float())
            stds.append(out.stds.float())
        if not means:
            empty = torch.zeros(0, 0, device=self.device)
            return BRMEScores(means=empty, stds=empty, rewards=torch.zeros(0, device=self.device))
        means, stds = torch.cat(means), torch.cat(stds)
        return BRMEScores(means, stds, rewards.aggregate(self.aggregation, means, stds, **self.aggregation_params))

    def score(self, prompts: list | None, completions: list, tools: list | None = None) -> BRMEScores:
        """Tokenise (see [`tokenize`]) and score each (prompt, completion) pair."""
        return self.score_ids(self.tokenize(prompts, completions, tools))
