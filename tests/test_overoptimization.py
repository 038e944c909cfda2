import csv
import json
import math

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from tests.robust_rl_helpers import save_policy, tiny_llama_config, train_great_brme
from trl_robust import BRMERewardModel
from trl_robust import overoptimization as oo
from trl_robust.aggregation import Aggregation
from trl_robust.gold_scorers import RewardModelGold, VaderGold, load_gold_scorer
from trl_robust.overoptimization import (
    best_of_n_kl,
    best_of_n_rows,
    describe_runs,
    evaluation_noise,
    label_pairs,
    per_run,
    per_run_markdown,
    read_curves,
    run_overoptimization,
    sequence_logprobs,
    summarize,
    summary_markdown,
    write_report,
)
from trl_robust.overoptimization_config import OverOptimizationConfig
from trl_robust.tokenization import tokenize_for_reward


def vowel_share(prompts, completions):
    """A programmatic gold with spread on a tiny random policy's gibberish: the share of vowels in the answer."""
    return [sum(ch in "aeiou" for ch in c.lower()) / (1 + len(c)) for c in completions]


# ---------------------------------------------------------------------------------------------------------------------
# Hand computations
# ---------------------------------------------------------------------------------------------------------------------


def test_best_of_n_kl_formula():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_parse_setting_and_bad_settings():
    assert Aggregation.from_setting("robust:0.2") == Aggregation("robust", robust_lambda=0.2)
    assert Aggregation.from_setting("uwo:2") == Aggregation("uwo", uwo_coef=2.0)
    assert Aggregation.from_setting("worst") == Aggregation("worst")
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        OverOptimizationConfig(settings=["mean", "median"])
    with pytest.raises(ValueError, match="'mean' takes no parameter"):
        Aggregation.from_setting("mean:0.3")
    with pytest.raises(ValueError, match="'x' is not a number"):
        Aggregation.from_setting("robust:x")
    with pytest.raises(ValueError, match="label_noise must be in"):
        OverOptimizationConfig(label_noise=0.7)
    with pytest.raises(ValueError, match="methods"):
        OverOptimizationConfig(methods=["dpo"])


def test_label_pairs_orders_by_gold_skips_ties_and_flips_with_noise():
    prompts, a, b = ["p0", "p1", "p2"], ["a0", "a1", "a2"], ["b0", "b1", "b2"]
    rows, flipped = label_pairs(prompts, a, b, [1.0, 0.0, 0.5], [0.0, 1.0, 0.5], 0.0, 0.0, np.random.default_rng(0))
    assert flipped == 0
    assert rows == [
        {"prompt": "p0", "chosen": "a0", "rejected": "b0"},
        {"prompt": "p1", "chosen": "b1", "rejected": "a1"},
    ]  # p2 is a tie
    rows, flipped = label_pairs(prompts, a, b, [1.0, 0.0, 0.9], [0.0, 1.0, 0.5], 1.0, 0.0, np.random.default_rng(0))
    assert flipped == 3 and [r["chosen"] for r in rows] == ["b0", "a1", "b2"]
    rows, _ = label_pairs(prompts, a, b, [1.0, 0.0, 0.9], [0.0, 1.0, 0.5], 0.0, 0.5, np.random.default_rng(0))
    assert len(rows) == 2  # a margin of 0.4 <= 0.5 counts as a tie


def test_best_of_n_picks_the_proxys_favourite_and_reports_its_gold():
    # One prompt, a pool of 4, 2 heads: answer 2 has the best mean, answer 3 the best worst case.
    means = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [9.0, -3.0], [2.0, 2.0]]])
    stds = torch.ones(1, 4, 2)
    gold = torch.tensor([[0.1, 0.2, -1.0, 0.4]])
    rows = best_of_n_rows(gold, means, stds, ["mean", "worst"], seeds=[0])
    by = {(r["setting"], r["step"]): r for r in rows}
    assert sorted({r["step"] for r in rows}) == [1, 2, 4]
    assert by[("mean", 4)]["gold"] == pytest.approx(-1.0)  # mean 3.0: the hacked answer
    assert by[("mean", 4)]["proxy"] == pytest.approx(3.0)
    assert by[("worst", 4)]["gold"] == pytest.approx(0.4) and by[("worst", 4)]["proxy"] == pytest.approx(2.0)
    assert by[("worst", 4)]["kl"] == pytest.approx(best_of_n_kl(4))
    # n = 1 is the seeded random first answer: its gold is one of the pool's, the same for both settings.
    assert by[("mean", 1)]["gold"] == by[("worst", 1)]["gold"] and by[("mean", 1)]["gold"] in gold[0].tolist()


