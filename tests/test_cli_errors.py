"""
Every row of the command-line error table in docs/reliability.md ("Command-line errors"), run through the `trl-robust`
entry point (`trl_robust_cli.main`, what the console script calls): exit status 2, the message of the table, no
traceback, no model built; and the rows marked "at once" in a fresh interpreter, where none of torch, transformers or
TRL may be imported by the time the error is printed. Then the numeric ranges that fields declare in their metadata
(`recipe_checks.value_range`): how a range is read, and that the early check and the config's own give one message.
"""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

import trl_robust_cli
from trl_robust import recipe_checks
from trl_robust.cli import command_dataclasses
from trl_robust.script_args import ScriptArguments
from trl_robust.scripts import train_brme

ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "transformers", "trl")
FILES = {
    "pairs.jsonl": [{"chosen": "Sure, here it is.", "rejected": "No."}] * 2,
    "prompts.jsonl": [{"prompt": "Tell me a story."}] * 2,
    "empty.jsonl": [],
    "no_rejected.jsonl": [{"chosen": "Sure.", "prompt": "Hi"}],
    "empty_chosen.jsonl": [{"chosen": "", "rejected": "No."}],
    "empty_prompt.jsonl": [{"prompt": ""}],
}


def _unquote(cell: str) -> str:
    return cell[2:-2].strip() if cell.startswith("``") else cell.strip("`")


