"""BRME member types against TRL's single-head RewardTrainer, by k-fold cross-validation on the shipped HH-RLHF pairs.

Every arm trains on the same backbone, the same pairs, steps, learning rate and max_length; what differs is the arm:

- `trl`: TRL's own `RewardTrainer` on `AutoModelForSequenceClassification(num_labels=1)` (one linear head).
- a BRME arm, `BRMERewardTrainer` on a new BRME of `--num-heads` members: a name of `ARMS` (`linear`,
  `linear+prior`, `mlp`, `mlp+prior`, `lora`, `lora+prior`, `paper`, `bt`, `reparam`) or any `key=value[,key=value]`
  of `BRMERewardConfig` fields (`head_type=mlp,prior_scale=3,brme_loss=reparam`); the trainer builds the BRME.

Data: `load_hh_rlhf_harmless` train + test concatenated (1,800 pairs; explicit prompts, so exploits can be made from
the answers), pairs over `--max-length` tokens dropped up front (so every arm sees the same pairs), shuffled once with
`--seed`, optionally cut to `--pairs`, and dealt into `--folds` folds (pair i of the shuffled list goes to fold
i mod k). Per fold: the other folds train, less their last `--calibration-fraction`, which calibrates (the BRME
trainer's temperature fit; for `trl` the same `metrics.fit_temperature` at var = 0); the fold itself is the test set.
Tokenisation is `tokenization.tokenize_for_reward` for every arm (both trainers get the token ids), scoring and
metrics are `evaluation.evaluate_reward_model` (`scoring.reward_model_outputs`, `trl_robust.metrics`).

Reported per arm (mean +- std over folds): accuracy (mean of the heads, robust, nominal, worst), ECE before and after
calibration, AUROC for the model's own errors (epistemic, aleatoric, |margin| baseline), AUROC of epistemic for each
exploit kind (`trl_robust.exploits`), training time (`train()` alone) and peak memory, with their ratios to `trl`.
Each (arm, fold) runs in a fresh subprocess (so peak memory is its own: GPU max allocated, or CPU resident-set growth)
unless `--in-process`. A rerun into the same `--output-dir` keeps the (arm, fold) results already there (remove its
`work/` folder after changing any other setting).

    python benchmarks/brme_members.py --dry-run                                     # tiny model, seconds
    python benchmarks/brme_members.py --folds 2 --pairs 200 --max-length 128 --arms trl linear
    python benchmarks/brme_members.py --arms trl linear linear+prior mlp mlp+prior lora paper   # the full measurement
    python benchmarks/brme_members.py --backbone smollm2-135m-instruct --device cuda --bf16 --arms trl linear mlp
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness

ARMS: dict[str, dict] = {
    "trl": {},
    "linear": {"head_type": "linear"},
    "linear+prior": {"head_type": "linear", "prior_scale": 1.0},
    "mlp": {"head_type": "mlp"},
    "mlp+prior": {"head_type": "mlp", "prior_scale": 1.0},
    "lora": {"head_type": "lora"},
    "lora+prior": {"head_type": "lora", "prior_scale": 1.0},
    "paper": {"brme_loss": "bt_then_gaussian"},
    "bt": {"brme_loss": "bt"},
    "reparam": {"brme_loss": "reparam"},
}
MODEL_FIELDS = ("head_type", "head_hidden_size", "prior_scale", "member_layers", "member_lora_rank", "std_floor",
                "init_std", "robust_lambda")  # fmt: skip
SUMMARY_KEYS = [
    "accuracy_mean",
    "accuracy_robust",
    "accuracy_nominal",
    "accuracy_worst",
    "ece",
    "calibrated_ece",
    "calibration_temperature",
    "auroc_epistemic_flags_errors",
    "auroc_aleatoric_flags_errors",
    "auroc_margin_flags_errors",
    "train_s",
    "peak_mem_bytes",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="all-minilm-l6-v2", help="all-minilm-l6-v2, smollm2-135m-instruct or a path")
    p.add_argument("--arms", nargs="+", default=["trl", "linear"], help="arm names (ARMS) or key=value,... settings")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--pairs", type=int, default=None, help="use the first N shuffled pairs (default: all)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--last-turn-only", action="store_true", help="prompts cut to their last Human turn")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimiser step")
    p.add_argument("--num-heads", type=int, default=5)
    p.add_argument("--calibration-fraction", type=float, default=0.1)
    p.add_argument("--max-exploit-answers", type=int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--in-process", action="store_true", help="no subprocess per run (peak memory then unreliable)")
    p.add_argument("--output-dir", default="outputs/brme_members", help="results.json and results.md go here")
    p.add_argument("--dry-run", action="store_true", help="tiny random model, 2 folds, 40 pairs, in-process")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core on a CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-one", default=None, help=argparse.SUPPRESS)  # ARM_INDEX:FOLD, in a subprocess
    p.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dry_run:
        args.folds, args.pairs, args.max_length, args.last_turn_only = 2, 40, 96, True
        args.in_process, args.threads, args.max_exploit_answers = True, args.threads or 1, 8
    if args.folds < 2:
        p.error(f"--folds must be >= 2, got {args.folds}")
    if not 0.0 < args.calibration_fraction < 0.5:
        p.error(f"--calibration-fraction must be in (0, 0.5), got {args.calibration_fraction}")
    args.settings = [arm_settings(p, arm) for arm in args.arms]
    harness.resolve_device(args)
    if args.threads is None and args.device != "cuda":
        args.threads = os.cpu_count()
    return args


def arm_settings(p: argparse.ArgumentParser, arm: str) -> dict:
    """An arm's BRMERewardConfig settings: a name of ARMS, or key=value pairs joined by commas."""
    if arm in ARMS:
        return dict(ARMS[arm])
    if "=" not in arm:
        p.error(f"unknown arm {arm!r}: use one of {sorted(ARMS)} or key=value[,key=value] settings")
    from trl_robust import BRMERewardConfig

    known = set(BRMERewardConfig.__dataclass_fields__)  # member settings included: the trainer builds the BRME
    settings = {}
    for item in arm.split(","):
        key, _, raw = item.partition("=")
        if key not in known:
            p.error(f"arm {arm!r}: {key!r} is no BRMERewardConfig field")
        settings[key] = json.loads(raw) if raw[:1].isdigit() or raw in ("true", "false", "null") else raw
    return settings


