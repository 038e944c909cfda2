"""
Every row of the command-line error table in docs/reliability.md ("Command-line errors"), run through the `trl-robust`
entry point (`trl_robust_cli.main`, what the console script calls): exit status 2, the message of the table, no
traceback, no model built; and the rows marked "at once" in a fresh interpreter, where none of torch, transformers or
TRL may be imported by the time the error is printed.
"""

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
        "--max_train_samples",
        "-1",
    ]
    values = recipe_checks.check_flags(argv, recipe_checks.command_specs("reward"))
    assert values == {
        "num_heads": 3,
        "learning_rate": 1e-4,
        "gradient_checkpointing": True,
        "remove_unused_columns": False,
        "report_to": ["none"],
        "bf16": False,
        "max_train_samples": -1,
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
