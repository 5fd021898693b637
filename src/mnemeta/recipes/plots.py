"""The plots a user looks at after a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_training_curves(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Training loss and accuracy (and validation accuracy ± CI, if logged) against step."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never opens a window
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_accuracy" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue")
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    ax_acc.plot(
        [r["step"] for r in train],
        [100 * r["accuracy"] for r in train],
        label="training episodes",
        color="tab:blue",
    )
    if val:
        ax_acc.errorbar(
            [r["step"] for r in val],
            [r["val_accuracy"] for r in val],
            yerr=[r["val_ci95"] for r in val],
            fmt="o-",
            color="tab:orange",
            capsize=3,
            label="validation (95% CI)",
        )
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