def split_settings(settings: dict) -> tuple[dict, dict]:
    """(the settings that shape the BRME itself, the rest): all are BRMERewardConfig fields; the first part is what
    `check_supported` builds a tiny BRMEConfig with."""
    model = {k: v for k, v in settings.items() if k in MODEL_FIELDS}
    return model, {k: v for k, v in settings.items() if k not in MODEL_FIELDS}


def check_supported(arm: str, model_settings: dict) -> None:
    """Fail clearly when the installed BRMERewardModel ignores a member setting: a tiny BRME with the settings must
    differ (in parameters or buffers) from the plain linear one."""
    import torch
    from huggingface_hub.errors import StrictDataclassError
    from transformers import LlamaConfig

    from trl_robust import BRMEConfig, BRMERewardModel

    changed = {k: v for k, v in model_settings.items() if k in ("head_type", "prior_scale") and v not in ("linear", 0)}
    if not changed:
        return
    text = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, intermediate_size=64)  # fmt: skip

    def footprint(**settings) -> list[tuple[str, tuple]]:
        torch.manual_seed(0)
        model = BRMERewardModel(BRMEConfig(text_config=text, num_heads=2, **settings))
        return sorted((n, tuple(t.shape)) for n, t in [*model.named_parameters(), *model.named_buffers()])

    try:
        same = footprint(**model_settings) == footprint()
    except (TypeError, ValueError, StrictDataclassError) as err:  # the strict BRMEConfig refuses a bad value
        raise SystemExit(f"arm {arm!r}: the installed trl_robust cannot build {model_settings}: {err}") from err
    if same:
        raise SystemExit(
            f"arm {arm!r}: the installed trl_robust.modeling_brme ignores {changed} (the model is the plain linear "
            "BRME); it needs the member types of BRMEConfig.head_type / prior_scale."
        )


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def load_pairs(args, tokenizer):
    """Every shipped pair that fits `max_length`, shuffled with the seed and cut to `--pairs`, with its token ids."""
    import random

    from datasets import concatenate_datasets

    from trl_robust import load_hh_rlhf_harmless
    from trl_robust.tokenization import tokenize_for_reward

    data = load_hh_rlhf_harmless(explicit_prompt=True, last_turn_only=args.last_turn_only)
    pairs = concatenate_datasets([data["train"], data["test"]])
    ids = [
        (tokenize_for_reward(tokenizer, r["chosen"], r["prompt"]),
         tokenize_for_reward(tokenizer, r["rejected"], r["prompt"]))
        for r in pairs
    ]  # fmt: skip
    fits = [i for i, (c, r) in enumerate(ids) if max(len(c), len(r)) <= args.max_length]
    random.Random(args.seed).shuffle(fits)
    fits = fits[: args.pairs] if args.pairs else fits
    pairs = pairs.select(fits)
    pairs = pairs.add_column("chosen_ids", [ids[i][0] for i in fits])
    pairs = pairs.add_column("rejected_ids", [ids[i][1] for i in fits])
    return pairs, len(ids)