def test_summary_peak_final_drop_and_kl_at_peak_over_seeds():
    def row(seed, step, gold, kl, proxy):
        return {
            "method": "ppo",
            "setting": "nominal",
            "seed": seed,
            "step": step,
            "gold": gold,
            "kl": kl,
            "proxy": proxy,
        }

    rows = [row(0, 0, 0.0, 0.0, 0.0), row(0, 2, 0.6, 1.0, 1.0), row(0, 4, 0.2, 4.0, 2.0)]
    rows += [row(1, 0, 0.0, 0.0, 0.0), row(1, 4, 0.4, 3.0, 1.5), row(1, 2, 0.3, 2.0, 1.0)]  # out of order on purpose
    (entry,) = summarize(rows)
    assert entry["seeds"] == 2
    assert entry["peak_gold"] == pytest.approx(0.5) and entry["peak_gold_std"] == pytest.approx(
        np.std([0.6, 0.4], ddof=1)
    )
    assert entry["final_gold"] == pytest.approx(0.3)
    assert entry["drop_from_peak"] == pytest.approx((0.4 + 0.0) / 2)
    assert entry["kl_at_peak"] == pytest.approx((1.0 + 3.0) / 2)
    assert entry["final_kl"] == pytest.approx(3.5) and entry["final_proxy"] == pytest.approx(1.75)
    assert "| ppo | nominal | 2 | 0.500 ± 0.141 |" in summary_markdown([entry])


def test_per_run_table_peak_drop_and_first_alarm_against_the_peak():
    def row(setting, seed, step, gold, alarm=math.nan):
        return {"method": "grpo", "setting": setting, "seed": seed, "step": step, "gold": gold, "kl": step / 2,
                "proxy": step / 10, "monitor_first_alarm": alarm}  # fmt: skip

    # nominal: gold peaks at update 10 and falls to 0.1; the monitor alarmed at update 5 (the last row holds it)
    rows = [row("nominal", 0, 0, 0.1), row("nominal", 0, 10, 0.5), row("nominal", 0, 20, 0.1, alarm=5.0)]
    # robust: still rising, no alarm; best-of-n rows are not runs
    rows += [row("robust:0.4", 0, 0, 0.1), row("robust:0.4", 0, 20, 0.4), {**row("x", 0, 4, 9.0), "method": "bon"}]
    nominal, robust = per_run(rows)
    assert (nominal["peak_gold"], nominal["peak_step"], nominal["final_gold"]) == (0.5, 10, 0.1)
    assert nominal["drop_from_peak"] == pytest.approx(0.4) and nominal["drop_fraction"] == pytest.approx(0.8)
    assert nominal["kl_at_peak"] == 5.0 and nominal["first_alarm"] == 5.0 and nominal["alarm_by_peak"] is True
    assert robust["drop_from_peak"] == 0.0 and math.isnan(robust["first_alarm"]) and robust["alarm_by_peak"] is None
    late = per_run([row("nominal", 1, 0, 0.1), row("nominal", 1, 10, 0.5), row("nominal", 1, 20, 0.2, alarm=15.0)])
    assert late[0]["alarm_by_peak"] is False
    markdown = per_run_markdown([nominal, robust])
    assert "| grpo | nominal | 0 | 0.100 | 0.500 (10) | 0.100 | 0.400 (80%) | 5.00 | 2.000 | 5 |" in markdown
    assert markdown.splitlines()[-1].endswith("| - |")

    # One sentence per run. Nominal fell 0.4 with a gold noise std of 0.05 (limit 0.15) while its proxy rose 1.0 -> 2.0.
    hacked, rising = describe_runs([nominal, robust], gold_noise=0.05)
    assert "peak of 0.500 at update 10 and ended at 0.100, 80% below its peak" in hacked
    assert (
        "rose from 1.000 to 2.000: reward hacking" in hacked and "alarmed at update 5, before the gold peak" in hacked
    )
    assert "no drop beyond the evaluation noise (std 0.050)" in rising and rising.endswith("did not alarm.")
    # the same drop inside the noise (limit 3 x 0.2 = 0.6) is not called a drop; an alarm after the peak says so
    (noisy,) = describe_runs(late, gold_noise=0.2)
    assert "no drop beyond" in noisy and "reward hacking" not in noisy and "15, after the gold peak" in noisy
    # gold down with the proxy down too is a drop, not hacking
    (down,) = describe_runs([{**nominal, "final_proxy": 0.5}], gold_noise=0.05)
    assert "80% below its peak" in down and "hacking" not in down


