"""Property-based tests of the row checks: malformed rows always raise the clear ValueError naming the row, and
valid rows (text or conversational; tokenized `input_ids` in the vocabulary) are never rejected."""

import re

from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_robust.validation import ROLES, check_rows, check_token_ids, validate_preference_rows, validate_token_rows

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(min_size=1, max_size=20)
message = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": st.text(max_size=20)})
conversation = st.lists(message, min_size=1, max_size=4)


@st.composite
def valid_row(draw, fmt=None):
    fmt = fmt or draw(st.sampled_from(["text", "conversational"]))
    value = text if fmt == "text" else conversation
    row = {"chosen": draw(value), "rejected": draw(value)}
    if draw(st.booleans()):
        row["prompt"] = draw(value)
    return row


scalar_junk = st.one_of(
    st.none(), st.just(""), st.integers(), st.floats(allow_nan=True), st.booleans(), st.binary(max_size=5)
)
nested_junk = st.recursive(
    scalar_junk | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
)
bad_role = st.one_of(st.none(), st.integers(), st.text(max_size=10).filter(lambda r: r not in ROLES))
bad_content = st.one_of(
    st.none(), st.integers(), st.lists(nested_junk, max_size=2), st.dictionaries(text, text, max_size=2)
)
bad_message = st.one_of(
    scalar_junk | text,
    st.lists(nested_junk, max_size=2),
    st.fixed_dictionaries({"role": bad_role, "content": st.text(max_size=10)}),
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": bad_content}),
    st.fixed_dictionaries({"content": st.text(max_size=10)}),
    st.fixed_dictionaries({"role": st.sampled_from(ROLES)}),
)


@st.composite
def bad_conversation(draw):
    messages = draw(st.lists(message, max_size=3))
    messages.insert(draw(st.integers(0, len(messages))), draw(bad_message))
    return messages


malformed = st.one_of(
    scalar_junk,
    st.dictionaries(st.text(max_size=5), nested_junk, max_size=3),
    st.just([]),
    bad_conversation(),
)


@SETTINGS
@given(
    rows=st.lists(valid_row("text"), min_size=1, max_size=6),
    data=st.data(),
    value=malformed,
)
def test_malformed_values_raise_a_value_error_naming_the_row(rows, data, value):
    index = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.sampled_from(sorted(rows[index])))
    rows[index] = {**rows[index], column: value}
    columns = ["prompt", "chosen", "rejected"] if any("prompt" in r for r in rows) else ["chosen", "rejected"]
    for r in rows:  # a row without a prompt in a dataset with one reads None: give them all one
        if "prompt" in columns and "prompt" not in r:
            r["prompt"] = "Hi"
    try:
        check_rows(rows, columns, "train")
    except ValueError as error:
        message = str(error)
    else:
        raise AssertionError(f"accepted {value!r} in row {index}, column {column!r}")
    assert message.startswith(f"The train dataset, row {index}"), message
    assert re.search(r"expected|mixes formats", message), message


@SETTINGS
@given(rows=st.lists(valid_row("text"), min_size=1, max_size=4), conv=conversation, data=st.data())
def test_mixing_formats_in_a_row_is_refused(rows, conv, data):
    index = data.draw(st.integers(0, len(rows) - 1))
    rows[index] = {**rows[index], data.draw(st.sampled_from(["chosen", "rejected"])): conv}
    try:
        check_rows(rows, ["chosen", "rejected"], "eval")
    except ValueError as error:
        assert str(error).startswith(f"The eval dataset, row {index} mixes formats"), str(error)
    else:
        raise AssertionError("a row mixing text and messages was accepted")


@SETTINGS
@given(rows=st.lists(valid_row(), min_size=1, max_size=6))
def test_valid_rows_are_never_rejected(rows):
    for r in rows:
        columns = [c for c in ("prompt", "chosen", "rejected") if c in r]
        check_rows([r], columns, "train")


