"""Checks of text and conversational rows before tokenisation, so that bad data fails with an error naming the dataset,
the column and the row instead of a `TypeError` deep inside a tokenizer or a chat template; and of scored rewards, so
that a non-finite one stops a run instead of flowing into advantages and weights; and of already tokenized prompts
(ids in the vocabulary), so that a bad id fails with the row named instead of an index error inside an embedding."""

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset

ROLES = ("system", "developer", "user", "assistant", "tool")
ALLOWED = "a non-empty string or a non-empty list of {'role': str, 'content': str} messages"


def _where(dataset_name: str, row: int, column: str) -> str:
    return f"The {dataset_name} dataset, row {row}, column {column!r}"


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text[:80]}... ({type(value).__name__})" if len(text) > 80 else f"{text} ({type(value).__name__})"


def check_field(value: Any, dataset_name: str, row: int, column: str) -> str:
    """
    Check one prompt / completion value and return its format, `"text"` or `"conversational"`. Raises a `ValueError`
    naming the dataset, row and column for None, an empty string, a non-string, or a broken list of messages (a
    message that is not a dict with string 'role' and 'content', or a role outside `ROLES`).
    """
    where = _where(dataset_name, row, column)
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{where} is an empty string; expected {ALLOWED}.")
        return "text"
    if not isinstance(value, list):
        raise ValueError(f"{where} is {_describe(value)}; expected {ALLOWED}.")
    if not value:
        raise ValueError(f"{where} is an empty list of messages; expected {ALLOWED}.")
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}, message {i} is {_describe(message)}; expected a dict with 'role', 'content'.")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise ValueError(f"{where}, message {i} has role {_describe(role)}; expected one of {list(ROLES)}.")
        content = message.get("content")
        if content is None and message.get("tool_calls"):
            continue  # an assistant turn that only calls tools
        if not isinstance(content, str):
            raise ValueError(f"{where}, message {i} has content {_describe(content)}; expected a string.")
    return "conversational"


def check_row(example: Mapping[str, Any], columns: Iterable[str], dataset_name: str, row: int) -> None:
    """Check the given columns of one row (a `prompt` that is absent or None in a row is skipped only when it is not
    among `columns`) and that they are all text or all conversational."""
    formats = {column: check_field(example.get(column), dataset_name, row, column) for column in columns}
    if len(set(formats.values())) > 1:
        kinds = ", ".join(f"{column!r} is {kind}" for column, kind in formats.items())
        raise ValueError(
            f"The {dataset_name} dataset, row {row} mixes formats ({kinds}); a row must be all text or all "
            "conversational (lists of messages)."
        )


def check_rows(rows: Iterable[Mapping[str, Any]], columns: list[str], dataset_name: str) -> None:
    """`check_row` on every row of an iterable of dicts, numbered from 0."""
    for row, example in enumerate(rows):
        check_row(example, columns, dataset_name, row)


def validate_rows(dataset: Dataset, columns: list[str], dataset_name: str, batch_size: int = 1000) -> None:
    """One pass in Python over `columns` of a `Dataset` (read in Arrow batches), checking every row with `check_row`."""
    present = [c for c in columns if c in dataset.column_names]

    def rows():
        for batch in dataset.select_columns(present).iter(batch_size=batch_size):
            for values in zip(*(batch[c] for c in present), strict=True):
                yield dict(zip(present, values, strict=True))

    check_rows(rows(), present, dataset_name)


def validate_preference_rows(dataset: Dataset, dataset_name: str) -> None:
    """`chosen`, `rejected` and (when the column exists) `prompt` of preference data."""
    validate_rows(dataset, ["prompt", "chosen", "rejected"], dataset_name)


def validate_prompt_rows(dataset: Dataset, dataset_name: str) -> None:
    """The `prompt` column of RL prompt data."""
    validate_rows(dataset, ["prompt"], dataset_name)


