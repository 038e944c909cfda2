"""Bad preference and prompt data fails before tokenisation with an error naming the dataset, column and row."""

import pytest
from datasets import Dataset, IterableDataset

from tests.conftest import preference_rows
from tests.test_brme_reward_trainer import config, tiny_brme
from tests.test_robust_ppo_trainer import _args, make_policy, make_token_fraction_rm, make_value_model
from trl_robust import BRMERewardTrainer, RobustPPOTrainer
from trl_robust.validation import (
    check_field,
    check_row,
    check_token_ids,
    token_id_bound,
    validate_preference_rows,
    validate_prompt_rows,
    validate_token_rows,
)

USER = [{"role": "user", "content": "Hi"}]
REPLY = [{"role": "assistant", "content": "Hello"}]


def rows_with(index, **row):
    rows = preference_rows(6)
    rows[index] = {**rows[index], **row}
    return rows


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"chosen": None}, r"row 3, column 'chosen' is None \(NoneType\); expected a non-empty string"),
        ({"rejected": ""}, r"row 3, column 'rejected' is an empty string"),
    ],
)
def test_bad_text_names_dataset_row_and_column(row, match):
    with pytest.raises(ValueError, match=match) as info:
        validate_preference_rows(Dataset.from_list(rows_with(3, **row)), "train")
    assert "The train dataset" in str(info.value)


def test_non_string_value_is_refused():
    with pytest.raises(ValueError, match=r"row 0, column 'chosen' is 7 \(int\)"):
        check_row({"chosen": 7, "rejected": "no"}, ["chosen", "rejected"], "eval", 0)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([], "empty list of messages"),
        (["hi"], r"message 0 is 'hi' \(str\); expected a dict"),
        ([{"role": "robot", "content": "x"}], r"message 0 has role 'robot' \(str\); expected one of \['system'"),
        ([{"content": "x"}], r"message 0 has role None"),
        ([{"role": "user", "content": None}], r"message 0 has content None"),
        ([{"role": "user", "content": [{"type": "text"}]}], "message 0 has content"),
        ({"role": "user", "content": "x"}, r"is \{'role'.*\(dict\)"),
    ],
)
def test_broken_conversations_are_refused(value, match):
    with pytest.raises(ValueError, match=match):
        check_field(value, "train", 5, "chosen")