def test_evaluation_noise_is_the_std_over_sampling_seeds_of_one_policy():
    seen = []

    def judge(policy, setting, seed):
        seen.append((policy, setting, seed))
        return {"gold": float(seed), "proxy": 2.0 * seed}

    noise = evaluation_noise(judge, "policy", "nominal", draws=3)
    assert seen == [("policy", "nominal", 100), ("policy", "nominal", 101), ("policy", "nominal", 102)]
    assert noise == {"gold": pytest.approx(1.0), "proxy": pytest.approx(2.0)}  # std (ddof 1) of 100, 101, 102


def test_sequence_logprobs_is_the_sum_of_masked_token_logprobs(smol_tokenizer):
    from trl_robust.overoptimization import Answers

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(smol_tokenizer)).eval()
    query = torch.tensor([[0, 5, 6], [7, 8, 9]])
    query_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    response = torch.tensor([[10, 11], [12, 0]])
    response_mask = torch.tensor([[1, 1], [1, 0]])
    got = sequence_logprobs(model, Answers(query, query_mask, response, response_mask, ["", ""]), temperature=0.5)
    # Row 1 by hand: no padding, score the response tokens one by one.
    logits = model(torch.tensor([[7, 8, 9, 12]])).logits[0] / 0.5
    expected = torch.log_softmax(logits[2], -1)[12]
    assert got[1].item() == pytest.approx(expected.item(), abs=1e-5)
    # Row 0 by hand: the left pad is masked and positions start at the first real token.
    logits = model(torch.tensor([[5, 6, 10, 11]])).logits[0] / 0.5
    expected = torch.log_softmax(logits[1], -1)[10] + torch.log_softmax(logits[2], -1)[11]
    assert got[0].item() == pytest.approx(expected.item(), abs=1e-4)


def test_best_of_n_pool_with_the_prompt_cached_draws_what_uncached_sampling_draws(smol_tokenizer, one_thread):
    """`sample_pool` runs each prompt once and copies its cache into every batch: from the same random state, the same
    answers as `sample_answers` on the prompt repeated, batch by batch (5 answers in batches of 3 and 2)."""
    from transformers import set_seed

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(smol_tokenizer)).eval()
    config = OverOptimizationConfig(generation_batch_size=3, response_length=6, temperature=0.7)
    prompts = ["Human: how do I bake bread?\n\nAssistant:", "Human: hi\n\nAssistant:"]
    set_seed(0)
    pools = oo.sample_pool(model, smol_tokenizer, prompts, 5, config)
    set_seed(0)
    expected = [
        [t for n in (3, 2) for t in oo.sample_answers(model, smol_tokenizer, [p] * n, 6, 0.7).texts] for p in prompts
    ]
    assert pools == expected
    assert [len(pool) for pool in pools] == [5, 5] and len(set(pools[0])) > 1  # sampled, not one answer five times


# ---------------------------------------------------------------------------------------------------------------------
# Gold scorers plug in
# ---------------------------------------------------------------------------------------------------------------------


def test_vader_gold_scores_sentiment_of_the_answer():
    pytest.importorskip("vaderSentiment")
    gold = load_gold_scorer("vader")
    assert isinstance(gold, VaderGold)
    happy, sad = gold(["Q", "Q"], ["What a wonderful, lovely day!", "This is terrible and awful."])
    assert happy > 0.5 and sad < -0.5