def check_finite_scores(
    rewards: torch.Tensor, where: str, means: torch.Tensor | None = None, stds: torch.Tensor | None = None
) -> None:
    """
    Raise a `FloatingPointError` naming `where` (the trainer and update/step), the sample and, for the BRME heads'
    `means` / `stds` `[N, K]`, the head, at the first non-finite value; `rewards` `[N]` is checked last. A NaN reward
    would otherwise flow silently into advantages and weights.
    """
    hint = (
        "The reward model returns non-finite values: check its weights (a NaN or inf parameter), its dtype (fp16 "
        "overflows), and the input text."
    )
    for name, values in (("mean", means), ("std", stds)):
        if values is not None and not torch.isfinite(values).all():
            sample, head = (int(i) for i in (~torch.isfinite(values)).nonzero()[0])
            raise FloatingPointError(
                f"{where}: head {head}'s reward {name} for sample {sample} is {values[sample, head].item()}. {hint}"
            )
    if not torch.isfinite(rewards).all():
        sample = int((~torch.isfinite(rewards)).nonzero()[0, 0])
        raise FloatingPointError(f"{where}: the reward of sample {sample} is {rewards[sample].item()}. {hint}")


TOKENS_ALLOWED = "a non-empty list of token ids (ints)"


def token_id_bound(tokenizer: Any, *models: Any) -> int:
    """The ids a tokenized prompt may hold: those of the tokenizer (`len(tokenizer)`, added tokens included) that every
    model in `models` can embed (its input embeddings' `num_embeddings`)."""
    bounds = [len(tokenizer)] if tokenizer is not None else []
    for model in models:
        try:
            embeddings = model.get_input_embeddings()
        except (AttributeError, NotImplementedError):  # None, or a model that does not expose its embeddings
            continue
        if embeddings is not None and getattr(embeddings, "num_embeddings", None) is not None:
            bounds.append(int(embeddings.num_embeddings))
    if not bounds:
        raise ValueError("token_id_bound needs a tokenizer or a model with input embeddings.")
    return min(bounds)


def check_token_ids(value: Any, dataset_name: str, row: int, column: str, vocab_size: int) -> None:
    """
    Check one tokenized value: a non-empty list (or tuple) of ints (not bools) in `[0, vocab_size)`. Raises a
    `ValueError` naming the dataset, row and column, and for a bad id its position in the list.
    """
    where = _where(dataset_name, row, column)
    allowed = f"{TOKENS_ALLOWED} in [0, {vocab_size})"
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where} is {_describe(value)}; expected {allowed}.")
    if not value:
        raise ValueError(f"{where} is an empty list; expected {allowed}.")
    for position, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int):
            raise ValueError(f"{where}, token {position} is {_describe(token)}; expected an int in [0, {vocab_size}).")
        if not 0 <= token < vocab_size:
            raise ValueError(
                f"{where}, token {position} is {token}, outside [0, {vocab_size}) (the tokenizer's and the models' "
                "vocabulary): the data was tokenized with another tokenizer, or the models' embeddings are smaller."
            )


def _tokens_batch_is_valid(column: Any, vocab_size: int) -> bool:
    """Fast path for one Arrow batch of an integer-list column: no null list, no empty list, no null id, every id in
    range. False sends the batch to the row-by-row check, which finds and reports the first bad row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_integer(kind.value_type):
        return False
    if column.null_count or len(column) == 0:
        return len(column) == 0
    if pc.min(pc.list_value_length(column)).as_py() == 0:
        return False
    ids = pc.list_flatten(column)
    if ids.null_count:
        return False
    low, high = pc.min_max(ids).values()
    return low.as_py() >= 0 and high.as_py() < vocab_size


def validate_token_rows(
    dataset: Dataset, dataset_name: str, vocab_size: int, column: str = "input_ids", batch_size: int = 1000
) -> None:
    """
    Check a tokenized column (`input_ids` of old-style PPO prompt data) with `check_token_ids` on every row: present,
    each row a non-empty list of ints in `[0, vocab_size)`, no None. Read in Arrow batches; a batch of an integer-list
    column is checked with Arrow compute (no Python loop over the ids) and only a failing batch row by row.
    """
    if column not in dataset.column_names:
        raise ValueError(f"The {dataset_name} dataset has no {column!r} column; it has {dataset.column_names}.")
    start = 0
    for batch in dataset.with_format("arrow").select_columns([column]).iter(batch_size=batch_size):
        values = batch[column]
        if not _tokens_batch_is_valid(values, vocab_size):
            for offset, value in enumerate(values.to_pylist()):
                check_token_ids(value, dataset_name, start + offset, column, vocab_size)
        start += len(values)
