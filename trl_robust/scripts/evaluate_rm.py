"""
Evaluate a reward model (a BRME, or a plain TRL reward model for comparison) on preference pairs: accuracy of each
head and aggregation, calibration (ECE at T = 1 and at the BRME's fitted temperature, Brier, reliability diagram),
AUROC of each uncertainty (epistemic, aleatoric, std; |margin| as the baseline) for mispredictions, and AUROC of the
epistemic uncertainty for synthetic (and, with --exploits_file, real) reward exploits.
Writes metrics.json, metrics.md and reliability.png to --output_dir.

    trl-robust evaluate --model_name_or_path outputs/quickstart/brme --dataset_name hh-rlhf-harmless-last-turn
"""

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trl_robust.aggregation import PARAMETER_RANGES
from trl_robust.configuration_brme import BRME_RANGES
from trl_robust.evaluation import evaluate_reward_model
from trl_robust.recipe_checks import ranged, value_range
from trl_robust.recipe_parser import RecipeParser
from trl_robust.script_args import (
    ScriptArguments,
    check_paths,
    load_splits,
    model_errors,
    preference_pairs,
    resolve_model,
)


@dataclass
class EvaluateArguments(ScriptArguments):
    model_name_or_path: str = field(
        default="outputs/quickstart/brme", metadata={"help": "Reward model checkpoint (BRME or plain) to evaluate."}
    )
    dataset_name: str = field(
        default="hh-rlhf-harmless-last-turn",
        metadata={
            "help": "Preference pairs: 'hh-rlhf-harmless', 'hh-rlhf-harmless-last-turn' (shipped), a "
            ".json/.jsonl/.parquet/.csv file, a folder saved with save_to_disk, or a hub dataset id."
        },
    )
    dataset_test_split: str | None = field(
        default="test",
        metadata={
            "help": "Split of the pairs to evaluate; 'none' (null in a recipe): the train split, the only one a "
            ".json/.jsonl/.parquet/.csv file has."
        },
    )
    output_dir: str = field(default="outputs/evaluation", metadata={"help": "Where the report is written."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass.", **ranged(value_range(1))})
    max_length: int | None = field(
        default=None, metadata={"help": "Drop (and count) pairs longer than this.", **ranged(value_range(1))}
    )
    robust_lambda: float | None = field(
        default=None,
        metadata={
            "help": "Nominal weight of the robust reward; the BRME's own when unset.",
            **ranged(PARAMETER_RANGES["robust_lambda"]),
        },
    )
    calibration_bins: int = field(
        default=10, metadata={"help": "Confidence bins of ECE and the reliability plot.", **ranged(value_range(1))}
    )
    temperature: float | None = field(
        default=None,
        metadata={
            "help": "Temperature of calibrated_ece; the BRME's config.calibration_temperature when unset.",
            **ranged(BRME_RANGES["calibration_temperature"]),
        },
    )
    exploits: bool | None = field(
        default=None,
        metadata={
            "help": "Measure how well the BRME's epistemic uncertainty flags synthetic exploits (repetition, padding, "
            "favourite-word stuffing, off-topic, truncated answers) made from the pairs' chosen answers; on by default "
            "for a BRME with several heads whose pairs have prompts."
        },
    )
    exploits_file: str | None = field(
        default=None,
        metadata={
            "help": "JSONL of 'real' exploits, rows {'prompt': ..., 'completion' (or 'answer'): ...}, measured as the "
            "kind 'file' (e.g. rows of the over-optimisation harness's samples/*.jsonl where gold fell)."
        },
    )
    max_exploit_answers: int | None = field(
        default=256, metadata={"help": "Chosen answers (first kept pairs) that exploits are made from; all when unset."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow checkpoints that ship their own code."})


def make_parser() -> RecipeParser:
    return RecipeParser((EvaluateArguments,), prog="trl-robust evaluate", description=__doc__)


def main(argv: list[str] | None = None) -> dict:
    (args,) = make_parser().parse_recipe_and_args(argv)
    check_paths(vars(args), "evaluate")
    args.dataset_test_split = args.dataset_test_split or args.dataset_train_split
    _, pairs = load_splits(args)  # the data first: its errors cost no model load
    pairs = preference_pairs(pairs, args.dataset_name)
    path = resolve_model(args.model_name_or_path)
    with model_errors(f"model_name_or_path {args.model_name_or_path!r}"):
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=args.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    metrics = evaluate_reward_model(
        model,
        tokenizer,
        pairs,
        args.batch_size,
        args.max_length,
        args.robust_lambda,
        args.calibration_bins,
        args.output_dir,
        temperature=args.temperature,
        exploits=args.exploits,
        exploits_file=args.exploits_file,
        max_exploit_answers=args.max_exploit_answers,
    )
    print((Path(args.output_dir) / "metrics.md").read_text())
    return metrics


if __name__ == "__main__":
    main()
