"""
Robust GRPO: optimise a policy on a BRME's aggregated reward with `RobustGRPOTrainer`.

    trl-robust grpo --config recipes/quickstart/grpo.yaml [--robust_lambda 0.6 ...]
    accelerate launch --config_file zero3.yaml -m trl_robust.scripts.train_grpo --config recipe.yaml
"""

from trl_robust import RobustGRPOConfig, RobustGRPOTrainer
from trl_robust.scripts.online_rl import entry_points

make_parser, main = entry_points(RobustGRPOTrainer, RobustGRPOConfig, "trl-robust grpo", __doc__)

if __name__ == "__main__":
    main()
