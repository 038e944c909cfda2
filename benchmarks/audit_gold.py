"""Score the over-optimisation harness's measured answers with a second gold the proxy never learned from (issue 15).

The harness's gold (VADER) labels the pairs the proxy is trained on, so a hack that raises both (stacked sentiment
words) looks like success. This reads every `samples/<run>.jsonl` under the given harness output folders (the answers
each run's judge measured, with their first gold), scores each (prompt, answer) with `--gold` (a reward model folder,
e.g. a BRME trained on the shipped human pairs, scored by its members' mean; or any spec `load_gold_scorer` takes),
and writes to `--out`: `audit.csv` (run, step, mean first gold, mean audit gold, answers), `audit.md` (per run: both
golds at the start, at the first gold's peak and at the end) and `audit_by_update.png` (both golds by update, one panel
per run). It generates nothing: the answers are the harness's own.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/audit_gold.py --gold outputs/gold2_brme \
        --runs outputs/ppo_nom outputs/ppo_rob --out outputs/audit
"""

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import torch

from trl_robust.gold_scorers import load_gold_scorer
from trl_robust.plotting import plt, save_figure


def read_samples(folder: Path) -> dict[str, dict[int, list[dict]]]:
    """`{run: {step: [answer rows]}}` of one harness output folder."""
    runs: dict[str, dict[int, list[dict]]] = {}
    for path in sorted((folder / "samples").glob("*.jsonl")):
        steps: dict[int, list[dict]] = defaultdict(list)
        for line in path.read_text().splitlines():
            row = json.loads(line)
            steps[int(row["step"])].append(row)
        runs[path.stem] = dict(sorted(steps.items()))
    if not runs:
        raise SystemExit(f"{folder}: no samples/*.jsonl (an over-optimisation output folder with RL runs?)")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gold", required=True, help="the second gold: a reward model folder or a gold spec")
    parser.add_argument("--runs", nargs="+", required=True, help="over-optimisation output folders")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="outputs/audit")
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    out = Path(cli.out)
    out.mkdir(parents=True, exist_ok=True)
    audit = load_gold_scorer(cli.gold)

    table = []
    for folder in map(Path, cli.runs):
        for run, steps in read_samples(folder).items():
            for step, rows in steps.items():
                scores = audit([r["prompt"] for r in rows], [r["answer"] for r in rows])
                table.append(
                    {
                        "folder": folder.name,
                        "run": run,
                        "step": step,
                        "gold": sum(r["gold"] for r in rows) / len(rows),
                        "audit_gold": sum(scores) / len(scores),
                        "answers": len(rows),
                    }
                )
            print(f"{folder.name}/{run}: {len(steps)} measurements scored", flush=True)
    with (out / "audit.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)

    by_run: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in table:
        by_run[(row["folder"], row["run"])].append(row)
    lines = [
        f"Audit gold: `{cli.gold}`, scoring the answers each run's judge measured.",
        "",
        "| run | gold: start / peak (update) / end | audit gold: start / at gold's peak / end "
        "| audit gold's own peak (update) |",
        "| --- | --- | --- | --- |",
    ]
    for (folder, run), rows in by_run.items():
        peak = max(rows, key=lambda r: r["gold"])
        own = max(rows, key=lambda r: r["audit_gold"])
        first, last = rows[0], rows[-1]
        lines.append(
            f"| {folder}/{run} | {first['gold']:.3f} / {peak['gold']:.3f} ({peak['step']}) / {last['gold']:.3f} "
            f"| {first['audit_gold']:.3f} / {peak['audit_gold']:.3f} / {last['audit_gold']:.3f} "
            f"| {own['audit_gold']:.3f} ({own['step']}) |"
        )
    (out / "audit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    columns = min(3, len(by_run))
    fig, axes = plt.subplots(
        math.ceil(len(by_run) / columns), columns, figsize=(4.2 * columns, 3.0 * math.ceil(len(by_run) / columns)),
        squeeze=False,
    )  # fmt: skip
    for ax, ((folder, run), rows) in zip(axes.flat, by_run.items(), strict=False):
        steps = [r["step"] for r in rows]
        ax.plot(
            steps, [r["gold"] for r in rows], marker="o", label="gold (the harness's: it labelled the proxy's data)"
        )
        ax.plot(steps, [r["audit_gold"] for r in rows], marker="s", label="audit gold")
        ax.set_title(f"{folder}/{run}", fontsize=9)
        ax.set_xlabel("update")
    for ax in list(axes.flat)[len(by_run) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    save_figure(fig, out / "audit_by_update.png", f"Gold and audit gold ({Path(cli.gold).name}) by update")
    print(f"wrote {out / 'audit.csv'}, {out / 'audit.md'}, {out / 'audit_by_update.png'}")


if __name__ == "__main__":
    main()