def fold_splits(n: int, folds: int, fold: int, calibration_fraction: float) -> tuple[list, list, list]:
    """Indices (train, calibration, test) of one fold: test = every `folds`-th pair from `fold`, calibration = the
    last `calibration_fraction` of the rest, train = what remains."""
    test = list(range(fold, n, folds))
    rest = [i for i in range(n) if i % folds != fold]
    cut = len(rest) - max(1, round(calibration_fraction * len(rest)))
    return rest[:cut], rest[cut:], test


# --------------------------------------------------------------------------------------------------------------------
# One (arm, fold)
# --------------------------------------------------------------------------------------------------------------------


def backbone_path(args, workdir: Path) -> str:
    """The backbone's folder: the offline model names resolved, or (dry run) a tiny random Llama saved once."""
    if not args.dry_run:
        from trl_robust.script_args import resolve_model

        return resolve_model(args.backbone)
    target = workdir / "tiny-llama"
    if not (target / "config.json").exists():
        import torch
        from transformers import AutoTokenizer, LlamaModel

        asset = next(a for a in harness.ASSET_CANDIDATES if (a / "tokenizer.json").exists())
        tokenizer = AutoTokenizer.from_pretrained(asset)
        torch.manual_seed(0)
        LlamaModel(harness.tiny_llama_config(tokenizer)).save_pretrained(target)
        tokenizer.save_pretrained(target)
    return str(target)


