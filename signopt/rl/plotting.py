"""PNG plot of reward, KL, entropy and loss per RL step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PANELS = (("reward_mean", "reward"), ("kl", "KL to reference (k3)"), ("entropy", "entropy"), ("loss", "loss"))


def missing_dependency() -> str | None:
    """A sentence naming the missing plotting package, or None when plots can be drawn."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed (pip install matplotlib)"
    return None


def plot_metrics(metrics: list[dict], path: str | Path) -> None:
    """Write a 2×2 figure; a panel whose metric was never logged says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for ax, (key, title) in zip(axes.flat, PANELS):
        pts = [(m["step"], m[key]) for m in metrics if key in m]
        if pts:
            ax.plot(*zip(*pts), lw=1)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
