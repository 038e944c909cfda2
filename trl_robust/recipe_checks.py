"""
Reading and checking a command line and its `--config` recipe without importing torch, transformers or TRL.

The fields a command accepts come from its dataclasses (`field_specs`); `trl-robust` reads them from a schema file
generated from those dataclasses (`trl_robust/assets/cli_schema.json`, rebuilt with `python -m
trl_robust.recipe_checks --write`), so that a typo, a wrong type or a value outside a field's choices is reported in a
fraction of a second instead of after the imports. The schema is used only while it matches the installed TRL and
transformers and the source files it was built from; otherwise the full parser (`RecipeParser`) does the same checks.

A numeric field's allowed range is declared once, in its metadata: `metadata={"help": ..., **ranged(value_range(1))}`
puts `{"range": {"low": 1, ...}}` there. The configs' `__post_init__` check it with `check_field_ranges`, and the schema
carries it, so that a value out of range is also reported before the imports, with the same message.
"""

import argparse
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).parent / "assets" / "cli_schema.json"
PACKAGE_DIR = Path(__file__).parent
TRUE, FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")  # what HfArgumentParser reads as bools
# Modules whose constants the fields' choices and ranges use (the aggregations and their parameters' ranges, the BRME's
# ranges): part of every command's source hash, so that a change there makes the schema stale.
VALUE_SOURCES = ("aggregation.py", "configuration_brme.py")


class RecipeError(ValueError):
    """A recipe, command line, or the data and model paths it names, that cannot be run as written."""


def value_range(
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    finite: bool = False,
) -> dict:
    """
    A numeric field's allowed values as plain JSON data, for its metadata (`ranged`) and the schema file: the
    bounds (None: unbounded on that side), whether each bound is allowed itself, and, for a range open above or below,
    whether infinities are refused (`finite`; a range with both bounds is finite anyway). NaN is never in range.
    `value_range(0, 1)` is [0, 1], `value_range(0, 1, low_inclusive=False, high_inclusive=False)` is (0, 1),
    `value_range(1)` is >= 1, `value_range(0, low_inclusive=False, finite=True)` is a finite number > 0.
    """
    if low is None and high is None:
        raise ValueError("value_range needs a lower or an upper bound.")
    if low is not None and high is not None and low > high:
        raise ValueError(f"value_range: the lower bound {low} is above the upper bound {high}.")
    return dict(low=low, high=high, low_inclusive=low_inclusive, high_inclusive=high_inclusive, finite=finite)


class RangedArgument(argparse.Action):
    """argparse's plain store action that also accepts the `range` keyword: `HfArgumentParser` (and TRL's parser)
    pass every metadata entry of a field to `add_argument`, where the default action would refuse `range`. Stores the
    value as given; the range is checked by the config (`check_field_ranges`) and by the early check."""

    def __init__(self, option_strings: list[str], dest: str, range: Mapping | None = None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.range = range

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)


def ranged(bounds: Mapping) -> dict:
    """A field's metadata entries for the range `bounds` (a `value_range`): `metadata={"help": ..., **ranged(...)}`.
    `range` is what the checks read; `action` lets the argument parsers take the field (see `RangedArgument`)."""
    return {"range": bounds, "action": RangedArgument}


def describe_range(bounds: Mapping) -> str:
    """What `must be ...` says of a range: `in [0, 1]`, `in (0, 1)`, `>= 1`, `a finite number > 0`."""
    low, high = bounds["low"], bounds["high"]
    if low is not None and high is not None:
        opening, closing = "[" if bounds["low_inclusive"] else "(", "]" if bounds["high_inclusive"] else ")"
        return f"in {opening}{low:g}, {high:g}{closing}"
    if low is not None:
        side = f"{'>=' if bounds['low_inclusive'] else '>'} {low:g}"
    else:
        side = f"{'<=' if bounds['high_inclusive'] else '<'} {high:g}"
    return f"a finite number {side}" if bounds["finite"] else side


