"""
Quickstart on the embedded default, offline: train a Bayesian Reward Model Ensemble on the 1,800 human preference
pairs that ship with the package, then run robust PPO of a small real policy against it on prompts from the same
data, then print a summary table and write plots.

    python -m trl_robust.scripts.quickstart                            # MiniLM BRME, SmolLM2-135M-Instruct policy
    python -m trl_robust.scripts.quickstart --ppo-updates 0            # reward model only
    python -m trl_robust.scripts.quickstart --backbone smollm2 --policy path/or/hub-id --robust-lambda 0.6
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from trl_robust import (
    BRMERewardConfig,
    BRMERewardModel,
    BRMERewardTrainer,
    RobustPPOConfig,
    RobustPPOTrainer,
    load_hh_rlhf_harmless,
)
from trl_robust.plotting import plot_log_history
from trl_robust.robust_ppo_trainer import load_value_model
from trl_robust.script_args import resolve_model

# Short names of the offline models; their full names (as in the recipes) work too.
SHORT_NAMES = {"minilm": "all-minilm-l6-v2", "smollm2": "smollm2-135m-instruct"}
RM_REPORTED = [
    "accuracy",
    "accuracy_nominal",
    "accuracy_worst",
    "accuracy_mean",
    "ece",
    "mean_std",
    "head_disagreement",
]
PPO_REPORTED = [
    "robust/robust",
    "robust/nominal",
    "robust/worst",
    "robust/mean",
    "objective/kl",
    "objective/rlhf_reward",
    "robust/mean_std",
    "robust/head_disagreement",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backbone",
        default="minilm",
        help="BRME backbone: 'minilm' (or 'all-minilm-l6-v2'), 'smollm2' (or 'smollm2-135m-instruct'), path, hub id",
    )
    parser.add_argument(
        "--policy", default="smollm2", help="PPO policy: 'smollm2' (or 'smollm2-135m-instruct'), a path, a hub id"
    )
    parser.add_argument("--output-dir", default="outputs/quickstart", help="where models, metrics and plots go")
    parser.add_argument("--num-heads", type=int, default=5, help="Gaussian heads K")
    parser.add_argument("--robust-lambda", type=float, default=0.4, help="weight of the nominal reward")
    parser.add_argument("--epochs", type=float, default=1.0, help="reward model: passes over the training pairs")
    parser.add_argument("--max-train-pairs", type=int, default=None, help="reward model: use only this many pairs")
    parser.add_argument("--max-length", type=int, default=128, help="reward model: longer pairs (tokens) are dropped")
    parser.add_argument("--batch-size", type=int, default=16, help="reward model: pairs per step")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="reward model learning rate")
    parser.add_argument("--ppo-updates", type=int, default=8, help="PPO updates (0: reward model only)")
    parser.add_argument("--ppo-batch-size", type=int, default=8, help="prompts per PPO update")
    parser.add_argument("--response-length", type=int, default=24, help="PPO: new tokens per response")
    parser.add_argument("--ppo-learning-rate", type=float, default=3e-6)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def model_path(name: str) -> str:
    """An offline model's folder for its short or full name; anything else is returned as given."""
    return resolve_model(SHORT_NAMES.get(name, name))


def print_table(title: str, rows: list[tuple[str, float, float]]) -> None:
    print(f"\n{title}\n| {'metric':<26} | {'start':>9} | {'end':>9} |\n|{'-' * 28}|{'-' * 11}|{'-' * 11}|")
    for name, start, end in rows:
        print(f"| {name:<26} | {start:>9.4f} | {end:>9.4f} |")


