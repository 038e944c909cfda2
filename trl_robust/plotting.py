"""Training curves as PNG: people would rather look than read."""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; works with no display
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: str | Path, title: str | None = None) -> Path:
    """Title `fig` (when given), lay it out, write it to `path` as PNG (making its folder) and free it."""
    if title is not None:  # wrapped: a one-panel figure is narrower than a long title
        fig.suptitle("\n".join(textwrap.wrap(title, 80)), fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_log_history(log_history: list[dict], panels: dict[str, list[str]], path: str | Path, title: str) -> Path:
    """One panel per entry of `panels` (panel title -> metric names), each metric against the step it was logged."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (panel, names) in zip(axes[0], panels.items(), strict=True):
        for name in names:
            points = [(entry["step"], entry[name]) for entry in log_history if name in entry and "step" in entry]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path, title)


def plot_reliability(bins: list[dict], ece: float, path: str | Path) -> Path:
    """Reliability diagram of preference predictions: accuracy against confidence per bin, pair counts annotated."""
    bins = [b for b in bins if b["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0.5, 1.0], [0.5, 1.0], "--", color="gray", label="perfect calibration")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label="reward model")
    for b in bins:
        ax.annotate(
            str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel("confidence max(p, 1 - p)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
