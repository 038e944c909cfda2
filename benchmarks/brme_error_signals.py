"""
Which uncertainty of a BRME flags its own mistakes? On the raw test scores `brme_members.py` saved
(`work/scores-ARM-FOLD.pt`), the AUROC (mistake = positive; 0.5 = no signal) of each pair-level signal, per fold:

- `|margin|`: the ensemble-mean margin's size, small = likely wrong (the baseline every uncertainty must beat);
- `epistemic`: the members' spread of their margins (what `trl-robust evaluate` reports);
- `vote split`: the share of members whose margin has the other sign than the mean's;
- `margin z`: |mean margin| over the members' spread, small = likely wrong (a signal-to-noise ratio);
- `aleatoric z`: |mean margin| over the members' mean predicted std of the margin.

    python benchmarks/brme_error_signals.py outputs/brme_members/work --arms linear paper
"""

import argparse
from pathlib import Path

import torch
from brme_refit_calibration import gaps

from trl_robust.metrics import auroc


def signals(gap: torch.Tensor, var: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each signal of `[N, K]` member margins `gap` and their variances `var`, oriented so that high = likely wrong."""
    mean_gap = gap.mean(1)
    spread = gap.std(1, unbiased=False)
    return {
        "|margin|": -mean_gap.abs(),
        "epistemic": spread,
        "vote split": (torch.sign(gap) != torch.sign(mean_gap)[:, None]).double().mean(1),
        "margin z": -(mean_gap.abs() / spread.clamp_min(1e-12)),
        "aleatoric z": -(mean_gap.abs() / var.mean(1).sqrt().clamp_min(1e-12)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="brme_members.py's OUTPUT_DIR/work")
    parser.add_argument("--arms", nargs="+", required=True)
    args = parser.parse_args()
    print("| arm | folds | accuracy (mean) | " + " | ".join(signals(torch.ones(1, 2), torch.ones(1, 2))) + " |")
    print("|---|---:|---:|" + "---:|" * 5)
    for arm in args.arms:
        paths = sorted(args.workdir.glob(f"scores-{arm}-*.pt"))
        if not paths:
            raise SystemExit(f"arm {arm!r}: no saved scores in {args.workdir}.")
        per_fold = []
        for path in paths:
            gap, var = gaps(path)
            wrong = gap.mean(1) <= 0
            per_fold.append({"accuracy": 1 - wrong.double().mean().item()} | {
                name: auroc(value, wrong) for name, value in signals(gap, var).items()
            })  # fmt: skip
        cells = [f"{sum(f[k] for f in per_fold) / len(per_fold):.3f}" for k in per_fold[0]]
        print(f"| {arm} | {len(per_fold)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
