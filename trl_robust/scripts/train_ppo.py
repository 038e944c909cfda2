"""
Robust PPO: optimise a policy on a BRME's aggregated reward (or a plain reward model's score) with `RobustPPOTrainer`.

    trl-robust ppo --config recipes/quickstart/ppo.yaml [--robust_lambda 0.6 ...]
    accelerate launch --config_file zero3.yaml -m trl_robust.scripts.train_ppo --config recipe.yaml
"""

from dataclasses import dataclass, field

from trl_robust import RobustPPOConfig, RobustPPOTrainer
from trl_robust.recipe_parser import RecipeParser
from trl_robust.robust_ppo_trainer import load_ppo_models
from trl_robust.script_args import (
    PromptScriptArguments,
    check_paths,
    load_splits,
    model_errors,
    prompts_only,
    resolve_model,
)


@dataclass
class PPOScriptArguments(PromptScriptArguments):
    """Policy, value model and prompt data of a PPO run; the reward model is RobustPPOConfig's `reward_model_path`, as
    in TRL's PPO scripts."""

    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow checkpoints that ship their own Python code (off: only safe loading)."}
    )
    value_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Initial value model; by default the reward model when it shares the policy's tokenizer "
            "(the usual PPO choice), else the policy with a fresh one-output head."
        },
    )


def load_models(script_args: PPOScriptArguments, training_args: RobustPPOConfig) -> dict:
    """Policy, reference, reward and value models and both tokenizers of a run."""
    return load_ppo_models(
        resolve_model(script_args.model_name_or_path),
        resolve_model(training_args.reward_model_path),
        script_args.value_model_path,
        use_critic=training_args.use_critic,  # a critic-free run loads no value model
        trust_remote_code=script_args.trust_remote_code,
    )


def make_parser() -> RecipeParser:
    return RecipeParser((PPOScriptArguments, RobustPPOConfig), prog="trl-robust ppo", description=__doc__)


def main(argv: list[str] | None = None) -> RobustPPOTrainer:
    script_args, training_args = make_parser().parse_recipe_and_args(argv)
    check_paths({**vars(script_args), "reward_model_path": training_args.reward_model_path})
    train, test = load_splits(script_args)
    train, test = prompts_only(train, script_args.dataset_name), prompts_only(test, script_args.dataset_name)
    names = f"model_name_or_path {script_args.model_name_or_path!r}"
    names += f" or reward_model_path {training_args.reward_model_path!r}"
    with model_errors(names):
        models = load_models(script_args, training_args)
    trainer = RobustPPOTrainer(args=training_args, train_dataset=train, eval_dataset=test, **models)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.processing_class.save_pretrained(training_args.output_dir)
    return trainer


if __name__ == "__main__":
    main()
