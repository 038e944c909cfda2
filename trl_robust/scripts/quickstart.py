"""
Quickstart on the embedded default: train a Bayesian Reward Model Ensemble on the 1,800 human preference pairs that
ship with the package, on a small real pretrained model that loads offline, then report and plot.

    python -m trl_robust.scripts.quickstart                       # all-MiniLM-L6-v2 backbone, a few minutes on CPU
    python -m trl_robust.scripts.quickstart --backbone smollm2    # SmolLM2-135M-Instruct (slower on CPU)
    python -m trl_robust.scripts.quickstart --backbone path/or/hub-id --num-heads 5 --epochs 2
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from trl_robust import BRMERewardConfig, BRMERewardModel, BRMERewardTrainer, load_hh_rlhf_harmless
from trl_robust.offline_models import all_minilm_l6_v2, smollm2_135m_instruct
from trl_robust.plotting import plot_log_history

BACKBONES = {"minilm": all_minilm_l6_v2, "smollm2": smollm2_135m_instruct}
REPORTED = ["accuracy", "accuracy_nominal", "accuracy_worst", "accuracy_mean", "ece", "mean_std", "head_disagreement"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm", help="'minilm', 'smollm2', or any checkpoint path / hub id")
    parser.add_argument("--output-dir", default="outputs/quickstart", help="where the model, metrics and plot go")
    parser.add_argument("--num-heads", type=int, default=5, help="Gaussian heads K")
    parser.add_argument("--robust-lambda", type=float, default=0.4, help="weight of the nominal reward")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the training pairs")
    parser.add_argument("--max-train-pairs", type=int, default=None, help="use only this many training pairs")
    parser.add_argument("--max-length", type=int, default=128, help="pairs longer than this (tokens) are dropped")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    path = BACKBONES[args.backbone]() if args.backbone in BACKBONES else args.backbone
    print(f"[trl-robust] backbone: {path}")
    # Prompts cut to their last Human turn keep inputs short; the replies the humans compared stay whole.
    data = load_hh_rlhf_harmless(explicit_prompt=True, last_turn_only=True)
    train = data["train"]
    if args.max_train_pairs is not None:
        train = train.select(range(min(args.max_train_pairs, len(train))))

    use_gpu = torch.cuda.is_available()
    config = BRMERewardConfig(
        output_dir=str(out / "checkpoints"),
        num_heads=args.num_heads,
        robust_lambda=args.robust_lambda,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        gradient_checkpointing=False,
        eval_strategy="steps",
        eval_steps=0.25,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_pin_memory=use_gpu,
    )
    model = BRMERewardModel.from_backbone(path, num_heads=args.num_heads, robust_lambda=args.robust_lambda)
    tokenizer = AutoTokenizer.from_pretrained(path)
    trainer = BRMERewardTrainer(
        model=model, args=config, train_dataset=train, eval_dataset=data["test"], processing_class=tokenizer
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    trainer.save_model(str(out / "brme"))
    tokenizer.save_pretrained(str(out / "brme"))

    rows = [(name, before[f"eval_{name}"], after[f"eval_{name}"]) for name in REPORTED]
    rows += [
        (f"accuracy_head_{k}", before[f"eval_accuracy_head_{k}"], after[f"eval_accuracy_head_{k}"])
        for k in range(args.num_heads)
    ]
    print(f"\nHeld-out pairs: {len(trainer.eval_dataset)}  (train pairs: {len(trainer.train_dataset)})")
    print(f"| {'metric':<20} | {'start':>8} | {'end':>8} |\n|{'-' * 22}|{'-' * 10}|{'-' * 10}|")
    for name, start, end in rows:
        print(f"| {name:<20} | {start:>8.3f} | {end:>8.3f} |")

    plot = plot_log_history(
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
    summary = {"backbone": str(path), "start": before, "end": after, "model_dir": str(out / "brme"), "plot": str(plot)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nModel: {out / 'brme'}\nPlot: {plot}\nMetrics: {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
