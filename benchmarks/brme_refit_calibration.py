"""
Refit the pair-probability temperature on the raw test scores `brme_members.py` saved (`work/scores-ARM-FOLD.pt`), by
cross-fitting: for each fold, T is fitted (`trl_robust.metrics.fit_temperature`) on the other folds' test pairs and
the ECE measured on this fold's. Lets a change of the calibration formula be judged without retraining.

    python benchmarks/brme_refit_calibration.py outputs/brme_members/work --arms trl linear
"""

import argparse
from pathlib import Path

import torch

from trl_robust.metrics import expected_calibration_error, fit_temperature, pair_probability


def gaps(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(gap, var) `[N, K]` of one saved fold: chosen minus rejected means, and the summed variances (0: no stds)."""
    saved = torch.load(path)
    n, means, stds = saved["pairs"], saved["means"].double(), saved["stds"]
    var = torch.zeros_like(means[:n]) if stds is None else stds[:n].double() ** 2 + stds[n:].double() ** 2
    return means[:n] - means[n:], var


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="brme_members.py's OUTPUT_DIR/work")
    parser.add_argument("--arms", nargs="+", required=True)
    args = parser.parse_args()
    for arm in args.arms:
        folds = {int(p.stem.rsplit("-", 1)[1]): gaps(p) for p in sorted(args.workdir.glob(f"scores-{arm}-*.pt"))}
        if len(folds) < 2:
            raise SystemExit(f"arm {arm!r}: need saved scores of at least 2 folds in {args.workdir}, got {len(folds)}.")
        rows = []
        for fold, (gap, var) in folds.items():
            others = [folds[f] for f in folds if f != fold]
            t = fit_temperature(torch.cat([o[0] for o in others]), torch.cat([o[1] for o in others]))
            raw = expected_calibration_error(pair_probability(gap, var).mean(-1))
            refit = expected_calibration_error(pair_probability(gap, var, t).mean(-1))
            rows.append((fold, t, raw, refit))
        for fold, t, raw, refit in rows:
            print(f"{arm:>10} fold {fold}: T {t:.3f}  ECE {raw:.3f} -> {refit:.3f}")
        print(
            f"{arm:>10} mean ECE {sum(r[2] for r in rows) / len(rows):.3f} -> {sum(r[3] for r in rows) / len(rows):.3f}"
        )


if __name__ == "__main__":
    main()
