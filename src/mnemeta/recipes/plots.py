"""The plots a user looks at after a run."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mnemeta.io import atomic_write_bytes


def plot_training_curves(
    rows: list[dict[str, Any]], path: Path, title: str, test: Any = None
) -> Path:
    """Training loss and accuracy (percent), validation accuracy ± CI if logged, and the final
    test accuracy ± CI (``test``, an :class:`~mnemeta.recipes.evaluate.EvalResult`) at the last
    step, against step."""
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
        [r["accuracy"] for r in train],
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
    if test is not None and train:
        ax_acc.errorbar(
            [train[-1]["step"]],
            [test.mean],
            yerr=[test.ci95],
            fmt="s",
            color="tab:red",
            capsize=4,
            label=f"test {test.ways}-way {test.shots}-shot: {test.mean:.2f} ± {test.ci95:.2f}%",
        )
    ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend(loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def plot_sequence_curves(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Loss and the task's metric (bits wrong per sequence, or accuracy at the 1st/2nd
    presentation) against the number of training sequences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = [r["sequences"] for r in rows]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(seen, [r["loss"] for r in rows], color="tab:blue")
    ax_loss.set(xlabel="training sequences", ylabel="training loss", yscale="log", title="loss")
    if rows and "bits_wrong" in rows[0]:
        ax_metric.plot(seen, [r["bits_wrong"] for r in rows], color="tab:blue")
        ax_metric.set(ylabel="bits wrong per sequence", title="copy error", yscale="symlog")
    else:
        ax_metric.plot(seen, [r.get("accuracy", 0) for r in rows], label="all steps")
        ax_metric.plot(seen, [r.get("accuracy_2nd", 0) for r in rows], label="2nd instance")
        ax_metric.set(ylabel="training accuracy (%)", title="accuracy")
        ax_metric.legend(loc="lower right")
    ax_metric.set_xlabel("training sequences")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def plot_copy_weights(model: Any, task: Any, path: Path, length: int = 20, seed: int = 7) -> Path:
    """Inputs, outputs and the NTM's write and read weights over one copy sequence (Graves et
    al. 2014, Fig. 6): a sharp diagonal is the learned "write in order, read in order"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from mnemeta.data.sequences import copy_batch

    data = copy_batch(1, length, task.bits, generator=torch.Generator().manual_seed(seed))
    trace: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        logits, _ = model(data.inputs.to(next(model.parameters()).device), trace=trace)
    outputs = torch.sigmoid(logits[0]).cpu()
    write = torch.stack(trace["write"])[:, 0, 0].cpu()  # (T, N), first write head
    read = torch.stack(trace["read"])[:, 0, 0].cpu()
    used = int(max(write.argmax(-1).max(), read.argmax(-1).max())) + 4
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    panels = [
        (data.inputs[0].T, "inputs"),
        (outputs.T, "outputs"),
        (write[:, :used].T, "write weights"),
        (read[:, :used].T, "read weights"),
    ]
    for ax, (image, name) in zip(axes.T.flatten(), panels, strict=True):
        ax.imshow(image.numpy(), aspect="auto", cmap="gray_r", interpolation="nearest")
        ax.set(title=name, ylabel="memory row" if "weights" in name else "channel")
    for ax in axes[-1]:
        ax.set_xlabel("time step")
    fig.suptitle(f"NTM copy, one sequence of length {length}")
    return _save(fig, path)


def plot_rl_curves(
    rows: list[dict[str, Any]], path: Path, title: str, test: dict[str, Any] | None = None
) -> Path:
    """The mean return of the training trajectories against the meta-iteration: before
    adaptation (``return``) and after it (``post_return``, MAML-RL), and where the learner logs
    them, each episode of a trial (``return_episode_<k>``, RL²); the held-out test's stages
    (mean ± 95% CI) as points at the last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = [r["step"] for r in rows]
    episodes = sorted({k for r in rows for k in r if k.startswith("return_episode_")})
    curves = ["return", "post_return", *episodes]
    labels = {"return": "training tasks, before adaptation", "post_return": "... after 1 step"}
    for key in curves:
        points = [(r["step"], r[key]) for r in rows if key in r and r[key] == r[key]]  # not NaN
        if points:
            ax.plot(*zip(*points, strict=True), label=labels.get(key, key.replace("_", " ")))
    if test is not None and steps:
        returns = {k: v for k, v in test["stages"].items() if not k.startswith("success_")}
        for i, (name, v) in enumerate(returns.items()):
            ax.errorbar(
                [steps[-1] + (i + 1) * max(1, steps[-1] // 50)],
                [v["mean"]],
                yerr=[v["ci95"]],
                fmt="s",
                capsize=3,
                label=f"held-out, {name.replace('_', ' ')}: {v['mean']:.2f} ± {v['ci95']:.2f}",
            )
    ax.set(xlabel="meta-iteration", ylabel="mean return per trajectory", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_navigation_trajectories(
    stages: dict[str, Any], goals: Any, path: Path, title: str
) -> Path:
    """2D navigation as the paper's Figure 4: for each goal (a star) the first trajectory of
    each stage (``{label: paths}``, anything with ``obs`` ``(tasks, n, steps, 2)`` and ``mask``:
    MAML-RL's trajectories before and after one inner step, RL²'s episodes of a trial), from
    the origin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    styles = [":", "-", "--", "-."]
    for s, (label, trajs) in enumerate(stages.items()):
        for i in range(goals.shape[0]):
            m = trajs.mask[i, 0].bool()
            xy = torch.cat([torch.zeros(1, 2), trajs.obs[i, 0][m][1:].cpu()])
            ax.plot(
                xy[:, 0],
                xy[:, 1],
                styles[s % len(styles)],
                color=colors[i % len(colors)],
                label=label if i == 0 else None,
            )
    for i in range(goals.shape[0]):
        ax.plot(*goals[i].tolist(), "*", color=colors[i % len(colors)], markersize=14)
    ax.set(xlim=(-0.6, 0.6), ylim=(-0.6, 0.6), aspect="equal", title=title)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())  # never half a plot, like every other file
    return path