def run_one(args, arm_index: int, fold: int, workdir: Path) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from trl_robust import BRMERewardConfig, BRMERewardTrainer
    from trl_robust.evaluation import evaluate_reward_model
    from trl_robust.metrics import fit_temperature
    from trl_robust.scoring import reward_model_outputs
    from trl_robust.tokenization import padding_id

    harness.setup_arm_process(args)
    arm, settings = args.arms[arm_index], args.settings[arm_index]
    path = backbone_path(args, workdir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs, total = load_pairs(args, tokenizer)
    train_idx, cal_idx, test_idx = fold_splits(len(pairs), args.folds, fold, args.calibration_fraction)
    id_columns = ["chosen_ids", "rejected_ids"]
    train = pairs.select(train_idx).select_columns(id_columns)
    calibration = pairs.select(cal_idx).select_columns(id_columns)
    test_ids = pairs.select(test_idx).select_columns(id_columns)  # the same pairs, tokenised: for the raw scores
    test = pairs.select(test_idx).select_columns(["prompt", "chosen", "rejected"])
    gpu = args.device == "cuda"
    common = dict(
        output_dir=str(workdir / f"run-{arm_index}-{fold}"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        max_length=args.max_length,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        use_cpu=not gpu,
        logging_steps=10,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        disable_tqdm=True,
    )
    rss_before = harness.start_memory(gpu)
    if arm == "trl":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = padding_id(tokenizer)
        trainer = RewardTrainer(
            model=model, args=RewardConfig(**common), train_dataset=train, processing_class=tokenizer
        )
    else:  # the trainer builds the BRME on the backbone from the config, its members' init seeded by args.seed
        trainer = BRMERewardTrainer(
            model=path,
            args=BRMERewardConfig(**common, num_heads=args.num_heads, calibrate=False, **settings),
            train_dataset=train,
            eval_dataset=calibration,
            processing_class=tokenizer,
        )
    if gpu:
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.train()
    if gpu:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - started
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    if arm == "trl":  # the same temperature fit as the BRME trainer's, on the same calibration pairs, var = 0
        seqs = list(calibration["chosen_ids"]) + list(calibration["rejected_ids"])
        means, _ = reward_model_outputs(model, seqs, padding_id(tokenizer), 2 * args.batch_size)
        gap = (means[: len(calibration)] - means[len(calibration) :]).cpu()
        temperature, exploits = fit_temperature(gap, torch.zeros_like(gap)), False
    else:
        temperature, exploits = trainer.calibrate(), args.num_heads > 1
    metrics = evaluate_reward_model(
        model,
        tokenizer,
        test,
        batch_size=2 * args.batch_size,
        max_length=args.max_length,
        temperature=temperature,
        exploits=exploits,
        max_exploit_answers=args.max_exploit_answers,
    )
    metrics.pop("reliability")
    # The test pairs' raw member scores, so that other aggregations can be compared afterwards without retraining.
    seqs = list(test_ids["chosen_ids"]) + list(test_ids["rejected_ids"])
    means, stds = reward_model_outputs(model, seqs, padding_id(tokenizer), 2 * args.batch_size)
    torch.save({"means": means.cpu(), "stds": None if stds is None else stds.cpu(), "pairs": len(test)},
               workdir / f"scores-{arm}-{fold}.pt")  # fmt: skip
    result = {"arm": arm, "fold": fold, "train_s": train_s, "pairs_total": total, "pairs_used": len(pairs)}
    result.update(pairs_train=len(train), pairs_calibration=len(calibration), pairs_test=len(test), **metrics)
    result["peak_rss_bytes"] = harness.peak_rss_bytes()
    harness.add_peak_memory(result, gpu, rss_before)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Driver and report
# --------------------------------------------------------------------------------------------------------------------


def run_isolated(args, arm_index: int, fold: int, workdir: Path) -> dict:
    """One (arm, fold) in a fresh subprocess of this script, so that its peak memory is its own."""
    result_file = workdir / f"result-{arm_index}-{fold}.json"
    if result_file.exists():  # an interrupted measurement resumes: the (arm, fold) runs already done are kept
        result = json.loads(result_file.read_text())
        if result.get("arm") == args.arms[arm_index] and result.get("fold") == fold:
            return result
    argv = [sys.executable, str(Path(__file__).resolve()), *SYS_ARGV, "--run-one", f"{arm_index}:{fold}",
            "--result-file", str(result_file)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(harness.REPO), os.environ.get("PYTHONPATH")])))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(argv, env=env)
    if done.returncode != 0:
        raise SystemExit(f"arm {args.arms[arm_index]!r}, fold {fold} failed (exit code {done.returncode})")
    return json.loads(result_file.read_text())


def summarize(args, results: list[dict]) -> dict:
    by_arm = {arm: [r for r in results if r["arm"] == arm] for arm in args.arms}
    kinds = sorted({k.removeprefix("exploit_auroc_") for r in results for k in r if k.startswith("exploit_auroc_")})
    summary = {}
    for arm, runs in by_arm.items():
        row = {}
        for key in SUMMARY_KEYS + [f"exploit_auroc_{k}" for k in kinds] + [f"exploit_reward_auroc_{k}" for k in kinds]:
            values = [r[key] for r in runs if key in r and not math.isnan(r[key])]
            if values:
                row[key] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "n": len(values)}
        summary[arm] = row
    if "trl" in summary:
        for row in summary.values():
            for key in ("train_s", "peak_mem_bytes"):
                base = summary["trl"].get(key, {}).get("mean")
                if base and key in row:
                    row[f"{key}_ratio_to_trl"] = row[key]["mean"] / base
    return {"kinds": kinds, "arms": summary}