@settings(max_examples=25, deadline=None)
@given(fmt=st.sampled_from(["text", "conversational"]), data=st.data())
def test_valid_datasets_pass_and_a_none_is_found_through_arrow(fmt, data):
    rows = data.draw(st.lists(valid_row(fmt), min_size=2, max_size=5))
    for r in rows:
        r.setdefault("prompt", "Hi" if fmt == "text" else [{"role": "user", "content": "Hi"}])
    validate_preference_rows(Dataset.from_list(rows), "train")
    index = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.sampled_from(["prompt", "chosen", "rejected"]))
    rows[index][column] = None
    try:
        validate_preference_rows(Dataset.from_list(rows), "train")
    except ValueError as error:
        assert str(error).startswith(f"The train dataset, row {index}, column {column!r} is None"), str(error)
    else:
        raise AssertionError("None accepted")


# Tokenized prompts (old-style PPO data): a non-empty list of ints in [0, VOCAB).
VOCAB = 50
token_ids = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8)
bad_token = st.one_of(
    st.none(),
    st.integers(max_value=-1),
    st.integers(min_value=VOCAB),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(0, VOCAB - 1), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@st.composite
def ids_with_a_bad_token(draw):
    ids = draw(st.lists(st.integers(0, VOCAB - 1), max_size=5))
    ids.insert(draw(st.integers(0, len(ids))), draw(bad_token))
    return ids


malformed_ids = st.one_of(
    scalar_junk,
    text,
    st.just([]),
    st.just(()),
    st.dictionaries(st.text(max_size=5), nested_junk, max_size=3),
    ids_with_a_bad_token(),
    ids_with_a_bad_token().map(tuple),
)


@SETTINGS
@given(rows=st.lists(token_ids, min_size=1, max_size=6), data=st.data(), value=malformed_ids)
def test_malformed_token_ids_raise_a_value_error_naming_the_row(rows, data, value):
    index = data.draw(st.integers(0, len(rows) - 1))
    rows[index] = value
    try:
        for row, ids in enumerate(rows):
            check_token_ids(ids, "train", row, "input_ids", VOCAB)
    except ValueError as error:
        message = str(error)
    else:
        raise AssertionError(f"accepted {value!r} in row {index}")
    assert message.startswith(f"The train dataset, row {index}, column 'input_ids'"), message
    assert re.search(r"expected|outside \[0, 50\)", message), message


@SETTINGS
@given(rows=st.lists(token_ids, min_size=1, max_size=6))
def test_valid_token_ids_are_never_rejected(rows):
    for row, ids in enumerate(rows):
        check_token_ids(ids, "train", row, "input_ids", VOCAB)


# What an Arrow column can hold: a null row, an empty list, a null id, or an id out of range (int64).
arrow_bad_ids = st.one_of(
    st.none(),
    st.just([]),
    st.lists(st.integers(0, VOCAB - 1), max_size=3).map(lambda ids: [*ids, None]),
    st.lists(st.integers(-(2**63), -1) | st.integers(VOCAB, 2**63 - 1), min_size=1, max_size=2),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(token_ids, min_size=2, max_size=12), data=st.data(), bad=arrow_bad_ids)
def test_token_datasets_pass_or_name_the_bad_row_through_arrow(rows, data, bad):
    order = data.draw(st.permutations(range(len(rows))))  # rows named by their position in the dataset passed
    batch_size = data.draw(st.integers(1, 5))
    validate_token_rows(Dataset.from_dict({"input_ids": rows}).select(order), "train", VOCAB, batch_size=batch_size)
    index = data.draw(st.integers(0, len(rows) - 1))
    rows[order[index]] = bad
    try:
        validate_token_rows(Dataset.from_dict({"input_ids": rows}).select(order), "eval", VOCAB, batch_size=batch_size)
    except ValueError as error:
        assert str(error).startswith(f"The eval dataset, row {index}, column 'input_ids'"), str(error)
    else:
        raise AssertionError(f"accepted {bad!r} in row {index}")