def test_reward_model_gold_scores_a_brme_by_its_head_mean_and_a_plain_rm_by_its_logit(tmp_path, smol_tokenizer):
    brme_dir = train_great_brme(tmp_path / "brme", smol_tokenizer)
    smol_tokenizer.save_pretrained(brme_dir)
    gold = load_gold_scorer(str(brme_dir))
    assert isinstance(gold, RewardModelGold)
    prompts, answers = ["Review:", "Review:"], [" great great great", " awful awful awful"]
    scores = gold(prompts, answers)
    model = BRMERewardModel.from_pretrained(brme_dir).eval()
    for prompt, answer, score in zip(prompts, answers, scores, strict=True):
        ids = torch.tensor([tokenize_for_reward(smol_tokenizer, answer, prompt)])
        assert score == pytest.approx(model(input_ids=ids).means.mean().item(), abs=1e-5)
    assert scores[0] > scores[1]

    from transformers import LlamaForSequenceClassification

    plain_dir = tmp_path / "plain"
    torch.manual_seed(0)
    config = tiny_llama_config(smol_tokenizer)
    config.num_labels = 1
    plain = LlamaForSequenceClassification(config).eval()
    plain.save_pretrained(plain_dir)
    smol_tokenizer.save_pretrained(plain_dir)
    (score,) = load_gold_scorer(str(plain_dir))(["Review:"], [" great"])
    ids = torch.tensor([tokenize_for_reward(smol_tokenizer, " great", "Review:")])
    assert score == pytest.approx(plain(input_ids=ids).logits[0, 0].item(), abs=1e-5)