def in_range(value, bounds: Mapping) -> bool:
    """Whether `value` is a number (an int or float, not a bool) within `bounds` (a `value_range`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and (math.isnan(value) or (bounds["finite"] and math.isinf(value))):
        return False  # (an int is finite; math.isnan would overflow on a huge one)
    low, high = bounds["low"], bounds["high"]
    if low is not None and not (value >= low if bounds["low_inclusive"] else value > low):
        return False
    return high is None or (value <= high if bounds["high_inclusive"] else value < high)


def range_error(name: str, value, bounds: Mapping, optional: bool = False) -> str | None:
    """The message for `value` of the field `name` (`"BRMEConfig.num_heads"`) when it is out of `bounds`, else None;
    None is in range (and the message says so) where the field is `optional`."""
    if (value is None and optional) or in_range(value, bounds):
        return None
    return f"{name} must be {describe_range(bounds)}{' or None' if optional else ''}, got {value!r}."


def check_range(
    name: str, value, bounds: Mapping, optional: bool = False, error: type[ValueError] = ValueError
) -> None:
    """Raise `error` with `range_error`'s message when `value` is out of `bounds`."""
    message = range_error(name, value, bounds, optional)
    if message is not None:
        raise error(message)


def check_ranges(
    owner: str | None,
    values: Mapping,
    ranges: Mapping[str, Mapping],
    optional: Iterable[str] = (),
    error: type[ValueError] = ValueError,
) -> None:
    """Raise `error` naming `owner.field` (the field alone when `owner` is None), the range and the value, for the
    first of `ranges` (`{field: value_range(...)}`) whose value in `values` is out of its range. For the checks of
    objects that are not dataclasses with range metadata (BRMEConfig, the aggregation parameters)."""
    optional = set(optional)
    for name, bounds in ranges.items():
        check_range(f"{owner}.{name}" if owner else name, values[name], bounds, name in optional, error)


@functools.cache
def field_ranges(dataclass_type: type) -> dict[str, tuple[dict, bool]]:
    """`{field: (range, optional)}` of the dataclass's fields that have `metadata["range"]`; `optional` says the
    field's type allows None (then None is in range)."""
    hints = typing.get_type_hints(dataclass_type)
    return {
        f.name: (f.metadata["range"], _allows_none(hints[f.name]))
        for f in dataclasses.fields(dataclass_type)
        if "range" in f.metadata
    }


def check_field_ranges(config, error: type[ValueError] = ValueError) -> None:
    """Raise `error` (`"ClassName.field must be in [0, 1], got 1.5."`) for the first field of the dataclass instance
    `config` whose value is outside its `metadata["range"]`. Called by the configs' `__post_init__`."""
    for name, (bounds, optional) in field_ranges(type(config)).items():
        check_range(f"{type(config).__name__}.{name}", getattr(config, name), bounds, optional, error)


