"""Command-line and recipe parsing: TRL's conventions (`--config recipe.yaml`, flags override the file), but a typo in
a recipe is an error that names the key and the closest valid one instead of passing silently."""

import dataclasses
import difflib
import os
import sys
import types
import typing
from collections.abc import Iterable
from pathlib import Path

import yaml
from transformers import HfArgumentParser


class RecipeError(ValueError):
    """A recipe or command line that cannot be run as written."""


def _allowed_types(annotation) -> tuple[type, ...] | None:
    """The plain Python types a field accepts, or None where we do not check (dicts, lists, unions of classes)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return None
    if origin in (typing.Union, types.UnionType):
        found = []
        for arg in typing.get_args(annotation):
            if arg is type(None):
                found.append(type(None))
                continue
            sub = _allowed_types(arg)
            if sub is None:
                return None
            found.extend(sub)
        return tuple(found)
    if annotation in (bool, int, float, str):
        return {float: (float, int), int: (int,), bool: (bool,), str: (str,)}[annotation]
    return None


def check_recipe(recipe: dict, dataclass_types: Iterable[type], source: str) -> None:
    """Raise a `RecipeError` for a key no dataclass has (naming the closest valid key) or a value of the wrong type."""
    fields = {f.name: f for dc in dataclass_types for f in dataclasses.fields(dc) if f.init}
    for key, value in recipe.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"{source}: unknown key {key!r}.{hint} Run with --help to list every valid key.")
        hints = typing.get_type_hints(next(dc for dc in dataclass_types if key in dc.__dataclass_fields__))
        allowed = _allowed_types(hints.get(key))
        if allowed is None:
            continue
        if isinstance(value, bool) and bool not in allowed:
            ok = False  # YAML `yes` for a number is a mistake, although bool is an int in Python
        else:
            ok = isinstance(value, allowed)
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise RecipeError(f"{source}: key {key!r} must be {names}, got {value!r} ({type(value).__name__}).")


class RecipeParser(HfArgumentParser):
    """`HfArgumentParser` that also reads `--config recipe.yaml` (with `yaml.safe_load`), checked by `check_recipe`."""

    def parse_recipe_and_args(self, args: list[str] | None = None) -> tuple:
        args = list(sys.argv[1:] if args is None else args)
        if "--config" in args:
            at = args.index("--config")
            if at + 1 >= len(args):
                raise RecipeError("--config needs a path to a YAML recipe.")
            path = Path(args[at + 1])
            del args[at : at + 2]
            if not path.is_file():
                raise RecipeError(f"Recipe {str(path)!r} does not exist.")
            try:  # safe_load: a tag such as !!python/object is refused, never run
                recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as error:
                raise RecipeError(
                    f"{path} is not plain YAML (Python tags such as !!python/object are refused): {error}"
                ) from error
            if not isinstance(recipe, dict):
                raise RecipeError(f"{path}: a recipe must be a mapping of keys to values, got {type(recipe).__name__}.")
            for key, value in (recipe.pop("env", None) or {}).items():
                os.environ[key] = str(value)
            check_recipe(recipe, self.dataclass_types, str(path))
            for action in self._actions:
                if action.dest in recipe:
                    action.default = recipe[action.dest]
                    action.required = False
        return self.parse_args_into_dataclasses(args=args)
