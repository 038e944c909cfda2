"""A non-finite reward or head std stops PPO / GRPO / RLOO with an error naming the update, sample and head."""

import math

import pytest
import torch

from tests.robust_rl_helpers import prompt_dataset, rl_args, save_policy, tiny_llama_config
from tests.test_robust_ppo_trainer import _args, make_constant_brme, make_policy, make_value_model, tokenized_prompts
from trl_robust import (
    BRMEConfig,
    BRMERewardModel,
    RobustGRPOConfig,
    RobustGRPOTrainer,
    RobustPPOTrainer,
    RobustRLOOConfig,
    RobustRLOOTrainer,
)
from trl_robust.validation import check_finite_scores


def test_check_finite_scores_names_sample_and_head():
    means, stds, rewards = torch.zeros(4, 3), torch.ones(4, 3), torch.zeros(4)
    check_finite_scores(rewards, "here", means, stds)
    stds[2, 1] = math.nan
    with pytest.raises(FloatingPointError, match=r"here: head 1's reward std for sample 2 is nan"):
        check_finite_scores(rewards, "here", means, stds)
    means[3, 0] = math.inf
    with pytest.raises(FloatingPointError, match=r"head 0's reward mean for sample 3 is inf"):
        check_finite_scores(rewards, "here", means)
    rewards[1] = -math.inf
    with pytest.raises(FloatingPointError, match=r"here: the reward of sample 1 is -inf"):
        check_finite_scores(rewards, "here")


def test_ppo_stops_on_a_nan_std(tmp_path, smol_tokenizer):
    brme = make_constant_brme(smol_tokenizer)
    with torch.no_grad():
        brme.score.bias[3 + 1] = math.nan  # raw std of head 1
    trainer = RobustPPOTrainer(
        args=_args(tmp_path, total_episodes=16),
        processing_class=smol_tokenizer,
        model=make_policy(smol_tokenizer),
        ref_model=None,
        reward_model=brme,
        train_dataset=tokenized_prompts(smol_tokenizer),
        value_model=make_value_model(smol_tokenizer),
    )
    with pytest.raises(
        FloatingPointError, match=r"RobustPPOTrainer, update 1 \(process 0\): head 1's reward std for sample 0"
    ):
        trainer.train()


def nan_brme(tokenizer):
    torch.manual_seed(0)
    model = BRMERewardModel(BRMEConfig(text_config=tiny_llama_config(tokenizer).to_dict(), num_heads=3))
    with torch.no_grad():
        model.score.bias[2] = math.nan  # mean of head 2
    return model


@pytest.mark.parametrize(
    ("trainer_class", "config_class"), [(RobustGRPOTrainer, RobustGRPOConfig), (RobustRLOOTrainer, RobustRLOOConfig)]
)
def test_grpo_and_rloo_stop_on_a_nan_mean(tmp_path, smol_tokenizer, trainer_class, config_class):
    policy = save_policy(tmp_path / "policy", smol_tokenizer)
    trainer = trainer_class(
        model=str(policy),
        reward_funcs=nan_brme(smol_tokenizer),
        reward_processing_classes=[smol_tokenizer],
        args=config_class(**rl_args(tmp_path / "out", smol_tokenizer, max_steps=1)),
        train_dataset=prompt_dataset(),
        processing_class=smol_tokenizer,
    )
    name = trainer.reward_func_names[0]
    pattern = rf"{trainer_class.__name__}, reward '{name}' at step 0 \(process 0\): head 2's reward mean for sample 0"
    with pytest.raises(FloatingPointError, match=pattern):
        trainer.train()
