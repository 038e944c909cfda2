"""
The reward over-optimisation experiment (Gao et al. 2022; Coste et al. 2023): a gold scorer labels pairs of the
policy's answers with noise, a proxy BRME learns from them, PPO, GRPO and best-of-n optimise against the proxy under
each reward aggregation, and gold reward is tracked against KL. Writes curves.csv, summary.csv/.md and
gold_vs_sqrt_kl.png to --output_dir.

    trl-robust overoptimization                                           # offline defaults (SmolLM2, MiniLM, VADER)
    trl-robust overoptimization --config recipes/quickstart/overoptimization.yaml
    trl-robust overoptimization --methods bon --settings nominal robust:0.4 --seeds 0 1 2
"""

from trl_robust.overoptimization import run_overoptimization
from trl_robust.overoptimization_config import OverOptimizationConfig
from trl_robust.recipe_parser import RecipeParser
from trl_robust.script_args import check_paths


def make_parser() -> RecipeParser:
    return RecipeParser((OverOptimizationConfig,), prog="trl-robust overoptimization", description=__doc__)


def main(argv: list[str] | None = None) -> dict:
    (config,) = make_parser().parse_recipe_and_args(argv)
    check_paths(vars(config))
    return run_overoptimization(config)


if __name__ == "__main__":
    main()
