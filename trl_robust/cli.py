"""The `trl-robust` command: one subcommand per job, each also runnable as `python -m trl_robust.scripts.<name>`."""

import importlib
import sys

SUBCOMMANDS = {
    "reward": ("trl_robust.scripts.train_brme", "train a BRME reward model (BRMERewardTrainer)"),
    "ppo": ("trl_robust.scripts.train_ppo", "robust PPO on a BRME reward (RobustPPOTrainer)"),
    "grpo": ("trl_robust.scripts.train_grpo", "robust GRPO on a BRME reward (RobustGRPOTrainer)"),
    "rloo": ("trl_robust.scripts.train_rloo", "robust RLOO on a BRME reward (RobustRLOOTrainer)"),
    "evaluate": ("trl_robust.scripts.evaluate_rm", "evaluate a reward model: accuracy, calibration, uncertainty"),
    "overoptimization": (
        "trl_robust.scripts.overoptimization",
        "reward over-optimisation benchmark: gold vs KL for each aggregation",
    ),
    "quickstart": ("trl_robust.scripts.quickstart", "the offline demo on the shipped data"),
}


def usage() -> str:
    lines = ["usage: trl-robust <command> [--config recipe.yaml] [--field value ...]", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "`trl-robust <command> --help` lists every field of a command with its help text."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"trl-robust: unknown command {command!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    try:
        module.main(rest)
    except ValueError as error:  # bad recipes and inputs: the message, not a traceback from deep inside a library
        from trl_robust.recipe_parser import RecipeError

        if not isinstance(error, RecipeError):
            raise
        print(f"trl-robust {command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
