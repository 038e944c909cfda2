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
import math
from pathlib import Path

from trl_robust.offline_models import cache_dir
from trl_robust.recipe_checks import RecipeError
from trl_robust.script_args import check_model_path, resolve_model

# torch, transformers and the trainers are imported inside the functions that use them, after the options are checked,
# so that a bad option is reported at once.

# Short names of the offline models; their full names (as in the recipes) work too.
SHORT_NAMES = {"minilm": "all-minilm-l6-v2", "smollm2": "smollm2-135m-instruct"}
# How the plots and the summary name them (their folders are called e.g. "model").
DISPLAY_NAMES = {"all-minilm-l6-v2": "all-MiniLM-L6-v2", "smollm2-135m-instruct": "SmolLM2-135M-Instruct"}


def display_name(name: str) -> str:
    """A model's name for titles: the offline models' real names, else the last part of the path or hub id."""
    full = SHORT_NAMES.get(name, name)
    return DISPLAY_NAMES.get(full, Path(str(full)).name)


def trend_sentence(label: str, values: list[float]) -> str:
    """One sentence on whether a logged quantity moved beyond its update-to-update noise (`change_beyond_noise`)."""
    from trl_robust.metrics import change_beyond_noise

    if len(values) < 4:
        return f"{label}: {len(values)} updates are too few to tell a trend from noise."
    t = change_beyond_noise(values)
    verdict = "beyond" if t["beyond_noise"] else "within"
    direction = "rose" if t["change"] > 0 else "fell"
    return (
        f"{label} {direction} from {t['first']:.3f} (mean of the first {t['window']} updates) to {t['last']:.3f} (last "
        f"{t['window']}), a change of {t['change']:+.3f}: {verdict} its update-to-update noise (2 x se = "
        f"{2 * t['se']:.3f})."
    )


HELD_OUT_PROMPTS = 32  # test prompts (never trained on) whose fresh answers measure the PPO policy


def held_out_sentence(curve: list[tuple[int, float]], noise_std: float, draws: int) -> str:
    """One sentence on whether the held-out reward moved beyond its evaluation noise: the change from the first to
    the last measurement against the spread of the initial policy measured `draws` times (the difference of two
    measurements has std sqrt(2) x that spread; beyond is more than twice that)."""
    (first_step, first), (last_step, last) = curve[0], curve[-1]
    change, bound = last - first, 2 * math.sqrt(2) * noise_std
    verdict = "beyond" if abs(change) > bound else "within"
    direction = "rose" if change > 0 else "fell"
    return (
        f"The held-out robust reward ({HELD_OUT_PROMPTS} test prompts) {direction} from {first:.3f} (update "
        f"{first_step}) to {last:.3f} (update {last_step}), a change of {change:+.3f}: {verdict} its evaluation noise "
        f"(the initial policy measured {draws} times: std {noise_std:.3f}; 2 x sqrt(2) x std = {bound:.3f})."
    )


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


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


_unit_interval.__name__ = "float"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


_positive_float.__name__ = "float"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="trl-robust quickstart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone",
        default="minilm",
        help="BRME backbone: 'minilm' (or 'all-minilm-l6-v2'), 'smollm2' (or 'smollm2-135m-instruct'), path, hub id",
    )
    parser.add_argument(
        "--policy", default="smollm2", help="PPO policy: 'smollm2' (or 'smollm2-135m-instruct'), a path, a hub id"
    )
    parser.add_argument("--output-dir", default="outputs/quickstart", help="where models, metrics and plots go")
    parser.add_argument("--num-heads", type=_at_least(1), default=5, help="Gaussian heads K")
    parser.add_argument("--robust-lambda", type=_unit_interval, default=0.4, help="weight of the nominal reward")
    parser.add_argument("--epochs", type=_positive_float, default=1.0, help="reward model: passes over the pairs")
    parser.add_argument("--max-train-pairs", type=_at_least(1), default=None, help="reward model: only this many pairs")
    parser.add_argument("--max-length", type=_at_least(8), default=128, help="reward model: longer pairs are dropped")
    parser.add_argument("--batch-size", type=_at_least(1), default=16, help="reward model: pairs per step")
    parser.add_argument("--learning-rate", type=_positive_float, default=1e-4, help="reward model learning rate")
    parser.add_argument("--ppo-updates", type=_at_least(0), default=16, help="PPO updates (0: reward model only)")
    parser.add_argument("--ppo-batch-size", type=_at_least(1), default=8, help="answers per PPO update (episodes)")
    parser.add_argument(
        "--ppo-samples-per-prompt",
        type=_at_least(1),
        default=4,
        help="PPO: answers per prompt; above 1, the prompt's mean and std normalise the scores (GRPO's advantages) "
        "and no critic is trained",
    )
    parser.add_argument("--response-length", type=_at_least(1), default=24, help="PPO: new tokens per response")
    parser.add_argument("--ppo-learning-rate", type=_positive_float, default=3e-5, help="PPO learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:  # a typo'd folder or model name, before anything is imported or loaded
        check_model_path(args.backbone, "--backbone", known=SHORT_NAMES)
        check_model_path(args.policy, "--policy", known=SHORT_NAMES)
    except RecipeError as error:
        parser.error(str(error))
    if args.ppo_batch_size % args.ppo_samples_per_prompt:
        parser.error(
            f"--ppo-batch-size ({args.ppo_batch_size}) must be a multiple of --ppo-samples-per-prompt "
            f"({args.ppo_samples_per_prompt}): an update answers each of its prompts that many times."
        )
    if Path(args.output_dir).is_file():
        parser.error(f"--output-dir: {args.output_dir!r} is a file; give a folder.")
    return args


def model_path(name: str) -> str:
    """An offline model's folder for its short or full name; anything else is returned as given."""
    return resolve_model(SHORT_NAMES.get(name, name))


def folder_size(path: Path) -> str:
    """Disk use of a file or folder, as '87 MB'."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return f"{sum(p.stat().st_size for p in files) / 1e6:,.0f} MB"


def remove_if_empty(path: Path) -> None:
    """A trainer's output_dir that got nothing (save_strategy "no"): leave no empty folder behind."""
    try:
        path.rmdir()
    except OSError:  # missing, or not empty: keep whatever is in it
        pass


def print_table(title: str, rows: list[tuple[str, float, float]]) -> None:
    print(f"\n{title}\n| {'metric':<26} | {'start':>9} | {'end':>9} |\n|{'-' * 28}|{'-' * 11}|{'-' * 11}|")
    for name, start, end in rows:
        print(f"| {name:<26} | {start:>9.4f} | {end:>9.4f} |")


def train_reward_model(args: argparse.Namespace, out: Path) -> tuple[str, dict]:
    import torch
    from transformers import AutoTokenizer, set_seed

    from trl_robust import BRMERewardConfig, BRMERewardModel, BRMERewardTrainer, load_hh_rlhf_harmless
    from trl_robust.plotting import plot_log_history

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
    remove_if_empty(out / "brme_checkpoints")

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
        f"BRME (K={args.num_heads}) on HH-RLHF harmless, backbone {display_name(args.backbone)}",
    )
    return str(brme_dir), {"start": before, "end": after}


