import pytest
import torch
import yaml
from transformers import LlamaForCausalLM

from tests.conftest import preference_rows, tiny_text_config
from trl_robust import BRMERewardModel, cli
from trl_robust.recipe_parser import RecipeError
from trl_robust.scripts import train_brme


@pytest.fixture
def tiny_backbone(tmp_path, smol_tokenizer):
    torch.manual_seed(0)
    path = tmp_path / "tiny"
    LlamaForCausalLM(tiny_text_config("llama", len(smol_tokenizer))).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def write_recipe(path, **values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_reward_subcommand_runs_a_recipe_and_flags_override_it(tmp_path, tiny_backbone):
    data = tmp_path / "pairs.jsonl"
    import json

    data.write_text("\n".join(json.dumps(r) for r in preference_rows(24)))
    recipe = write_recipe(
        tmp_path / "brme.yaml",
        model_name_or_path=str(tiny_backbone),
        dataset_name=str(data),
        dataset_test_split=None,
        output_dir=str(tmp_path / "out"),
        num_heads=4,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        max_length=64,
    )
    assert cli.main(["reward", "--config", str(recipe), "--num_heads", "2"]) == 0
    model = BRMERewardModel.from_pretrained(tmp_path / "out")
    assert model.config.num_heads == 2  # the flag won over the recipe's 4


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num_haeds": 5}, "unknown key 'num_haeds'. Did you mean 'num_heads'"),
        ({"learning_rate": "fast"}, "key 'learning_rate' must be float"),
        ({"num_heads": 2.5}, "key 'num_heads' must be int"),
        ({"gradient_checkpointing": "yes"}, "key 'gradient_checkpointing' must be bool"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, values, message, capsys):
    recipe = write_recipe(tmp_path / "bad.yaml", output_dir=str(tmp_path / "out"), **values)
    with pytest.raises(RecipeError, match=message):
        train_brme.main(["--config", str(recipe)])
    assert cli.main(["reward", "--config", str(recipe)]) == 2
    assert message.split("'")[1] in capsys.readouterr().err


def test_help_lists_fields_with_their_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reward", "--help"])
    text = capsys.readouterr().out
    assert "--num_heads" in text and "Number of Gaussian reward heads" in text and "--dataset_name" in text
    assert cli.main(["nonsense"]) == 2


def test_shipped_recipes_only_use_valid_keys():
    from pathlib import Path

    from trl_robust import RobustGRPOConfig, RobustPPOConfig, RobustRLOOConfig
    from trl_robust.brme_reward_config import BRMERewardConfig
    from trl_robust.overoptimization_config import OverOptimizationConfig
    from trl_robust.recipe_parser import check_recipe
    from trl_robust.script_args import RLScriptArguments, ScriptArguments
    from trl_robust.scripts.train_ppo import PPOScriptArguments

    kinds = {
        "brme": (ScriptArguments, BRMERewardConfig),
        "grpo": (RLScriptArguments, RobustGRPOConfig),
        "rloo": (RLScriptArguments, RobustRLOOConfig),
        "ppo": (PPOScriptArguments, RobustPPOConfig),
        "overoptimization": (OverOptimizationConfig,),
    }
    recipes = list(Path(__file__).parents[1].glob("recipes/**/*.yaml"))
    assert recipes
    for recipe in recipes:
        kind = next((k for k in kinds if recipe.stem.startswith(k)), None)
        assert kind is not None, f"{recipe}: no known kind"
        check_recipe(yaml.safe_load(recipe.read_text()), kinds[kind], str(recipe))
        if kind == "overoptimization":
            OverOptimizationConfig(**yaml.safe_load(recipe.read_text()))  # values in range too


@pytest.mark.parametrize("command", ["grpo", "rloo"])
def test_online_rl_subcommands_run_a_tiny_recipe(tmp_path, smol_tokenizer, command):
    import json

    from tests.robust_rl_helpers import save_policy, train_great_brme

    policy = save_policy(tmp_path / "policy", smol_tokenizer)
    brme = train_great_brme(tmp_path / "brme", smol_tokenizer)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Review {i}:"}) for i in range(8)))
    recipe = write_recipe(
        tmp_path / f"{command}.yaml",
        model_name_or_path=str(policy),
        reward_model_path=str(brme),
        dataset_name=str(prompts),
        dataset_test_split=None,
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        num_generations=2,
        max_completion_length=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        reward_aggregation="worst",
        per_device_train_batch_size=4,
    )
    assert cli.main([command, "--config", str(recipe)]) == 0
    saved = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    initial = LlamaForCausalLM.from_pretrained(policy)
    changed = any(not torch.equal(a, b) for a, b in zip(saved.parameters(), initial.parameters(), strict=True))
    assert changed


def test_ppo_subcommand_runs_a_tiny_recipe(tmp_path, smol_tokenizer):
    import json

    from tests.robust_rl_helpers import save_policy, train_great_brme

    policy = save_policy(tmp_path / "policy", smol_tokenizer)
    brme = train_great_brme(tmp_path / "brme", smol_tokenizer)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Review {i}:"}) for i in range(8)))
    recipe = write_recipe(
        tmp_path / "ppo.yaml",
        model_name_or_path=str(policy),
        reward_model_path=str(brme),
        dataset_name=str(prompts),
        dataset_test_split=None,
        output_dir=str(tmp_path / "out"),
        total_episodes=8,
        per_device_train_batch_size=4,
        response_length=4,
        num_ppo_epochs=1,
        learning_rate=1e-3,
        num_sample_generations=0,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        reward_aggregation="uwo",
    )
    assert cli.main(["ppo", "--config", str(recipe)]) == 0
    saved = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    initial = LlamaForCausalLM.from_pretrained(policy)
    assert any(not torch.equal(a, b) for a, b in zip(saved.parameters(), initial.parameters(), strict=True))


def test_overoptimization_subcommand_runs_a_tiny_recipe_and_reuses_its_proxy(tmp_path, smol_tokenizer):
    import csv

    from tests.robust_rl_helpers import save_policy

    policy = save_policy(tmp_path / "policy", smol_tokenizer)
    tiny = dict(
        policy_model=str(policy),
        proxy_backbone=str(policy),
        gold="tests.test_overoptimization:vowel_share",  # a Python function named on the command line
        num_proxy_pairs=12,
        num_proxy_eval_pairs=4,
        proxy_num_heads=2,
        proxy_epochs=1,
        max_prompt_length=24,
        response_length=4,
        num_eval_prompts=4,
        bon_pool_size=4,
        rl_steps=1,
        rl_batch_size=4,
        num_generations=2,
    )
    first = write_recipe(tmp_path / "bon.yaml", output_dir=str(tmp_path / "bon"), methods=["bon"], **tiny)
    assert cli.main(["overoptimization", "--config", str(first), "--settings", "worst", "robust:0.6"]) == 0
    with (tmp_path / "bon" / "curves.csv").open() as f:
        assert {(r["setting"], r["step"]) for r in csv.DictReader(f)} == {
            (s, n) for s in ("worst", "robust:0.6") for n in ("1", "2", "4")
        }

    second = write_recipe(tmp_path / "grpo.yaml", output_dir=str(tmp_path / "grpo"), methods=["grpo"], **tiny)
    proxy = str(tmp_path / "bon" / "proxy")
    assert cli.main(["overoptimization", "--config", str(second), "--settings", "mean", "--proxy_model", proxy]) == 0
    assert not (tmp_path / "grpo" / "proxy").exists()  # reused, not retrained
    with (tmp_path / "grpo" / "curves.csv").open() as f:
        rows = [(r["method"], r["setting"], r["seed"], r["step"]) for r in csv.DictReader(f)]
    assert rows == [("grpo", "mean", seed, step) for seed in ("0", "1") for step in ("0", "1")]  # default seeds 0, 1


def test_overoptimization_recipe_with_a_bad_setting_names_it(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "bad.yaml", settings=["robust:0.4", "median"])
    assert cli.main(["overoptimization", "--config", str(recipe)]) == 2  # the config's ValueError, as one line
    assert "unknown aggregation 'median'" in capsys.readouterr().err
