"""
Train a Bayesian Reward Model Ensemble with `BRMERewardTrainer`.

    trl-robust reward --config recipes/quickstart/brme.yaml [--num_heads 5 ...]
    accelerate launch --config_file zero3.yaml -m trl_robust.scripts.train_brme --config recipe.yaml
"""

from transformers import AutoTokenizer

from trl_robust import BRMERewardConfig, BRMERewardTrainer
from trl_robust.recipe_parser import RecipeParser
from trl_robust.script_args import (
    ScriptArguments,
    check_paths,
    load_splits,
    model_errors,
    preference_pairs,
    resolve_model,
)


def make_parser() -> RecipeParser:
    return RecipeParser((ScriptArguments, BRMERewardConfig), prog="trl-robust reward", description=__doc__)


def main(argv: list[str] | None = None) -> BRMERewardTrainer:
    script_args, training_args = make_parser().parse_recipe_and_args(argv)
    check_paths(vars(script_args))
    train, test = load_splits(script_args)
    train, test = preference_pairs(train, script_args.dataset_name), preference_pairs(test, script_args.dataset_name)
    model_path = resolve_model(script_args.model_name_or_path)
    if test is None and training_args.eval_strategy != "no":
        training_args.eval_strategy = "no"
    with model_errors(f"model_name_or_path {script_args.model_name_or_path!r}"):
        trainer = BRMERewardTrainer(
            model=model_path,
            args=training_args,
            train_dataset=train,
            eval_dataset=test,
            processing_class=AutoTokenizer.from_pretrained(
                model_path, trust_remote_code=training_args.trust_remote_code
            ),
        )
    trainer.train()
    if test is not None:
        trainer.log_metrics("eval", trainer.evaluate())
    trainer.save_model(training_args.output_dir)
    trainer.processing_class.save_pretrained(training_args.output_dir)
    return trainer


if __name__ == "__main__":
    main()
