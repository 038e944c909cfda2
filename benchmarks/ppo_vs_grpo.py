"""PPO against GRPO on a learned reward, at the over-optimisation harness's scale (issue 14's learning target).

Both optimise the same proxy BRME (MiniLM, trained on VADER-labelled pairs of SmolLM2-135M-Instruct answers, as
`trl_robust.overoptimization` trains it) from the same policy, on the same prompts, with the same number of episodes
per update and updates; the harness's judge measures the held-out proxy reward (and gold, VADER) of fresh answers to
fixed evaluation prompts before the first update and every `--eval-every` updates. A run's gain is its last
measurement minus its first. Each PPO arm is a set of `RobustPPOConfig` fields on top of the harness's PPO settings.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/ppo_vs_grpo.py --seeds 0 1 2 --updates 8 \
        --arms grpo ppo ppo_group --out outputs/ppo_vs_grpo

Writes `curves.csv` (every measurement), `gains.json` and prints a table of gains per arm and seed, their means and
each PPO arm's mean gain over GRPO's. `--proxy-model DIR` reuses a proxy BRME folder (an earlier run's OUT/proxy).

`--reseed-each-update` seeds every random generator at the start of each update from the run's seed and the update
(`overoptimization.ReseedEachUpdate`), so that two arms that draw the same prompts (`grpo_ppo_order` and a PPO arm
with 4 answers per prompt) also sample from the same random state at every update, whatever each drew in between
(PPO's minibatch order, the set-up): if the two loops are one algorithm, their curves are then the same up to float
rounding.
"""

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from trl_robust import overoptimization as oo
from trl_robust.gold_scorers import load_gold_scorer
from trl_robust.modeling_brme import BRMERewardModel
from trl_robust.overoptimization_config import OverOptimizationConfig
from trl_robust.ppo_utils import prompt_order
from trl_robust.scoring import BRMEScorer
from trl_robust.script_args import resolve_model

# RobustPPOConfig fields of each PPO arm, on top of the harness's PPO block in `overoptimization.run_rl` (its group
# mode: num_generations answers per prompt, GRPO's advantages, no critic, the harness's num_ppo_epochs; kl_coef,
# response_length, the learning rate). The arms with a critic undo the group mode first.
GRPO_ARMS = ["grpo", "grpo_ppo_order"]  # GRPO as TRL runs it (its sampler shuffles), and fed PPO's prompt order

ONE_ANSWER_WITH_CRITIC = {
    "use_critic": True,
    "num_samples_per_prompt": 1,
    "advantage_baseline": "none",
    "scale_by_prompt_std": False,
}
PPO_ARMS: dict[str, dict] = {
    # the trainer's defaults (TRL 1.12's): a critic from the policy with a random head, one answer per prompt, and the
    # harness's earlier 2 epochs
    "ppo": {**ONE_ANSWER_WITH_CRITIC, "value_head_init": "keep", "num_ppo_epochs": 2},
    "ppo_zero_head": {**ONE_ANSWER_WITH_CRITIC, "value_head_init": "zero", "num_ppo_epochs": 1},
    "ppo_critic_free": {**ONE_ANSWER_WITH_CRITIC, "use_critic": False, "num_ppo_epochs": 1},
    # the zero-head critic with scores normalised on 4 batches of the initial policy's answers (Huang et al.'s detail)
    "ppo_zero_head_norm": {
        **ONE_ANSWER_WITH_CRITIC,
        "value_head_init": "zero",
        "num_ppo_epochs": 1,
        "reward_normalization_batches": 4,
    },
    # the zero-head critic with a learning rate of its own, 10x the policy's 3e-5
    "ppo_zero_head_vlr": {
        **ONE_ANSWER_WITH_CRITIC,
        "value_head_init": "zero",
        "num_ppo_epochs": 1,
        "value_learning_rate": 3e-4,
    },
    # the zero-head critic trained alone on the first 2 updates' rollouts before the policy moves (OpenRLHF's
    # freezing_actor_steps); the 2 updates count in the run's 16
    "ppo_zero_head_warmup": {
        **ONE_ANSWER_WITH_CRITIC,
        "value_head_init": "zero",
        "num_ppo_epochs": 1,
        "num_critic_warmup_updates": 2,
    },
    # GRPO's variance reduction inside PPO: 4 answers per prompt, the prompt's mean score as baseline, no critic
    "ppo_group": {"scale_by_prompt_std": False, "num_ppo_epochs": 1},
    # ... and each score also divided by its prompt's std, as GRPO's scale_rewards="group": GRPO's advantages in PPO,
    # the harness's PPO since the third session of issue 14
    "ppo_group_std": {"num_ppo_epochs": 1},
    "ppo_group_critic": {
        "use_critic": True,
        "value_head_init": "zero",
        "scale_by_prompt_std": False,
        "num_ppo_epochs": 1,
    },
}


