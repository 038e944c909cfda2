"""
Robust RLOO: optimise a policy on a BRME's aggregated reward with `RobustRLOOTrainer`.

    trl-robust rloo --config recipes/quickstart/rloo.yaml [--reward_aggregation worst ...]
    accelerate launch --config_file zero3.yaml -m trl_robust.scripts.train_rloo --config recipe.yaml
"""

from trl_robust import RobustRLOOConfig, RobustRLOOTrainer
from trl_robust.recipe_parser import RecipeParser
from trl_robust.scripts import online_rl


def make_parser() -> RecipeParser:
    return online_rl.make_parser(RobustRLOOConfig, "trl-robust rloo", __doc__)


def main(argv: list[str] | None = None) -> RobustRLOOTrainer:
    return online_rl.run(RobustRLOOTrainer, RobustRLOOConfig, "trl-robust rloo", __doc__, argv)


if __name__ == "__main__":
    main()
