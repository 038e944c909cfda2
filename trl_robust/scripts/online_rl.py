"""What the GRPO and RLOO scripts share: recipe parsing, prompt data, a BRME reward, train and save."""

from transformers import AutoTokenizer

from trl_robust.recipe_parser import RecipeParser
from trl_robust.script_args import (
    RLScriptArguments,
    check_paths,
    load_splits,
    model_errors,
    prompts_only,
    resolve_model,
)


def make_parser(config_cls, prog: str, description: str) -> RecipeParser:
    return RecipeParser((RLScriptArguments, config_cls), prog=prog, description=description)


def run(trainer_cls, config_cls, prog: str, description: str, argv: list[str] | None = None):
    script_args, training_args = make_parser(config_cls, prog, description).parse_recipe_and_args(argv)
    check_paths(vars(script_args))
    train, test = load_splits(script_args)
    train, test = prompts_only(train, script_args.dataset_name), prompts_only(test, script_args.dataset_name)
    if test is None or training_args.eval_strategy == "no":
        test = None
        training_args.eval_strategy = "no"
    model_path = resolve_model(script_args.model_name_or_path)
    names = (
        f"model_name_or_path {script_args.model_name_or_path!r} or reward_model_path {script_args.reward_model_path!r}"
    )
    with model_errors(names):
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code)
        trainer = trainer_cls(
            model=model_path,
            reward_funcs=resolve_model(script_args.reward_model_path),
            args=training_args,
            train_dataset=train,
            eval_dataset=test,
            processing_class=tokenizer,
        )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    return trainer


def entry_points(trainer_cls, config_cls, prog: str, description: str):
    """A script's `make_parser()` and `main(argv)` for one of the two trainers (what train_grpo / train_rloo export)."""

    def make_script_parser() -> RecipeParser:
        return make_parser(config_cls, prog, description)

    def main(argv: list[str] | None = None):
        return run(trainer_cls, config_cls, prog, description, argv)

    return make_script_parser, main
