"""trl-robust: reward-robust RLHF (arXiv 2409.15360) for Hugging Face TRL."""

from .brme_reward_config import BRMERewardConfig
from .brme_reward_trainer import BRMERewardTrainer
from .configuration_brme import BRMEConfig
from .data import load_hh_rlhf_harmless
from .evaluation import evaluate_reward_model
from .modeling_brme import BRMEOutput, BRMERewardModel, register_auto_classes
from .monitor import HackingMonitor
from .robust_grpo_config import RobustGRPOConfig
from .robust_grpo_trainer import RobustGRPOTrainer
from .robust_ppo_config import RobustPPOConfig
from .robust_ppo_trainer import RobustPPOTrainer
from .robust_rloo_config import RobustRLOOConfig
from .robust_rloo_trainer import RobustRLOOTrainer
from .scoring import BRMEScorer, BRMEScores

__version__ = "0.1.0"

register_auto_classes()

__all__ = [
    "BRMEConfig",
    "BRMEOutput",
    "BRMERewardConfig",
    "BRMERewardModel",
    "BRMERewardTrainer",
    "BRMEScorer",
    "BRMEScores",
    "HackingMonitor",
    "RobustGRPOConfig",
    "RobustGRPOTrainer",
    "RobustPPOConfig",
    "RobustPPOTrainer",
    "RobustRLOOConfig",
    "RobustRLOOTrainer",
    "__version__",
    "evaluate_reward_model",
    "load_hh_rlhf_harmless",
]
