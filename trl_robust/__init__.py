"""trl-robust: reward-robust RLHF (arXiv 2409.15360) for Hugging Face TRL."""

import importlib
import os

__version__ = "0.1.0"

# Public name -> module. `import trl_robust` imports them all and registers the BRME with transformers' Auto classes;
# only the `trl-robust` console script defers both (they import torch), and then names load on first use (PEP 562).
_EXPORTS = {
    "BRMEConfig": "configuration_brme",
    "BRMEOutput": "modeling_brme",
    "BRMERewardConfig": "brme_reward_config",
    "BRMERewardModel": "modeling_brme",
    "BRMERewardTrainer": "brme_reward_trainer",
    "BRMEScorer": "scoring",
    "BRMEScores": "scoring",
    "HackingMonitor": "monitor",
    "RobustGRPOConfig": "robust_grpo_config",
    "RobustGRPOTrainer": "robust_grpo_trainer",
    "RobustPPOConfig": "robust_ppo_config",
    "RobustPPOTrainer": "robust_ppo_trainer",
    "RobustRLOOConfig": "robust_rloo_config",
    "RobustRLOOTrainer": "robust_rloo_trainer",
    "evaluate_reward_model": "evaluation",
    "load_hh_rlhf_harmless": "data",
    "register_auto_classes": "modeling_brme",
}

__all__ = sorted([name for name in _EXPORTS if name != "register_auto_classes"] + ["__version__"])


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trl_robust' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


# The `trl-robust` console script (trl_robust_cli) defers this until its checks of the command line have passed.
if os.environ.get("TRL_ROBUST_DEFER_REGISTRATION") != "1":
    for _name in _EXPORTS:
        __getattr__(_name)
    __getattr__("register_auto_classes")()
    del _name
