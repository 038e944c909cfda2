"""
Robust RLOO: optimise a policy on a BRME's aggregated reward with `RobustRLOOTrainer`.

    trl-robust rloo --config recipes/quickstart/rloo.yaml [--reward_aggregation worst ...]
    accelerate launch --config_file zero3.yaml -m trl_robust.scripts.train_rloo --config recipe.yaml
"""

from trl_robust import RobustRLOOConfig, RobustRLOOTrainer
from trl_robust.scripts.online_rl import entry_points

make_parser, main = entry_points(RobustRLOOTrainer, RobustRLOOConfig, "trl-robust rloo", __doc__)

if __name__ == "__main__":
    main()