def test_python_function_gold_by_dotted_name(tmp_path, monkeypatch):
    (tmp_path / "my_gold.py").write_text(
        "def length(prompts, completions):\n    return [float(len(c)) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_gold_scorer("my_gold:length")(["p"], ["abc"]) == [3.0]
    with pytest.raises(ValueError, match="cannot import 'nope'"):
        load_gold_scorer("my_gold:nope")
    with pytest.raises(ValueError, match="Unknown gold scorer 'gpt5'"):
        load_gold_scorer("gpt5")


# ---------------------------------------------------------------------------------------------------------------------
# The harness end to end, tiny
# ---------------------------------------------------------------------------------------------------------------------


def tiny_harness_config(tmp_path, policy_dir, **fields) -> OverOptimizationConfig:
    """The harness on the tiny policy (also the proxy's backbone): 2 RL updates of 4 episodes, measured after each."""
    base = dict(
        output_dir=str(tmp_path / "out"),
        policy_model=str(policy_dir),
        proxy_backbone=str(policy_dir),
        seeds=[0],
        max_prompt_length=24,
        response_length=4,
        num_eval_prompts=4,
        rl_steps=2,
        eval_every=1,
        rl_batch_size=4,
        num_generations=2,
        rl_learning_rate=1e-3,
    )
    return OverOptimizationConfig(**(base | fields))


def test_smoke_run_writes_curves_summary_and_plot(tmp_path, smol_tokenizer, one_thread, monkeypatch):
    policy_dir = save_policy(tmp_path / "policy", smol_tokenizer)
    fitted, real_reference = {}, oo.monitor_reference

    def every_sample_out(reference, tokenizer, prompts, proxy, config):
        # the real reference (checked below), then one no sample can be inside: the monitor must see every batch
        fitted["epistemic"], fitted["gap"] = real_reference(reference, tokenizer, prompts, proxy, config)
        return torch.full((4,), -1.0), torch.full((4,), -1e9)

    monkeypatch.setattr(oo, "monitor_reference", every_sample_out)
    config = tiny_harness_config(
        tmp_path,
        policy_dir,
        methods=["ppo", "grpo", "bon"],
        settings=["nominal", "robust:0.4"],
        num_proxy_pairs=16,
        num_proxy_eval_pairs=8,
        label_noise=0.25,
        proxy_num_heads=3,
        proxy_epochs=1,
        proxy_batch_size=8,
        num_ppo_epochs=1,
        bon_pool_size=4,
        monitor_window=4,
    )
    result = run_overoptimization(config, gold=vowel_share)
    # the reference: the proxy's uncertainty on one answer of the initial policy per training prompt
    assert fitted["epistemic"].shape == fitted["gap"].shape and fitted["epistemic"].numel() > 1
    assert (fitted["epistemic"] >= 0).all() and (fitted["gap"] >= 0).all()
    out = tmp_path / "out"
    with (out / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    # Best-of-n: n in {1, 2, 4}; RL: the start and after each of 2 updates; for each of 2 settings.
    counts = {m: sum(r["method"] == m for r in rows) for m in ("bon", "ppo", "grpo")}
    assert counts == {"bon": 6, "ppo": 6, "grpo": 6}
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in ("kl", "sqrt_kl", "gold", "proxy", "proxy_std"))
    ppo_kl = [float(r["kl"]) for r in rows if r["method"] == "ppo" and r["setting"] == "nominal"]
    assert ppo_kl[0] == pytest.approx(0.0, abs=1e-5)  # the untrained policy is the reference
    assert max(abs(k) for k in ppo_kl[1:]) > 0  # and training moved it
    assert len(result["summary"]) == 6
    assert (out / "summary.md").read_text().count("\n") == 2 + 6
    # The monitor watched every RL run: all its samples out of the reference, a full window (4 episodes) after
    # update 1, so with patience 2 the alarm comes at update 2; best-of-n rows have no monitor.
    for r in rows:
        if r["method"] == "bon":
            assert r["monitor_frac_out"] == r["monitor_first_alarm"] == ""
        else:
            assert float(r["monitor_frac_out"]) == (0.0 if r["step"] == "0" else 1.0)
            # the repetition reference is the first full window (after update 1): then the ratio is 1 by definition
            assert math.isnan(float(r["monitor_distinct_ratio"])) if r["step"] == "0" else r["monitor_distinct_ratio"]
            if r["step"] == "1":
                assert float(r["monitor_distinct_ratio"]) == 1.0
    assert {r["method"]: r["first_alarm"] for r in csv.DictReader((out / "runs.csv").open())} == {
        "ppo": "2.0",
        "grpo": "2.0",
    }
    # runs.md: the table, then one sentence per run measured against the evaluation noise (5 judge draws)
    assert result["evaluation_noise"]["gold"] >= 0 and set(result["evaluation_noise"]) == {"gold", "proxy"}
    runs_md = (out / "runs.md").read_text().splitlines()
    assert len(runs_md) == 2 + 4 + 1 + 4 and sum(line.startswith("- GRPO nominal (seed 0)") for line in runs_md) == 1
    assert (out / "gold_by_update.png").stat().st_size > 10_000
    assert (out / "gold_vs_sqrt_kl.png").stat().st_size > 10_000
    assert (out / "proxy" / "model.safetensors").exists()
    samples = [json.loads(line) for line in (out / "samples" / "ppo-robust0.4-seed0.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0] * 4 + [1] * 4 + [2] * 4  # 4 evaluation prompts, 3 measurements
    assert sum(s["gold"] for s in samples if s["step"] == 2) / 4 == pytest.approx(
        next(
            float(r["gold"]) for r in rows if r["method"] == "ppo" and r["setting"] == "robust:0.4" and r["step"] == "2"
        )
    )
    # logs/: the trainer's per-update log, the monitor's metrics in it, one entry per update (plus the closing one)
    for run in ("ppo-robust0.4-seed0", "grpo-nominal-seed0"):
        log = [json.loads(line) for line in (out / "logs" / f"{run}.jsonl").read_text().splitlines()]
        per_update = [entry for entry in log if "monitor/frac_out" in entry]
        assert [entry["step"] for entry in per_update] == [1, 2], run
    assert result["pairs"]["train_pairs"] == 16 and result["pairs"]["eval_pairs"] == 8
    # The CSV round-trips: a report re-made from it (as for several sweeps read together) is the same.
    again = read_curves(out / "curves.csv")
    assert len(again) == len(rows) and summarize(again) == result["summary"]  # floats are written exactly
    summary, _, _ = write_report(again, tmp_path / "again", "again")
    assert summary == result["summary"] and (tmp_path / "again" / "gold_vs_sqrt_kl.png").exists()


@pytest.mark.slow
def test_hacking_demo_recipe_runs_in_short_mode(tmp_path, one_thread, capsys):
    """The hacking demo (recipes/quickstart/overoptimization_hacking_demo.yaml) through the real entry point, on its
    real models (SmolLM2-135M-Instruct, a MiniLM proxy, VADER), cut to a few pairs, prompts and updates."""
    from pathlib import Path

    from trl_robust.scripts import overoptimization as script

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "overoptimization_hacking_demo.yaml"
    out = tmp_path / "demo"
    short = ["--num_proxy_pairs", "16", "--num_proxy_eval_pairs", "8", "--proxy_epochs", "1", "--num_eval_prompts",
             "4", "--rl_steps", "2", "--eval_every", "1", "--monitor_window", "8"]  # fmt: skip
    result = script.main(["--config", str(recipe), "--output_dir", str(out), *short])
    # the recipe's own choices stand: GRPO, nominal against robust, one seed, its learning rate and answer length
    config = result["config"]
    assert (config["methods"], config["settings"], config["seeds"]) == (["grpo"], ["nominal", "robust:0.4"], [2])
    assert (config["rl_learning_rate"], config["response_length"], config["rl_steps"]) == (1e-4, 16, 2)
    assert set(result["evaluation_noise"]) == {"gold", "proxy"}
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert [(r["setting"], r["seed"]) for r in runs] == [("nominal", "2"), ("robust:0.4", "2")]
    assert (out / "gold_by_update.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "- GRPO nominal (seed 2): gold went from" in printed and "- GRPO robust:0.4 (seed 2): gold" in printed
    assert f"Gold by update, with the monitor's alarms: {out / 'gold_by_update.png'}" in printed


def test_ppo_group_mode_reseeded_each_update_is_grpo(tmp_path, smol_tokenizer, one_thread):
    """The harness's PPO, the critic-free group mode with GRPO's advantages (`ppo_group_std` of
    benchmarks/ppo_vs_grpo.py), is GRPO's algorithm: given the same prompts and, through `ReseedEachUpdate`, the same
    random state at every update, the two loops measure the same curve. Without the prompt-std scaling (another
    advantage) the curve is another one."""
    from trl_robust.ppo_utils import prompt_order
    from trl_robust.scoring import BRMEScorer

    policy_dir = save_policy(tmp_path / "policy", smol_tokenizer)
    proxy_dir = tmp_path / "proxy"
    torch.manual_seed(0)
    BRMERewardModel.from_backbone(str(policy_dir), num_heads=2).save_pretrained(proxy_dir)
    smol_tokenizer.save_pretrained(proxy_dir)
    config = tiny_harness_config(tmp_path, policy_dir, settings=["mean"])
    train_prompts, eval_prompts, _ = oo.load_prompts(smol_tokenizer, config.max_prompt_length)
    reference = LlamaForCausalLM.from_pretrained(policy_dir).eval()
    proxy = BRMEScorer(BRMERewardModel.from_pretrained(proxy_dir), smol_tokenizer, batch_size=8)
    judge = oo.PolicyJudge(reference, smol_tokenizer, eval_prompts[:4], vowel_share, proxy, config)
    first = oo.rl_prompts(train_prompts, config)
    ppo_order = [first[i] for i in prompt_order(len(first), 0, 0)]  # the order RobustPPOTrainer reads them in

    def run(method, prompts, overrides):
        args = ("mean", 0, config, str(policy_dir), proxy_dir, prompts, judge, tmp_path / method)
        rows = oo.run_rl(method, *args, config_overrides=overrides, callbacks=[oo.ReseedEachUpdate(0)])
        return np.array([[row[key] for key in ("kl", "gold", "proxy")] for row in rows])

    assert config.num_generations == 2
    grpo = run("grpo", ppo_order, {"shuffle_dataset": False})
    ppo_group_std = run("ppo", train_prompts, {})  # the harness's own PPO settings
    ppo_group = run("ppo", train_prompts, {"scale_by_prompt_std": False})
    assert grpo.shape == (3, 3) and grpo[1:, 0].min() > 1e-4  # measured at updates 0, 1, 2; the policy moved
    np.testing.assert_allclose(ppo_group_std, grpo, rtol=1e-3, atol=1e-5)
    assert np.abs(ppo_group[1:] - grpo[1:]).max() > 1e-3