def _allows_none(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


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


def _literal_values(annotation) -> list | None:
    """The values of a `Literal[...]` field (also inside `Literal[...] | None`), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is typing.Literal:
                return list(typing.get_args(arg))
    return None


def _is_list(annotation) -> bool:
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    return typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in args)


TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}


def field_specs(dataclass_types: Iterable[type]) -> dict[str, dict]:
    """
    What `check_values` and `check_flags` need of every init field of the dataclasses, as plain JSON data:
    `types` (names among bool, int, float, str, null; None where not checked), `choices` (from the field's
    `metadata["choices"]` or a `Literal`), `range` (its `metadata["range"]`, a `value_range`, or None), `owner` (the
    class whose name the range error gives, as the config's own check does), `list` (the field takes several values)
    and `default`.
    """
    specs = {}
    for dc in dataclass_types:
        hints = typing.get_type_hints(dc)
        for f in dataclasses.fields(dc):
            if not f.init or f.name in specs:
                continue
            allowed = _allowed_types(hints[f.name])
            choices = f.metadata.get("choices") or _literal_values(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            if not isinstance(default, bool | int | float | str | list | type(None)):
                default = None  # enums and other objects: only the path fields' defaults are read
            specs[f.name] = {
                "types": None if allowed is None else [TYPE_NAMES[t] for t in allowed],
                "choices": None if choices is None else [c for c in choices if c is not None],
                "range": f.metadata.get("range"),
                "owner": dc.__name__,
                "list": _is_list(hints[f.name]),
                "default": default,
            }
    return specs


def _closest(word: str, words: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(words), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_choice(where: str, value, spec: dict) -> None:
    """`where` ("recipe.yaml: key 'x'", "--x") must be one of the field's choices, if it has any."""
    choices = spec["choices"]
    if choices and isinstance(value, str) and value not in [str(c) for c in choices]:
        raise RecipeError(
            f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}.{_closest(value, map(str, choices))}"
        )


def _check_range(key: str, value, spec: dict, source: str | None = None) -> None:
    """A value outside the field's range, with the message its config's own check gives (after `source: `)."""
    if spec.get("range") is None:
        return
    optional = spec["types"] is None or "null" in spec["types"]
    message = range_error(f"{spec['owner']}.{key}", value, spec["range"], optional)
    if message is not None:
        raise RecipeError(f"{source}: {message}" if source else message)


def check_values(values: Mapping, specs: Mapping[str, dict], source: str) -> None:
    """Raise a `RecipeError` for a key no field has (naming the closest valid key), a value of the wrong type, or a
    value outside a field's choices or range."""
    for key, value in values.items():
        if key not in specs:
            raise RecipeError(
                f"{source}: unknown key {key!r}.{_closest(key, specs)} Run with --help to list every valid key."
            )
        spec = specs[key]
        if spec["types"] is not None:
            allowed = tuple(t for t, n in TYPE_NAMES.items() if n in spec["types"])
            # YAML `yes` for a number is a mistake, although bool is an int in Python
            ok = bool in allowed if isinstance(value, bool) else isinstance(value, allowed)
            if not ok:
                names = " or ".join(spec["types"])
                raise RecipeError(f"{source}: key {key!r} must be {names}, got {value!r} ({type(value).__name__}).")
        _check_choice(f"{source}: key {key!r}", value, spec)
        _check_range(key, value, spec, source)


def check_recipe(recipe: dict, dataclass_types: Iterable[type], source: str) -> None:
    """`check_values` against the fields of the given dataclasses."""
    check_values(recipe, field_specs(dataclass_types), source)


def read_recipe(path: str | os.PathLike) -> dict:
    """A recipe as a dict, read with `yaml.safe_load` (a Python tag is refused, never run); its `env:` mapping is
    applied to `os.environ` and removed."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe {str(path)!r} does not exist.")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise RecipeError(
            f"{path} is not plain YAML (Python tags such as !!python/object are refused): {error}"
        ) from error
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys to values, got {type(recipe).__name__}.")
    for key, value in (recipe.pop("env", None) or {}).items():
        os.environ[key] = str(value)
    return recipe


def split_config(args: list[str]) -> tuple[str | None, list[str]]:
    """The `--config` path (or None) and the other arguments (`--config=path` works too)."""
    for at, token in enumerate(args):
        if token.startswith("--config="):
            return token.partition("=")[2], args[:at] + args[at + 1 :]
    if "--config" not in args:
        return None, args
    at = args.index("--config")
    if at + 1 >= len(args) or args[at + 1].startswith("--"):
        raise RecipeError("--config needs a path to a YAML recipe.")
    return args[at + 1], args[:at] + args[at + 2 :]


def _convert(name: str, text: str, spec: dict):
    """One command-line value as the parser will read it, or a `RecipeError` naming the flag."""
    kinds = spec["types"] or []
    if not kinds or "str" in kinds:  # any text is a str; the full parser decides how a `str | bool` field reads it
        return text
    if "bool" in kinds:
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
    elif "float" in kinds:  # before int: a float field also takes an int
        try:
            return float(text)
        except ValueError:
            pass
    elif "int" in kinds:
        try:
            return int(text)
        except ValueError:
            pass
    raise RecipeError(f"--{name} must be {' or '.join(k for k in kinds if k != 'null')}, got {text!r}.")


def check_flags(args: list[str], specs: Mapping[str, dict]) -> dict:
    """The `--field value` flags (no `--config`) as typed values; a `RecipeError` names an unknown flag (and the
    closest valid one), a missing value, a value of the wrong type or outside the field's choices or range."""
    values, at = {}, 0
    while at < len(args):
        token = args[at]
        if not token.startswith("--"):
            raise RecipeError(f"Unexpected argument {token!r}: give every field as --name value.")
        name, has_value, inline = token[2:].partition("=")
        name = name.replace("-", "_")  # HfArgumentParser also takes --num-heads for num_heads
        given = [inline] if has_value else []
        at += 1
        while not has_value and at < len(args) and not args[at].startswith("--"):
            given.append(args[at])
            at += 1
        if name not in specs and name.startswith("no_") and specs.get(name[3:], {}).get("types") == ["bool"]:
            values[name[3:]] = False  # HfArgumentParser's --no_<field> for a bool field that defaults to True
            continue
        if name not in specs:
            suggestion = _closest(name, specs).replace("mean '", "mean '--")
            raise RecipeError(f"Unknown argument --{name}.{suggestion} Run with --help to list every valid field.")
        spec = specs[name]
        if spec["types"] is not None and "bool" in spec["types"] and not given:
            values[name] = True  # a bare --flag
            continue
        if not given:
            raise RecipeError(f"--{name} needs a value.")
        if len(given) > 1 and not spec["list"]:
            raise RecipeError(f"--{name} takes one value, got {len(given)}: {' '.join(given)}.")
        typed = [_convert(name, text, spec) for text in given]
        for value in typed:
            _check_choice(f"--{name}", value, spec)
            _check_range(name, value, spec)
        values[name] = typed if spec["list"] else typed[0]
    return values


def _source_hash(files: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + (PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("trl", "transformers")}


def command_specs(command: str) -> dict[str, dict] | None:
    """The fields of a `trl-robust` command from the schema file, or None when the file is missing or was built from
    other sources or library versions than those installed (the full parser then checks everything)."""
    try:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
        entry = schema["commands"][command]
        if schema["versions"] != _versions() or entry["source_hash"] != _source_hash(entry["sources"]):
            return None
    except (OSError, KeyError, ValueError, metadata.PackageNotFoundError):
        return None
    return entry["fields"]


def build_schema(commands_types: Mapping[str, tuple[str, Iterable[type]]]) -> dict:
    """The schema of `{command: (script module, dataclass types)}`: each command's fields and the package files they
    come from (its script, the modules of its dataclasses and of their trl_robust bases, and `VALUE_SOURCES`)."""
    import importlib
    import inspect

    def relative(path: str) -> str:
        return Path(path).resolve().relative_to(PACKAGE_DIR.resolve()).as_posix()

    commands = {}
    for command, (script, dataclass_types) in commands_types.items():
        files = {*VALUE_SOURCES, relative(inspect.getsourcefile(importlib.import_module(script)))}
        for dc in dataclass_types:
            for cls in dc.__mro__:
                if cls.__module__.startswith("trl_robust."):
                    files.add(relative(inspect.getsourcefile(cls)))
        commands[command] = {
            "sources": sorted(files),
            "source_hash": _source_hash(files),
            "fields": field_specs(dataclass_types),
        }
    return {"versions": _versions(), "commands": commands}


if __name__ == "__main__":
    from trl_robust.cli import command_dataclasses

    schema = build_schema(command_dataclasses())
    # One line per field: a diff of the file shows which fields changed.
    lines = ['{"versions": ' + json.dumps(schema["versions"], sort_keys=True) + ', "commands": {']
    for i, (command, entry) in enumerate(sorted(schema["commands"].items())):
        head = {"sources": entry["sources"], "source_hash": entry["source_hash"]}
        lines.append(f' "{command}": ' + json.dumps(head)[:-1] + ",")
        fields = [f'  "{name}": {json.dumps(spec, sort_keys=True)}' for name, spec in sorted(entry["fields"].items())]
        lines.append('  "fields": {\n' + ",\n".join(fields) + "}}" + ("," if i < len(schema["commands"]) - 1 else ""))
    text = "\n".join(lines) + "}}\n"
    assert json.loads(text) == json.loads(json.dumps(schema))
    if sys.argv[1:] == ["--write"]:
        SCHEMA_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}")
    else:
        print(text)
