"""The preference data that ships with the package."""

import gzip
import json
import os
from pathlib import Path

from datasets import Dataset, DatasetDict

DATA_DIR = Path(__file__).parent / "assets" / "hh_rlhf_harmless"
ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"


def split_dialogue(chosen: str, rejected: str) -> dict[str, str]:
    """Split two dialogues at the last Assistant turn they share: prompt, then the chosen and rejected replies."""
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(ASSISTANT, 0, shared) + len(ASSISTANT)
    if cut < len(ASSISTANT):
        raise ValueError(f"The two dialogues share no turn ending in {ASSISTANT!r}: {chosen[:80]!r}...")
    return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}


def load_hh_rlhf_harmless(
    test_size: float = 0.1, seed: int = 42, explicit_prompt: bool = False, last_turn_only: bool = False
) -> DatasetDict:
    """
    1,800 human preference pairs from Anthropic's HH-RLHF "harmless-base" test split (MIT licence, Bai et al. 2022),
    shipped inside the package, as a `DatasetDict` with deterministic `train` and `test` splits.

    By default each row holds two whole dialogues, `chosen` and `rejected` (TRL's implicit-prompt format). With
    `explicit_prompt=True` the shared dialogue moves to a `prompt` column ending in "\\n\\nAssistant:" and `chosen` /
    `rejected` keep only the final replies; `last_turn_only=True` also cuts the prompt to its last Human turn (shorter
    inputs, useful for fast runs and as RL prompts).
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}.")
    if last_turn_only and not explicit_prompt:
        raise ValueError("last_turn_only=True needs explicit_prompt=True.")
    with gzip.open(DATA_DIR / "pairs.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if explicit_prompt:
        rows = [split_dialogue(r["chosen"], r["rejected"]) for r in rows]
        if last_turn_only:
            for r in rows:
                r["prompt"] = r["prompt"][r["prompt"].rfind(HUMAN) :]
    else:
        rows = [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    return Dataset.from_list(rows).train_test_split(test_size=test_size, seed=seed)