def run_robust_ppo(args: argparse.Namespace, out: Path, brme_dir: str) -> dict:
    from transformers import AutoTokenizer

    from trl_robust import HackingMonitor, RobustPPOConfig, RobustPPOTrainer, load_hh_rlhf_harmless
    from trl_robust.aggregation import Aggregation
    from trl_robust.overoptimization import HeldOutReward
    from trl_robust.plotting import plot_log_history
    from trl_robust.robust_ppo_config import GROUP_MODE
    from trl_robust.robust_ppo_trainer import load_ppo_models
    from trl_robust.scoring import BRMEScorer

    policy_path = model_path(args.policy)
    print(f"\n[trl-robust] 2/2 robust PPO of {policy_path} on the BRME (lambda={args.robust_lambda})")
    data = load_hh_rlhf_harmless(explicit_prompt=True, last_turn_only=True)
    prompts = data["train"].select_columns(["prompt"]).select(range(args.ppo_updates * args.ppo_batch_size))
    k = args.ppo_samples_per_prompt
    models = load_ppo_models(policy_path, brme_dir, use_critic=k == 1)  # no critic in the group mode
    # k answers per prompt: GRPO's advantages inside PPO (the prompt's mean as baseline, its std as scale), no critic
    # (docs/benchmarks.md: at this scale it learned as GRPO did, and reseeded each update it is GRPO's curve).
    group = GROUP_MODE | {"num_ppo_epochs": 1}
    config = RobustPPOConfig(
        output_dir=str(out / "ppo"),
        reward_aggregation="robust",
        robust_lambda=args.robust_lambda,
        per_device_train_batch_size=args.ppo_batch_size,
        local_rollout_forward_batch_size=args.ppo_batch_size,
        total_episodes=args.ppo_updates * args.ppo_batch_size,
        num_samples_per_prompt=k,
        # A value model started from the policy (the BRME reads another tokenizer) has a random head, whose noise made
        # val/explained_variance -40 to -5.7 at this scale; a zero head starts GAE from the returns (EV ~0, see
        # docs/benchmarks.md, "PPO against GRPO on a learned reward"). One from the reward model keeps its head.
        **(
            group
            if k > 1
            else dict(num_ppo_epochs=2, value_head_init="keep" if models["reward_processing_class"] is None else "zero")
        ),
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
    # The hacking monitor's reference: the BRME's uncertainty on its own held-out answers (warns, never stops here).
    monitor = HackingMonitor.from_reward_model(
        models["reward_model"],
        AutoTokenizer.from_pretrained(brme_dir),
        data["test"],
        window=4 * args.ppo_batch_size,
        action="warn",
    )
    trainer = RobustPPOTrainer(args=config, train_dataset=prompts, callbacks=[monitor], **models)
    held_out = HeldOutReward(
        lambda: trainer.accelerator.unwrap_model(trainer.model).policy,
        trainer.processing_class,
        list(data["test"]["prompt"][:HELD_OUT_PROMPTS]),
        BRMEScorer(
            models["reward_model"],
            AutoTokenizer.from_pretrained(brme_dir),
            aggregation=Aggregation("robust", robust_lambda=args.robust_lambda),
        ),
        args.response_length,
        config.temperature,
        every=max(1, args.ppo_updates // 4),
    )
    trainer.add_callback(held_out)
    trainer.train()
    trainer.save_model(str(out / "ppo_policy"))
    trainer.processing_class.save_pretrained(str(out / "ppo_policy"))
    remove_if_empty(out / "ppo")
    logs = [entry for entry in trainer.state.log_history if "robust/robust" in entry]
    print_table(
        f"Robust PPO over {len(logs)} updates ({config.total_episodes} episodes)",
        [(name, logs[0][name], logs[-1][name]) for name in PPO_REPORTED],
    )
    # A one-sample KL estimate swings (and with k1 dips below 0); its running mean over 3 updates shows the drift.
    kls = [entry["objective/kl"] for entry in logs]
    for i, entry in enumerate(logs):
        window = kls[max(0, i - 2) : i + 1]
        entry["objective/kl (running mean of 3)"] = sum(window) / len(window)
    plot_log_history(
        logs,
        {
            "reward terms": ["robust/robust", "robust/nominal", "robust/worst", "robust/mean"],
            "held-out reward (fixed test prompts)": ["held-out robust reward"],
            "KL to the reference": ["objective/kl", "objective/kl (running mean of 3)"],
            "uncertainty": ["robust/mean_std", "robust/head_disagreement"],
            "hacking monitor": ["monitor/epistemic_ratio", "monitor/frac_out"],
        },
        out / "robust_ppo.png",
        f"Robust PPO (lambda={args.robust_lambda}) of {display_name(args.policy)} on a BRME of "
        f"{display_name(args.backbone)}",
    )
    held_out_by_step = dict(held_out.curve)
    for entry in logs:  # the held-out measurements beside the logged ones, for the plot
        if entry["step"] in held_out_by_step:
            entry["held-out robust reward"] = held_out_by_step[entry["step"]]
    sentence = trend_sentence("The robust reward of the rollouts", [entry["robust/robust"] for entry in logs])
    held_out_verdict = held_out_sentence(held_out.curve, held_out.noise_std, len(held_out.start_draws))
    alarm = (
        f"The hacking monitor alarmed at update {monitor.first_alarm_step}."
        if monitor.first_alarm_step is not None
        else "The hacking monitor did not alarm: the policy's answers stayed as certain for the BRME as its own data."
    )
    print(f"\n{held_out_verdict}\n{sentence}\n{alarm}")
    return {
        "start": logs[0],
        "end": logs[-1],
        "held_out": {
            "curve": held_out.curve,
            "initial_draws": held_out.start_draws,
            "noise_std": held_out.noise_std,
            "verdict": held_out_verdict,
        },
        "trend": sentence,
        "monitor_first_alarm": monitor.first_alarm_step,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    models = [args.backbone] + ([args.policy] if args.ppo_updates > 0 else [])
    uses_smollm2 = "smollm2-135m-instruct" in [SHORT_NAMES.get(name, name) for name in models]
    smollm2_cache = cache_dir() / "smollm2-135m-instruct"
    policy = "ppo_policy/ (the PPO policy in fp32: about 0.54 GB for SmolLM2-135M), " if args.ppo_updates else ""
    print(f"[trl-robust] writes {out}/: brme/ (the reward model), {policy}summary.json and plots.")
    if uses_smollm2 and not smollm2_cache.exists():
        print(
            f"[trl-robust] first run: converts SmolLM2-135M-Instruct once to {smollm2_cache} (about 0.54 GB, reused "
            "by later runs; set TRL_ROBUST_CACHE to put it elsewhere)."
        )
    brme_dir, reward_summary = train_reward_model(args, out)
    summary = {"reward_model": reward_summary, "model_dir": brme_dir, "plots": [str(out / "brme_training.png")]}
    if args.ppo_updates > 0:
        summary["robust_ppo"] = run_robust_ppo(args, out, brme_dir)
        summary["plots"].append(str(out / "robust_ppo.png"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"\nWrote {out}/ ({folder_size(out)}):\n  {brme_dir}  {folder_size(Path(brme_dir))}  the BRME reward model")
    if args.ppo_updates > 0:
        print(f"  {out / 'ppo_policy'}  {folder_size(out / 'ppo_policy')}  the PPO policy (fp32)")
    print(f"  {out / 'summary.json'}, {', '.join(summary['plots'])}")
    if uses_smollm2 and smollm2_cache.exists():
        print(f"Cache: {smollm2_cache}  {folder_size(smollm2_cache)}  SmolLM2-135M-Instruct, converted once, reused")
    flag = "" if Path(brme_dir) == Path("outputs/quickstart/brme") else f" --reward_model_path {brme_dir}"
    print(
        f"Next, on this BRME: trl-robust ppo --config recipes/quickstart/ppo.yaml{flag} (or grpo.yaml, rloo.yaml); "
        f"trl-robust evaluate --model_name_or_path {brme_dir}"
    )
    return summary


if __name__ == "__main__":
    main()
