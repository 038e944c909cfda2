"""The preference data that ships with the package."""

import gzip
import json
from importlib import resources

from datasets import Dataset, DatasetDict


def load_hh_rlhf_harmless(test_size: float = 0.1, seed: int = 42) -> DatasetDict:
    """
    1,800 human preference pairs from Anthropic's HH-RLHF "harmless-base" test split (MIT licence, Bai et al. 2022),
    shipped inside the package, as a `DatasetDict` with deterministic `train` and `test` splits of standard-text
    `chosen` / `rejected` columns (both sides hold the whole dialogue).
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}.")
    path = resources.files("trl_robust") / "assets" / "hh_rlhf_harmless" / "pairs.jsonl.gz"
    with resources.as_file(path) as file, gzip.open(file, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    dataset = Dataset.from_list([{"chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
    return dataset.train_test_split(test_size=test_size, seed=seed)
