"""How a BRME sees text: one tokenisation shared by reward training and reward scoring.

TRL's `RewardTrainer` appends EOS to standard text before tokenising while its `GRPOTrainer` scores decoded
completions without it, so a reward model is scored on inputs it never saw in training. Every path of this package
(the trainer and the scorers) goes through `tokenize_for_reward` instead, so training and scoring agree.
"""

import json
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from trl.trainer.utils import pad


def is_conversational(value: Any) -> bool:
    """True for a list of `{"role": ..., "content": ...}` messages."""
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "role" in value[0]


def append_eos(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Close standard text with EOS, as TRL's reward training does; a tokenizer without EOS (BERT-style encoders,
    whose template already ends in `[SEP]`) leaves the text as it is."""
    eos = tokenizer.eos_token
    if eos is None or text.endswith(eos):
        return text
    return text + eos


def tokenize_for_reward(
    tokenizer: PreTrainedTokenizerBase,
    completion: str | list[dict],
    prompt: str | list[dict] | None = None,
    tools: list | str | None = None,
    chat_template_kwargs: dict | None = None,
) -> list[int]:
    """
    Token ids a BRME scores for one (prompt, completion): the chat template over prompt + completion messages for
    conversational data; for standard text, prompt + completion closed with EOS.
    """
    if is_conversational(completion) or is_conversational(prompt):
        messages = list(prompt or []) + list(completion)
        tools = json.loads(tools) if isinstance(tools, str) else tools
        encoded = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, tools=tools, **(chat_template_kwargs or {})
        )
        return list(encoded["input_ids"])
    text = append_eos((prompt or "") + completion, tokenizer)
    return list(tokenizer(text=text)["input_ids"])


def padding_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS, else 0. Any id works where the attention mask
    hides padding, as in every batch this package builds."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def pad_batch(
    sequences: list[list[int]], pad_token_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> `(input_ids, attention_mask)` `[N, longest]` on the CPU, padded on `padding_side` ("right" for
    reward scoring, "left" for prompts to generate from); the mask, not the pad id, marks the real tokens."""
    ids = [torch.as_tensor(seq, dtype=torch.long) for seq in sequences]
    input_ids = pad(ids, padding_value=pad_token_id, padding_side=padding_side)
    attention_mask = pad([torch.ones_like(t) for t in ids], padding_value=0, padding_side=padding_side)
    return input_ids, attention_mask