def test_valid_rows_pass():
    assert check_field("text", "train", 0, "chosen") == "text"
    assert check_field(USER + REPLY, "train", 0, "chosen") == "conversational"
    tool_call = [{"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}]
    assert check_field(tool_call, "train", 0, "chosen") == "conversational"
    validate_preference_rows(Dataset.from_list(preference_rows(6)), "train")
    validate_preference_rows(Dataset.from_list([{"prompt": USER, "chosen": REPLY, "rejected": REPLY}] * 3), "train")


def test_mixing_text_and_conversational_in_a_row_is_refused():
    data = Dataset.from_dict({"prompt": ["Say hi", "Say hi"], "chosen": [REPLY, REPLY], "rejected": [REPLY, REPLY]})
    with pytest.raises(ValueError, match=r"row 0 mixes formats \('prompt' is text, 'chosen' is conversational"):
        validate_preference_rows(data, "train")


def test_brme_trainer_refuses_bad_rows_before_tokenising(tmp_path, smol_tokenizer):
    with pytest.raises(ValueError, match=r"The eval dataset, row 2, column 'rejected' is None"):
        BRMERewardTrainer(
            model=tiny_brme(smol_tokenizer),
            args=config(tmp_path),
            train_dataset=Dataset.from_list(preference_rows(8)),
            eval_dataset=Dataset.from_list(rows_with(2, rejected=None)),
            processing_class=smol_tokenizer,
        )


def test_brme_trainer_checks_an_iterable_dataset_lazily(tmp_path, smol_tokenizer):
    rows = rows_with(4, chosen=[{"role": "user", "content": 3}])
    rows = [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    data = IterableDataset.from_generator(lambda: iter(rows))
    trainer = BRMERewardTrainer(
        model=tiny_brme(smol_tokenizer),
        args=config(tmp_path, max_steps=1, max_length=None),
        train_dataset=data,
        processing_class=smol_tokenizer,
    )
    with pytest.raises(ValueError, match=r"The train dataset, row 4, column 'chosen', message 0 has content 3 \(int\)"):
        list(trainer.train_dataset)


def test_ppo_prompts_are_validated(tmp_path, smol_tokenizer):
    validate_prompt_rows(Dataset.from_dict({"prompt": ["a", "b"]}), "train")
    with pytest.raises(ValueError, match=r"The train dataset, row 1, column 'prompt' is an empty string"):
        RobustPPOTrainer(
            args=_args(tmp_path),
            processing_class=smol_tokenizer,
            model=make_policy(smol_tokenizer),
            ref_model=None,
            reward_model=make_token_fraction_rm(smol_tokenizer),
            train_dataset=Dataset.from_dict({"prompt": ["Tell me a story."] + [""] * 15}),
            value_model=make_value_model(smol_tokenizer),
        )


def ppo_with_prompts(tmp_path, tokenizer, train, eval_dataset=None):
    return RobustPPOTrainer(
        args=_args(tmp_path),
        processing_class=tokenizer,
        model=make_policy(tokenizer),
        ref_model=None,
        reward_model=make_token_fraction_rm(tokenizer),
        train_dataset=train,
        value_model=make_value_model(tokenizer),
        eval_dataset=eval_dataset,
    )


def tokenized(tokenizer, n=16):
    return [tokenizer(f"hello world {i}")["input_ids"] for i in range(n)]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (None, r"row 5, column 'input_ids' is None \(NoneType\); expected a non-empty list of token ids \(ints\) in"),
        ([], r"row 5, column 'input_ids' is an empty list"),
        ([1, None, 3], r"row 5, column 'input_ids', token 1 is None \(NoneType\); expected an int in \[0, 49152\)"),
        ([1, 2, 49152], r"row 5, column 'input_ids', token 2 is 49152, outside \[0, 49152\)"),
        ([-1], r"row 5, column 'input_ids', token 0 is -1, outside \[0, 49152\)"),
    ],
)
def test_ppo_tokenized_prompts_are_validated(tmp_path, smol_tokenizer, row, match):
    rows = tokenized(smol_tokenizer)
    rows[5] = row
    with pytest.raises(ValueError, match=match) as info:
        ppo_with_prompts(tmp_path, smol_tokenizer, Dataset.from_dict({"input_ids": rows}))
    assert str(info.value).startswith("The train dataset, row 5")


def test_ppo_tokenized_eval_prompts_are_validated_and_shuffled_rows_are_named_by_position(tmp_path, smol_tokenizer):
    rows = tokenized(smol_tokenizer, 8)
    rows[6] = [0.5]
    eval_dataset = Dataset.from_dict({"input_ids": rows}).select([6, 0, 1])  # Arrow column of floats
    with pytest.raises(ValueError, match=r"The eval dataset, row 0, column 'input_ids', token 0 is 0.5 \(float\)"):
        train = Dataset.from_dict({"input_ids": tokenized(smol_tokenizer)})
        ppo_with_prompts(tmp_path, smol_tokenizer, train, eval_dataset)


def test_token_ids_must_be_embeddable_by_every_model(smol_tokenizer):
    policy = make_policy(smol_tokenizer)
    assert token_id_bound(smol_tokenizer, policy) == len(smol_tokenizer) == 49152
    policy.resize_token_embeddings(100)
    assert token_id_bound(smol_tokenizer, policy, None) == 100
    with pytest.raises(ValueError, match=r"row 1, column 'input_ids', token 0 is 100, outside \[0, 100\)"):
        validate_token_rows(Dataset.from_dict({"input_ids": [[1, 2], [100]]}), "train", 100)


def test_token_rows_column_and_types():
    with pytest.raises(ValueError, match=r"The train dataset has no 'input_ids' column; it has \['prompt'\]"):
        validate_token_rows(Dataset.from_dict({"prompt": ["hi"]}), "train", 10)
    for value, match in [
        ("hello", r"is 'hello' \(str\)"),
        ([True], r"token 0 is True \(bool\)"),
        ([[1]], r"token 0 is \[1\] \(list\)"),
        ({"ids": [1]}, r"\(dict\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_token_ids(value, "train", 0, "input_ids", 10)
    check_token_ids((0, 9), "train", 0, "input_ids", 10)
    validate_token_rows(Dataset.from_dict({"input_ids": [[0, 9]] * 2500}), "train", 10)  # several Arrow batches
