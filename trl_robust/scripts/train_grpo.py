"""
Robust GRPO: optimise a policy on a BRME's aggregated reward with `RobustGRPOTrainer`.

    trl-robust grpo --config recipes/quickstart/grpo.yaml [--robust_lambda 0.6 ...]
    accelerate launch --config_file zero3.yaml -m trl_robust.scripts.train_grpo --config recipe.yaml
"""

from trl_robust import RobustGRPOConfig, RobustGRPOTrainer
from trl_robust.recipe_parser import RecipeParser
from trl_robust.scripts import online_rl


def make_parser() -> RecipeParser:
    return online_rl.make_parser(RobustGRPOConfig, "trl-robust grpo", __doc__)


def main(argv: list[str] | None = None) -> RobustGRPOTrainer:
    return online_rl.run(RobustGRPOTrainer, RobustGRPOConfig, "trl-robust grpo", __doc__, argv)


if __name__ == "__main__":
    main()
