"""
The `trl-robust` command: one subcommand per job, each also runnable as `python -m trl_robust.scripts.<name>`.

Before a command's module (and with it torch, transformers and TRL) is imported, its recipe and flags are checked
against the fields in the schema file (`trl_robust.recipe_checks`) and the model and data paths they name
(`trl_robust.script_args.check_paths`), so that these mistakes are reported in a fraction of a second. Errors of
input (`RecipeError`) are printed as one line, exit status 2.
"""

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


def command_dataclasses() -> dict[str, tuple[str, tuple[type, ...]]]:
    """`{command: (script module, dataclass types)}` of the commands that read recipes (imports them all: used to
    build the schema file)."""
    found = {}
    for command, (module_name, _) in SUBCOMMANDS.items():
        if command != "quickstart":  # argparse options of its own, checked before its heavy imports
            found[command] = (module_name, tuple(importlib.import_module(module_name).make_parser().dataclass_types))
    return found


def check_before_imports(command: str, args: list[str]) -> None:
    """Raise a `RecipeError` for a bad recipe, flag or path of `command`, from the schema file; nothing when the
    schema does not match the installed code (the command's own parser then checks the same)."""
    from trl_robust.recipe_checks import check_flags, check_values, command_specs, read_recipe, split_config
    from trl_robust.script_args import check_paths

    if command == "quickstart":  # options of its own (argparse), checked by its light parser; --help exits here
        importlib.import_module(SUBCOMMANDS[command][0]).parse_args(args)
        return
    specs = command_specs(command)
    if specs is None or "-h" in args or "--help" in args:
        return
    path, flags = split_config(args)
    recipe = read_recipe(path) if path is not None else {}
    check_values(recipe, specs, path)
    values = {name: spec["default"] for name, spec in specs.items()} | recipe | check_flags(flags, specs)
    check_paths(values, command)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"trl-robust: unknown command {command!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    from trl_robust.recipe_checks import RecipeError

    try:
        check_before_imports(command, rest)
        module = importlib.import_module(SUBCOMMANDS[command][0])
        import trl_robust

        trl_robust.register_auto_classes()  # deferred by the console script's import (trl_robust_cli)
        module.main(rest)
    except RecipeError as error:  # bad recipes and inputs: the message, not a traceback from deep inside a library
        print(f"trl-robust {command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