def train_reward_model(args: argparse.Namespace, out: Path) -> tuple[str, dict]:
    path = model_path(args.backbone)
    print(f"[trl-robust] 1/2 BRME reward model on {path}")
    # Prompts cut to their last Human turn keep inputs short; the replies the humans compared stay whole.
    data = load_hh_rlhf_harmless(explicit_prompt=True, last_turn_only=True)
    train = data["train"]
    if args.max_train_pairs is not None:
        train = train.select(range(min(args.max_train_pairs, len(train))))
    config = BRMERewardConfig(
        output_dir=str(out / "brme_checkpoints"),
        num_heads=args.num_heads,
        robust_lambda=args.robust_lambda,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        gradient_checkpointing=False,
        eval_strategy="steps",
        eval_steps=0.5,  # mid-run and at the end: held-out passes are a large share of the time on a CPU
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    set_seed(args.seed)  # the heads' random init: the same seed gives the same run
    model = BRMERewardModel.from_backbone(path, num_heads=args.num_heads, robust_lambda=args.robust_lambda)
    tokenizer = AutoTokenizer.from_pretrained(path)
    trainer = BRMERewardTrainer(
        model=model, args=config, train_dataset=train, eval_dataset=data["test"], processing_class=tokenizer
    )
    before = trainer.evaluate()
    trainer.train()
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    # Reuse the evaluation of the last step when the schedule made one; else evaluate now.
    after = evals[-1] if evals and evals[-1]["step"] == trainer.state.global_step else trainer.evaluate()
    brme_dir = out / "brme"
    trainer.save_model(str(brme_dir))
    tokenizer.save_pretrained(str(brme_dir))

    rows = [(name, before[f"eval_{name}"], after[f"eval_{name}"]) for name in RM_REPORTED]
    rows += [
        (f"accuracy_head_{k}", before[f"eval_accuracy_head_{k}"], after[f"eval_accuracy_head_{k}"])
        for k in range(args.num_heads)
    ]
    print_table(
        f"BRME on {len(trainer.eval_dataset)} held-out human pairs ({len(trainer.train_dataset)} trained on)", rows
    )
    plot_log_history(
        [dict(before, step=0), *trainer.state.log_history],  # train() starts a new history: keep the start
        {
            "loss": ["loss", "eval_loss"],
            "held-out accuracy": [
                "eval_accuracy",
                "eval_accuracy_nominal",
                "eval_accuracy_worst",
                "eval_accuracy_mean",
            ],
            "uncertainty": ["mean_std", "head_disagreement", "eval_ece"],
        },
        out / "brme_training.png",
        f"BRME (K={args.num_heads}) on HH-RLHF harmless, backbone {Path(str(path)).name}",
    )
    return str(brme_dir), {"start": before, "end": after}


def run_robust_ppo(args: argparse.Namespace, out: Path, brme_dir: str) -> dict:
    policy_path = model_path(args.policy)
    print(f"\n[trl-robust] 2/2 robust PPO of {policy_path} on the BRME (lambda={args.robust_lambda})")
    data = load_hh_rlhf_harmless(explicit_prompt=True, last_turn_only=True)
    prompts = data["train"].select_columns(["prompt"]).select(range(args.ppo_updates * args.ppo_batch_size))
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    value_model, reward_processing_class = load_value_model(
        policy_path, brme_dir, tokenizer, AutoTokenizer.from_pretrained(brme_dir)
    )
    config = RobustPPOConfig(
        output_dir=str(out / "ppo"),
        reward_aggregation="robust",
        robust_lambda=args.robust_lambda,
        per_device_train_batch_size=args.ppo_batch_size,
        local_rollout_forward_batch_size=args.ppo_batch_size,
        total_episodes=args.ppo_updates * args.ppo_batch_size,
        num_ppo_epochs=2,
        # A value model started from the policy (the BRME reads another tokenizer) has a random head, whose noise made
        # val/explained_variance -40 to -5.7 at this scale; a zero head starts GAE from the returns (EV ~0, see
        # docs/benchmarks.md, "PPO against GRPO on a learned reward"). One from the reward model keeps its head.
        value_head_init="keep" if reward_processing_class is None else "zero",
        response_length=args.response_length,
        stop_token="eos",
        learning_rate=args.ppo_learning_rate,
        kl_coef=0.05,
        logging_steps=1,
        num_sample_generations=0,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
    )
    trainer = RobustPPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(policy_path),
        ref_model=AutoModelForCausalLM.from_pretrained(policy_path),
        reward_model=BRMERewardModel.from_pretrained(brme_dir),
        train_dataset=prompts,
        value_model=value_model,
        reward_processing_class=reward_processing_class,
    )
    trainer.train()
    trainer.save_model(str(out / "ppo_policy"))
    tokenizer.save_pretrained(str(out / "ppo_policy"))
    logs = [entry for entry in trainer.state.log_history if "robust/robust" in entry]
    print_table(
        f"Robust PPO over {len(logs)} updates ({config.total_episodes} episodes)",
        [(name, logs[0][name], logs[-1][name]) for name in PPO_REPORTED],
    )
    plot_log_history(
        logs,
        {
            "reward terms": ["robust/robust", "robust/nominal", "robust/worst", "robust/mean"],
            "KL to the reference": ["objective/kl"],
            "uncertainty": ["robust/mean_std", "robust/head_disagreement"],
        },
        out / "robust_ppo.png",
        f"Robust PPO (lambda={args.robust_lambda}) of {Path(str(policy_path)).name}",
    )
    return {"start": logs[0], "end": logs[-1]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    brme_dir, reward_summary = train_reward_model(args, out)
    summary = {"reward_model": reward_summary, "model_dir": brme_dir, "plots": [str(out / "brme_training.png")]}
    if args.ppo_updates > 0:
        summary["robust_ppo"] = run_robust_ppo(args, out, brme_dir)
        summary["plots"].append(str(out / "robust_ppo.png"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"\nReward model: {brme_dir}\nPlots: {', '.join(summary['plots'])}\nMetrics: {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
