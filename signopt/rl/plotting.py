"""PNG plot of reward, KL, entropy and loss per RL step, and of the optimizer's step statistics
(``opt/g<group>/<name>`` metrics, ``step_stats=True``) when they were logged."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PANELS = (("reward_mean", "reward"), ("kl", "KL to reference (k3)"), ("entropy", "entropy"), ("loss", "loss"))
# step statistics: (metric name suffix, title); a panel draws every group's (and slot's) curve
STAT_PANELS = (("update_rms", "update RMS"), ("sign_flip_fraction", "sign-flip fraction"),
               ("nonfinite", "non-finite gradient elements"), ("absmax_", "state absmax"))


def missing_dependency() -> str | None:
    """A sentence naming the missing plotting package, or None when plots can be drawn."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed (pip install matplotlib)"
    return None


def _curves(metrics: list[dict], match) -> dict[str, list]:
    """Per metric key accepted by ``match``: its (step, value) points."""
    out: dict[str, list] = {}
    for m in metrics:
        for key, value in m.items():
            if match(key):
                out.setdefault(key, []).append((m["step"], value))
    return out


def plot_metrics(metrics: list[dict], path: str | Path) -> None:
    """Write a 2×2 figure (4×2 with step statistics); a panel whose metric was never logged says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = any(k.startswith("opt/") for m in metrics for k in m)
    fig, axes = plt.subplots(4 if stats else 2, 2, figsize=(10, 12 if stats else 6), sharex=True)
    panels = [(key, title, key.__eq__) for key, title in PANELS]
    if stats:
        panels += [(key, title, lambda k, s=key: k.startswith("opt/") and k.split("/")[-1].startswith(s))
                   for key, title in STAT_PANELS]
    for ax, (key, title, match) in zip(axes.flat, panels):
        curves = _curves(metrics, match)
        for name, pts in curves.items():
            ax.plot(*zip(*pts), lw=1, label=name)
        if not curves:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        elif key in dict(STAT_PANELS):
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