def _run_grpo_in_ppo_order(
    setting, seed, config, policy_path, proxy_dir, train_prompts, judge, out, callbacks=None
) -> list[dict]:
    """GRPO reading its prompts in the order RobustPPOTrainer reads them (`ppo_utils.prompt_order`, unshuffled), so
    that it and a PPO arm with 4 answers per prompt see the same prompts at every update; in its own folder."""
    first = oo.rl_prompts(train_prompts, config)  # run_rl's dataset of the run
    ordered = [first[i] for i in prompt_order(len(first), seed, 0)]
    args = (setting, seed, config, policy_path, proxy_dir, ordered, judge, out / "grpo_ppo_order")
    rows = oo.run_rl("grpo", *args, config_overrides={"shuffle_dataset": False}, callbacks=callbacks)
    return [{**row, "method": "grpo_ppo_order"} for row in rows]


def _run_ppo_arm(arm: str, *run_rl_args, callbacks=None) -> list[dict]:
    """`overoptimization.run_rl("ppo", ...)` with the arm's `RobustPPOConfig` fields over the harness's; nothing
    else of the harness changes (its judge, prompts, proxy and other settings stay the ones GRPO gets)."""
    rows = oo.run_rl("ppo", *run_rl_args, config_overrides=PPO_ARMS[arm], callbacks=callbacks)
    return [{**row, "method": arm} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arms", nargs="+", default=["grpo", "ppo", "ppo_group"], help=f"{', '.join(GRPO_ARMS + list(PPO_ARMS))}"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--updates", type=int, default=8, help="optimiser updates per run")
    parser.add_argument("--batch-size", type=int, default=8, help="episodes (answers) per update, both methods")
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--num-eval-prompts", type=int, default=16)
    parser.add_argument("--num-proxy-pairs", type=int, default=128)
    parser.add_argument("--num-proxy-eval-pairs", type=int, default=32, help="held-out pairs for the proxy's agreement")
    parser.add_argument("--setting", default="nominal", help="aggregation both optimise: nominal, mean, robust:0.4...")
    parser.add_argument("--learning-rate", type=float, default=3e-5, help="policy learning rate, both methods")
    parser.add_argument("--response-length", type=int, default=16)
    parser.add_argument("--proxy-model", default=None, help="a proxy BRME folder to reuse (else trained here)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--reseed-each-update", action="store_true", help="seed every generator at each update (ReseedEachUpdate)"
    )
    parser.add_argument("--out", default="outputs/ppo_vs_grpo")
    cli = parser.parse_args()
    unknown = [arm for arm in cli.arms if arm not in GRPO_ARMS and arm not in PPO_ARMS]
    if unknown:
        parser.error(f"--arms: unknown {unknown}; choose from {', '.join(GRPO_ARMS + list(PPO_ARMS))}")
    torch.set_num_threads(cli.threads)

    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    config = OverOptimizationConfig(
        output_dir=str(out),
        policy_model="smollm2-135m-instruct",
        proxy_backbone="all-minilm-l6-v2",
        gold="vader",
        methods=["ppo", "grpo"],
        settings=[cli.setting],
        seeds=cli.seeds,
        num_proxy_pairs=cli.num_proxy_pairs,
        num_proxy_eval_pairs=cli.num_proxy_eval_pairs,
        response_length=cli.response_length,
        num_eval_prompts=cli.num_eval_prompts,
        rl_steps=cli.updates,
        eval_every=cli.eval_every,
        rl_batch_size=cli.batch_size,
        num_generations=4,
        rl_learning_rate=cli.learning_rate,
        proxy_model=cli.proxy_model,
    )
    started = time.perf_counter()
    gold = load_gold_scorer(config.gold)
    policy_path = resolve_model(config.policy_model)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_prompts, eval_prompts, _ = oo.load_prompts(tokenizer, config.max_prompt_length)
    eval_prompts = eval_prompts[: config.num_eval_prompts]
    reference = AutoModelForCausalLM.from_pretrained(policy_path).eval()
    if cli.proxy_model is None:
        set_seed(config.proxy_seed)
        train_rows, eval_rows, _ = oo.gold_labelled_pairs(reference, tokenizer, train_prompts, gold, config)
        print("proxy agreement with gold:", oo.train_proxy(train_rows, eval_rows, config, out), flush=True)
        proxy_dir = out / "proxy"
    else:
        proxy_dir = Path(cli.proxy_model)
    proxy = BRMEScorer(
        BRMERewardModel.from_pretrained(proxy_dir), AutoTokenizer.from_pretrained(proxy_dir), batch_size=32
    )
    judge = oo.PolicyJudge(reference, tokenizer, eval_prompts, gold, proxy, config)
    proxy_s = time.perf_counter() - started

    rows, timings = [], {}
    for seed in cli.seeds:  # seeds outside: a stopped run still has every arm on its first seeds
        for arm in cli.arms:
            run_started = time.perf_counter()
            args = (cli.setting, seed, config, policy_path, proxy_dir, train_prompts, judge, out)
            callbacks = [oo.ReseedEachUpdate(seed)] if cli.reseed_each_update else None
            if arm == "grpo":
                rows += oo.run_rl("grpo", *args, callbacks=callbacks)
            elif arm == "grpo_ppo_order":
                rows += _run_grpo_in_ppo_order(*args, callbacks=callbacks)
            else:
                rows += _run_ppo_arm(arm, *args, callbacks=callbacks)
            timings[f"{arm}-seed{seed}"] = round(time.perf_counter() - run_started, 1)
            with (out / "curves.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            print(f"[ppo_vs_grpo] {arm} seed {seed}: {timings[f'{arm}-seed{seed}']} s", flush=True)
            report(rows, cli, out, timings, proxy_s)


def report(rows: list[dict], cli: argparse.Namespace, out: Path, timings: dict, proxy_s: float) -> None:
    """Gain of the held-out proxy (and gold) from the first to the last measurement, per arm and seed."""
    gains: dict[str, dict[int, dict[str, float]]] = {}
    for arm in dict.fromkeys(row["method"] for row in rows):
        for seed in dict.fromkeys(row["seed"] for row in rows if row["method"] == arm):
            run = sorted((r for r in rows if r["method"] == arm and r["seed"] == seed), key=lambda r: r["step"])
            gains.setdefault(arm, {})[seed] = {
                key: run[-1][key] - run[0][key] for key in ("proxy", "gold", "kl") if key in run[0]
            } | {"proxy_curve": [round(r["proxy"], 4) for r in run]}
    lines = [
        "| arm | seeds | proxy gain per seed | mean proxy gain | mean gold gain | mean final KL |",
        "|---" * 6 + "|",
    ]
    means = {}
    for arm, per_seed in gains.items():
        proxy_gains = [g["proxy"] for g in per_seed.values()]
        means[arm] = sum(proxy_gains) / len(proxy_gains)
        gold_gain = sum(g["gold"] for g in per_seed.values()) / len(per_seed)
        kl = sum(g["kl"] for g in per_seed.values()) / len(per_seed)
        per = ", ".join(f"{g:+.3f}" for g in proxy_gains)
        lines.append(f"| {arm} | {list(per_seed)} | {per} | {means[arm]:+.3f} | {gold_gain:+.3f} | {kl:.3f} |")
    if "grpo" in means and means["grpo"] > 0:
        lines.append("")
        lines += [
            f"{arm}: {m / means['grpo']:.2f}x GRPO's mean proxy gain" for arm, m in means.items() if arm != "grpo"
        ]
    table = "\n".join(lines)
    print(table, flush=True)
    info = {
        "gains": gains,
        "command_line": vars(cli),
        "timings_s": timings,
        "proxy_s": round(proxy_s, 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)",
    }
    (out / "gains.json").write_text(json.dumps(info, indent=2, default=str))
    (out / "gains.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