def fmt(row: dict, key: str, digits: int = 3) -> str:
    if key not in row:
        return "-"
    v = row[key]
    return f"{v['mean']:.{digits}f} +- {v['std']:.{digits}f}"


def markdown(args, summary: dict, wall_s: float) -> str:
    arms = summary["arms"]
    lines = [
        f"Backbone `{'tiny (dry run)' if args.dry_run else args.backbone}`, {args.folds} folds, max_length "
        f"{args.max_length}, {args.epochs:g} epoch(s), lr {args.lr:g}, batch {args.batch_size}, K = {args.num_heads}, "
        f"device {args.device}; wall time {wall_s:.0f} s. Mean +- std over folds.",
        "",
        "| arm | acc mean | acc robust | acc nominal | acc worst | ECE | ECE calibrated | T |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, row in arms.items():
        cells = [fmt(row, k) for k in SUMMARY_KEYS[:6]] + [fmt(row, "calibration_temperature", 2)]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| arm | AUROC own errors: epistemic | aleatoric | \\|margin\\| (baseline) | train time / TRL "
        "| peak mem / TRL |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, row in arms.items():
        ratios = [
            f"{row[k]:.2f}x" if k in row else "-" for k in ("train_s_ratio_to_trl", "peak_mem_bytes_ratio_to_trl")
        ]
        cells = [fmt(row, k) for k in SUMMARY_KEYS[7:10]] + ratios
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if summary["kinds"]:
        lines += ["", "AUROC of epistemic for exploits (exploit = positive) / AUROC of the reward (> 0.5: the RM "
                  "prefers the exploit):", "", "| arm | " + " | ".join(summary["kinds"]) + " |",
                  "| --- |" + " ---: |" * len(summary["kinds"])]  # fmt: skip
        for arm, row in arms.items():
            cells = [
                f"{fmt(row, f'exploit_auroc_{k}', 2)} / {fmt(row, f'exploit_reward_auroc_{k}', 2)}"
                for k in summary["kinds"]
            ]
            if any(c != "- / -" for c in cells):
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SYS_ARGV: list[str] = []  # the driver's command line, passed on to every (arm, fold) subprocess


def main(argv=None) -> int:
    global SYS_ARGV
    SYS_ARGV = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.run_one is not None:
        arm_index, fold = (int(x) for x in args.run_one.split(":"))
        result = run_one(args, arm_index, fold, Path(args.output_dir) / "work")
        Path(args.result_file).write_text(json.dumps(result))
        return 0
    for arm, settings in zip(args.arms, args.settings, strict=True):
        if arm != "trl":
            check_supported(arm, split_settings(settings)[0])
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    workdir = out / "work"  # run folders (no checkpoints are saved), subprocess results, the dry run's tiny model
    workdir.mkdir(exist_ok=True)
    for fold in range(args.folds):
        for arm_index, arm in enumerate(args.arms):
            run = run_one if args.in_process else run_isolated
            result = run(args, arm_index, fold, workdir)
            results.append(result)
            print(
                f"fold {fold} {arm:>14}: accuracy robust {result['accuracy_robust']:.3f}, ECE "
                f"{result['ece']:.3f} -> {result['calibrated_ece']:.3f}, train {result['train_s']:.1f} s",
                flush=True,
            )
    wall_s = time.perf_counter() - started
    summary = summarize(args, results)
    report = markdown(args, summary, wall_s)
    settings = {k: v for k, v in vars(args).items() if k not in ("run_one", "result_file")}
    everything = {"settings": settings, "machine": harness.machine_info(args), "wall_s": wall_s, "summary": summary}
    (out / "results.json").write_text(json.dumps({**everything, "runs": results}, indent=2))
    (out / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