def table_rows() -> list[dict]:
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    section = text.split("## Command-line errors", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `trl-robust"):
            command, mistake, message, when = (cell.strip() for cell in line.strip().strip("|").split(" | "))
            recipe = re.match(r"recipe\.yaml: `(.+?)`", mistake)
            rows.append(
                {
                    "args": shlex.split(_unquote(command))[1:],
                    "recipe": recipe.group(1) if recipe else None,
                    "message": _unquote(message),
                    "at_once": when == "at once",
                }
            )
    return rows


ROWS = table_rows()


def test_the_table_covers_every_command_with_25_mistakes_or_more():
    assert len(ROWS) >= 25
    assert {row["args"][0] for row in ROWS} == {
        "reward",
        "ppo",
        "grpo",
        "rloo",
        "evaluate",
        "overoptimization",
        "quickstart",
    }


def make_workdir(path: Path, recipe: str | None) -> Path:
    for name, rows in FILES.items():
        (path / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    (path / "brme").mkdir()
    (path / "brme" / "config.json").write_text("{}")
    (path / "outputs").mkdir()
    (path / "recipes").symlink_to(ROOT / "recipes")
    if recipe is not None:
        (path / "recipe.yaml").write_text(recipe + "\n")
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        status = trl_robust_cli.main(args)
    except SystemExit as exit_:  # argparse (the quickstart's options) exits with status 2 after its message
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out + captured.err


@pytest.mark.parametrize("row", ROWS, ids=[" ".join(row["args"]) for row in ROWS])
def test_each_mistake_gets_its_one_line_error(row, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(make_workdir(tmp_path, row["recipe"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the error")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", no_model)
    status, output = run_cli(row["args"], capsys)
    assert status == 2, output
    assert row["message"] in " ".join(output.split()), output
    assert "Traceback" not in output


def test_the_at_once_rows_import_no_torch_transformers_or_trl(tmp_path):
    quick = [row for row in ROWS if row["at_once"]]
    assert len(quick) >= 20
    script = """
import contextlib, io, json, os, sys
from trl_robust_cli import main
results = []
for args, recipe in json.loads(sys.argv[1]):
    if recipe is not None:
        open("recipe.yaml", "w").write(recipe + "\\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        try:
            status = main(args)
        except SystemExit as exit_:
            status = exit_.code
    results.append([status, err.getvalue(), [m for m in HEAVY if m in sys.modules]])
print(json.dumps(results))
""".replace("HEAVY", repr(HEAVY))
    make_workdir(tmp_path, None)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps([[row["args"], row["recipe"]] for row in quick])],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for row, (status, output, heavy) in zip(quick, json.loads(done.stdout), strict=True):
        assert status == 2 and row["message"] in " ".join(output.split()), (row["args"], output)
        assert heavy == [], (row["args"], heavy)


def test_the_schema_file_matches_the_configs():
    built = recipe_checks.build_schema(command_dataclasses())
    shipped = json.loads(recipe_checks.SCHEMA_PATH.read_text(encoding="utf-8"))
    assert shipped["versions"] == built["versions"], (
        "the schema was built against other library versions than the installed ones (scripts/constraints.txt pins "
        "them): reinstall with scripts/setup.sh, or move the pins and run `python -m trl_robust.recipe_checks --write`"
    )
    assert built == shipped, "the configs changed: run `python -m trl_robust.recipe_checks --write` and commit the file"
    assert recipe_checks.command_specs("reward")["num_heads"]["types"] == ["int"]


def test_a_stale_schema_is_not_used_and_the_full_parser_still_names_the_key(tmp_path, monkeypatch, capsys):
    schema = json.loads(recipe_checks.SCHEMA_PATH.read_text(encoding="utf-8"))
    schema["commands"]["reward"]["source_hash"] = "0" * 64  # as if brme_reward_config.py had changed since
    stale = tmp_path / "cli_schema.json"
    stale.write_text(json.dumps(schema))
    monkeypatch.setattr(recipe_checks, "SCHEMA_PATH", stale)
    assert recipe_checks.command_specs("reward") is None
    assert recipe_checks.command_specs("ppo") is not None
    (tmp_path / "recipe.yaml").write_text("num_haeds: 5\n")
    status, output = run_cli(["reward", "--config", str(tmp_path / "recipe.yaml")], capsys)
    assert status == 2 and "unknown key 'num_haeds'. Did you mean 'num_heads'?" in output


@pytest.mark.parametrize("spelling", ["none", "null", "None", ""])
def test_no_evaluation_split_has_a_command_line_spelling(spelling):
    (script_args, _) = train_brme.make_parser().parse_recipe_and_args(
        ["--dataset_test_split", spelling, "--output_dir", "unused"]
    )
    assert script_args.dataset_test_split is None
    assert ScriptArguments(dataset_test_split="test").dataset_test_split == "test"


def test_every_flag_form_the_full_parser_takes_passes_the_early_check():
    argv = [
        "--num-heads",
        "3",
        "--learning_rate=1e-4",
        "--gradient_checkpointing",
        "--no_remove_unused_columns",
        "--report_to",
        "none",
        "--bf16",
        "false",
        "--seed",
        "-1",  # a negative number is a value, not a flag
    ]
    values = recipe_checks.check_flags(argv, recipe_checks.command_specs("reward"))
    assert values == {
        "num_heads": 3,
        "learning_rate": 1e-4,
        "gradient_checkpointing": True,
        "remove_unused_columns": False,
        "report_to": ["none"],
        "bf16": False,
        "seed": -1,
    }
    _, config = train_brme.make_parser().parse_recipe_and_args(argv[:-2] + ["--output_dir", "unused"])
    assert (config.num_heads, config.learning_rate, config.bf16) == (3, 1e-4, False)
    assert config.remove_unused_columns is False


def test_config_equals_path_is_read_like_config_path(tmp_path):
    (tmp_path / "recipe.yaml").write_text("num_heads: 2\n")
    path = str(tmp_path / "recipe.yaml")
    assert recipe_checks.split_config([f"--config={path}", "--seed", "1"]) == (path, ["--seed", "1"])
    _, config = train_brme.make_parser().parse_recipe_and_args([f"--config={path}", "--output_dir", "unused"])
    assert config.num_heads == 2


@pytest.mark.parametrize(
    "recipe", sorted((ROOT / "recipes").glob("**/*.yaml")), ids=lambda p: p.parent.name + "/" + p.name
)
def test_the_early_check_passes_every_shipped_recipe(recipe, monkeypatch):
    command = {"brme": "reward", "ppo": "ppo", "grpo": "grpo", "rloo": "rloo", "overoptimization": "overoptimization"}
    specs = recipe_checks.command_specs(command[next(k for k in command if recipe.stem.startswith(k))])
    monkeypatch.setattr(os, "environ", dict(os.environ))  # a recipe's env: mapping stays in this test
    recipe_checks.check_values(recipe_checks.read_recipe(recipe), specs, str(recipe))


def test_the_early_check_passes_the_dry_run_flags_of_the_recipes_page():
    text = (ROOT / "docs" / "recipes.md").read_text(encoding="utf-8")
    block = text.split("## A dry run first", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert [c[1] for c in commands] == ["reward", "ppo", "grpo"]
    for command in commands:
        _, flags = recipe_checks.split_config(command[2:])
        recipe_checks.check_flags(flags, recipe_checks.command_specs(command[1]))


# Ranges: declared once in a field's metadata, read by the config's own check and by the early one.
RANGE_MESSAGE = re.compile(r"^(recipe\.yaml: )?(\w+\.\w+ must be .*)$")
RANGE_ROWS = [row for row in ROWS if row["at_once"] and RANGE_MESSAGE.match(row["message"])]


@pytest.mark.parametrize("row", RANGE_ROWS, ids=[" ".join(row["args"]) for row in RANGE_ROWS])
def test_a_range_error_reads_the_same_without_the_schema(row, tmp_path, monkeypatch, capsys):
    """The rows' range errors come from the schema before the imports; with no schema the config's own check gives
    the same message after the imports (less the recipe's name)."""
    monkeypatch.chdir(make_workdir(tmp_path, row["recipe"]))
    monkeypatch.setattr(recipe_checks, "command_specs", lambda command: None)
    status, output = run_cli(row["args"], capsys)
    assert status == 2 and RANGE_MESSAGE.match(row["message"]).group(2) in " ".join(output.split()), output


def test_at_least_eight_range_rows_cover_open_closed_and_optional_ranges():
    messages = " ".join(row["message"] for row in RANGE_ROWS)
    assert len(RANGE_ROWS) >= 8
    assert all(part in messages for part in ("in [0, 1]", "in (0, 1)", ">= 1", "finite number > 0", "or None"))


@pytest.mark.parametrize(
    "bounds, inside, outside, described",
    [
        (recipe_checks.value_range(0, 1), [0, 0.5, 1], [-0.01, 1.01, float("nan")], "in [0, 1]"),
        (
            recipe_checks.value_range(0, 1, low_inclusive=False, high_inclusive=False),
            [1e-9, 0.5, 0.999],
            [0, 0.0, 1, 1.0],
            "in (0, 1)",
        ),
        (recipe_checks.value_range(0, 0.5, high_inclusive=False), [0, 0.49], [0.5, -1], "in [0, 0.5)"),
        (recipe_checks.value_range(1), [1, 2, 10**400, float("inf")], [0, 0.5, -1, float("nan")], ">= 1"),
        (recipe_checks.value_range(0, low_inclusive=False), [1e-12, float("inf")], [0, -1.0], "> 0"),
        (
            recipe_checks.value_range(0, finite=True),
            [0, 3.5, 10**400],
            [-1e-9, float("inf"), float("nan")],
            "a finite number >= 0",
        ),
        (recipe_checks.value_range(high=2, high_inclusive=False), [-5, 1.99], [2, 3], "< 2"),
    ],
)
def test_value_range_reads_each_end_inclusive_or_not(bounds, inside, outside, described):
    assert recipe_checks.describe_range(bounds) == described
    assert json.loads(json.dumps(bounds)) == bounds  # plain JSON data: it goes into the schema file as it is
    for value in inside:
        assert recipe_checks.in_range(value, bounds), value
        assert recipe_checks.range_error("C.x", value, bounds) is None
    for value in outside:
        assert not recipe_checks.in_range(value, bounds), value
        assert recipe_checks.range_error("C.x", value, bounds) == f"C.x must be {described}, got {value!r}."


def test_a_range_refuses_what_is_not_a_number_and_a_bad_range_is_refused():
    bounds = recipe_checks.value_range(0, 1)
    for value in (True, False, "0.5", None, [0.5]):
        assert not recipe_checks.in_range(value, bounds), value
    with pytest.raises(ValueError, match="needs a lower or an upper bound"):
        recipe_checks.value_range()
    with pytest.raises(ValueError, match="lower bound 2 is above the upper bound 1"):
        recipe_checks.value_range(2, 1)


@dataclasses.dataclass
class Ranged:
    share: float = dataclasses.field(
        default=0.5, metadata={"help": "", **recipe_checks.ranged(recipe_checks.value_range(0, 1))}
    )
    count: int = dataclasses.field(
        default=1, metadata={"help": "", **recipe_checks.ranged(recipe_checks.value_range(1))}
    )
    limit: int | None = dataclasses.field(
        default=None, metadata={"help": "", **recipe_checks.ranged(recipe_checks.value_range(1))}
    )
    name: str = "x"

    def __post_init__(self):
        recipe_checks.check_field_ranges(self)


def test_a_dataclass_checks_its_fields_ranges_and_none_only_where_the_field_is_optional():
    assert recipe_checks.field_ranges(Ranged) == {
        "share": (recipe_checks.value_range(0, 1), False),
        "count": (recipe_checks.value_range(1), False),
        "limit": (recipe_checks.value_range(1), True),
    }
    Ranged(share=0, count=1, limit=None)
    Ranged(share=1.0, count=5, limit=1)
    for kwargs, message in [
        ({"share": 1.5}, "Ranged.share must be in [0, 1], got 1.5."),
        ({"count": 0}, "Ranged.count must be >= 1, got 0."),
        ({"count": None}, "Ranged.count must be >= 1, got None."),
        ({"limit": 0}, "Ranged.limit must be >= 1 or None, got 0."),
    ]:
        with pytest.raises(ValueError) as error:
            Ranged(**kwargs)
        assert str(error.value) == message


def test_the_early_check_gives_the_configs_own_range_message():
    specs = recipe_checks.field_specs([Ranged])
    assert specs["share"]["range"] == recipe_checks.value_range(0, 1) and specs["share"]["owner"] == "Ranged"
    assert specs["name"]["range"] is None
    for flag, value, kwargs in [("share", "1.5", {"share": 1.5}), ("limit", "0", {"limit": 0})]:
        with pytest.raises(ValueError) as own:
            Ranged(**kwargs)
        with pytest.raises(recipe_checks.RecipeError) as early:
            recipe_checks.check_flags([f"--{flag}", value], specs)
        assert str(early.value) == str(own.value)
        with pytest.raises(recipe_checks.RecipeError) as from_recipe:
            recipe_checks.check_values(kwargs, specs, "r.yaml")
        assert str(from_recipe.value) == f"r.yaml: {own.value}"
    recipe_checks.check_values({"limit": None, "share": 0}, specs, "r.yaml")  # None: the optional field unset
    assert recipe_checks.check_flags(["--count", "3"], specs) == {"count": 3}


def test_a_plain_hf_argument_parser_still_takes_the_ranged_configs():
    """HfArgumentParser passes every metadata entry to argparse; `ranged` adds the action that accepts `range`."""
    from transformers import HfArgumentParser

    from trl_robust import BRMERewardConfig

    (config,) = HfArgumentParser((BRMERewardConfig,)).parse_args_into_dataclasses(
        ["--output_dir", "unused", "--robust_lambda", "0.7", "--num_heads", "3", "--head_hidden_size", "8"]
    )
    assert (config.robust_lambda, config.num_heads, config.head_hidden_size) == (0.7, 3, 8)
    (args,) = HfArgumentParser((Ranged,)).parse_args_into_dataclasses(["--share", "0.25"])
    assert args.share == 0.25 and args.limit is None
