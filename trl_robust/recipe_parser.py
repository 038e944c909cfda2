"""Command-line and recipe parsing: TRL's conventions (`--config recipe.yaml`, flags override the file), but a typo in
a recipe is an error that names the key and the closest valid one instead of passing silently, and a value a config
refuses is a `RecipeError` (one line from `trl-robust`) rather than a traceback through the argument parser."""

import sys

from transformers import HfArgumentParser

from .recipe_checks import RecipeError, check_recipe, read_recipe, split_config

__all__ = ["RecipeError", "RecipeParser", "check_recipe"]


class RecipeParser(HfArgumentParser):
    """`HfArgumentParser` that also reads `--config recipe.yaml` (with `yaml.safe_load`), checked by `check_recipe`."""

    def error(self, message: str):
        """argparse's errors (a bad flag or value) as one line, not the usage of every field and an exit."""
        raise RecipeError(message)

    def parse_recipe_and_args(self, args: list[str] | None = None) -> tuple:
        path, args = split_config(list(sys.argv[1:] if args is None else args))
        if path is not None:
            recipe = read_recipe(path)
            check_recipe(recipe, self.dataclass_types, str(path))
            for action in self._actions:
                if action.dest in recipe:
                    action.default = recipe[action.dest]
                    action.required = False
        try:
            return self.parse_args_into_dataclasses(args=args)
        except ValueError as error:  # a config's __post_init__ refusing a value: the field is in the message
            raise RecipeError(str(error)) from error
