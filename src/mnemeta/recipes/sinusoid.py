"""MAML on sinusoid regression (Finn, Abbeel & Levine 2017, §5.1), with the paper's baseline.

A separate recipe because the loop differs from episodic classification: two models are trained
(MAML, and a network "pretrained" by plain regression on all tasks), and evaluation is a curve,
the query MSE after 0..10 fine-tuning steps on K support points, not one accuracy.

Protocol (paper): amplitude U[0.1, 5], phase U[0, π], x U[−5, 5]; MLP 1-40-40-1 with ReLU;
K = 10 support points, one inner step with α = 0.01, meta-batch 25, Adam 1e-3. At test time
both models take SGD steps with α on the K points; the baseline's step size is chosen on
validation tasks (the paper tuned it automatically).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from tqdm import tqdm

from mnemeta.algorithms.inner_optim import apply_updates, sgd
from mnemeta.algorithms.maml import MAML
from mnemeta.data.sinusoid import SinusoidTasks
from mnemeta.episode import EpisodeBatch
from mnemeta.errors import ConfigError
from mnemeta.io import atomic_write_text
from mnemeta.nn import MLP
from mnemeta.stats import mean_ci95

BASELINE_STEP_SIZES = (0.001, 0.005, 0.01, 0.02, 0.05)


@dataclass
class SinusoidSettings:
    steps: int = 70_000  # meta-iterations (the paper's budget)
    meta_batch: int = 25
    shots: int = 10  # K during meta-training
    inner_lr: float = 0.01  # α
    lr: float = 1e-3  # Adam, outer
    eval_shots: tuple[int, ...] = (5, 10)
    eval_tasks: int = 1000
    eval_queries: int = 100
    max_eval_steps: int = 10
    seed: int = 0
    strategy: str = "vmap"  # a tiny MLP: vmap beats a loop over 25 tasks even on a CPU
    compile: bool = False  # torch.compile the meta-loss: faster steps after ~15 s compiling

    def __post_init__(self) -> None:
        check_settings(self)


#: The command-line flag of each setting that has one (``mnemeta demo``, ``mnemeta sinusoid``),
#: so that an error names what the user typed; the other settings are named as fields.
_FLAGS = {"steps": "--steps", "seed": "--seed"}

#: Whole-number settings: the smallest sensible value, and what the number is.
_COUNTS = {
    "steps": (1, "the number of meta-training steps"),
    "meta_batch": (1, "the number of tasks per meta-batch"),
    "shots": (1, "K, the number of support points per training task"),
    "eval_tasks": (2, "the number of test tasks (a 95% CI needs two)"),
    "eval_queries": (1, "the number of query points per test task"),
    "max_eval_steps": (1, "the number of fine-tuning steps at test time"),
    "seed": (0, "the seed"),
}
#: torch takes 64-bit seeds, and the recipe seeds its generators with up to ``seed + 303``.
_MAX_SEED = 2**63 - 304


def check_settings(s: SinusoidSettings) -> None:
    """Refuse a nonsense setting with a :class:`ConfigError`, before any work starts.

    Called when the settings are made and again by :func:`run_sinusoid` (a field may have been
    assigned in between). The message names the setting as the user gave it: the CLI flag where
    there is one (``--steps -10``), else the field (``SinusoidSettings.lr=0``).
    """
    for field, (least, what) in _COUNTS.items():
        v = getattr(s, field)
        whole = isinstance(v, int) and not isinstance(v, bool)
        if not whole or v < least or (field == "seed" and v > _MAX_SEED):
            bounds = "from 0 to 2**63 - 304" if field == "seed" else f"of at least {least}"
            raise ConfigError(
                f"{_setting(field, v)}: {what} must be a whole number {bounds}; give e.g. "
                f"{_setting(field, _default(field))}"
            )
    for field in ("inner_lr", "lr"):
        v = getattr(s, field)
        real = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not (real and math.isfinite(v) and v > 0):
            raise ConfigError(
                f"{_setting(field, v)}: a step size must be a positive finite number; give e.g. "
                f"{_setting(field, _default(field))}"
            )
    k = s.eval_shots
    if not (
        isinstance(k, (tuple, list))
        and k
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in k)
        and len(set(k)) == len(k)
    ):
        raise ConfigError(
            f"{_setting('eval_shots', k)}: give the support sizes K to test at, distinct whole "
            f"numbers of at least 1, e.g. {_setting('eval_shots', _default('eval_shots'))}"
        )
    if s.strategy not in ("auto", "vmap", "loop"):
        raise ConfigError(
            f"{_setting('strategy', s.strategy)} is unknown; choose auto, vmap or loop"
        )
    if not isinstance(s.compile, bool):
        raise ConfigError(f"{_setting('compile', s.compile)}: give True or False")


def _setting(field: str, value: object) -> str:
    """A setting as the user gives it: ``--steps -10`` (a CLI flag), ``SinusoidSettings.lr=0``."""
    flag = _FLAGS.get(field)
    return f"{flag} {value!r}" if flag else f"SinusoidSettings.{field}={value!r}"


def _default(field: str) -> object:
    return next(f.default for f in fields(SinusoidSettings) if f.name == field)


def run_sinusoid(s: SinusoidSettings, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Train MAML and the pretrained baseline, evaluate both, write result.json and a plot.

    ``result.json`` is strict JSON: a mean that is not finite (fine-tuning diverged on some task,
    as too large a step size does) is written as null, with the number of tasks it diverged on
    beside it.
    """
    check_settings(s)
    torch.manual_seed(s.seed)
    t0 = time.perf_counter()
    tasks = SinusoidTasks(shots=s.shots, queries=s.shots, seed=s.seed)
    maml = MAML(
        MLP(1, (40, 40), 1),
        task="regression",
        inner_lr=s.inner_lr,
        inner_steps=1,
        strategy=s.strategy,
    )
    pretrained = MLP(1, (40, 40), 1)
    opt_maml = torch.optim.Adam(maml.parameters(), lr=s.lr)
    opt_pre = torch.optim.Adam(pretrained.parameters(), lr=s.lr)
    meta_loss = torch.compile(maml.meta_loss) if s.compile else maml.meta_loss
    bar = tqdm(
        range(s.steps), desc="sinusoid", disable=not progress, dynamic_ncols=True, mininterval=1.0
    )
    for step in bar:
        batch = tasks.sample(s.meta_batch)
        loss, _ = meta_loss(batch)
        opt_maml.zero_grad(set_to_none=True)
        loss.backward()
        opt_maml.step()
        # The baseline regresses on the same points, pooled over all tasks.
        x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
        y = torch.cat([batch.support_y, batch.query_y], 1).flatten(0, 1)
        pre_loss = nn.functional.mse_loss(pretrained(x), y)
        opt_pre.zero_grad(set_to_none=True)
        pre_loss.backward()
        opt_pre.step()
        if step % 500 == 0:
            bar.set_postfix(maml=f"{loss.item():.3f}", pretrained=f"{pre_loss.item():.3f}")
    t_train = time.perf_counter() - t0

    # Baseline step size: the best on validation tasks (disjoint seed from the test tasks). A step
    # size whose fine-tuning diverges on some task has no mean to compare (after the demo's 8,000
    # steps, 0.05 does: the MSE overflows to inf, then NaN, and the mean with it); it is recorded
    # as null, with the number of tasks it diverged on, and never chosen.
    val = _eval_tasks(s, seed=s.seed + 101, shots=max(s.eval_shots))
    val_mse: dict[float, float | None] = {}
    val_diverged: dict[float, int] = {}
    for a in BASELINE_STEP_SIZES:
        final = finetune_curve(pretrained, val, a, s.max_eval_steps)[:, -1]
        diverged = int((~torch.isfinite(final)).sum())
        val_mse[a] = None if diverged else float(final.mean())
        if diverged:
            val_diverged[a] = diverged
    finite = {a: m for a, m in val_mse.items() if m is not None}
    # Every step size diverging means the baseline itself is broken (its training diverged): the
    # smallest then shows it in the table instead of a guess.
    baseline_lr = min(finite, key=lambda a: finite[a]) if finite else min(BASELINE_STEP_SIZES)

    rows, curves = [], {}
    for k in s.eval_shots:
        test = _eval_tasks(s, seed=s.seed + 202, shots=k)
        for name, model, lr in (
            ("MAML", maml.model, s.inner_lr),
            ("pretrained", pretrained, baseline_lr),
        ):
            curve = finetune_curve(model, test, lr, s.max_eval_steps)  # (tasks, steps + 1)
            curves[(name, k)] = curve
            row: dict[str, Any] = {"method": name, "shots": k, "step_size": lr}
            for n_steps in (0, 1, 5, 10):
                if n_steps <= s.max_eval_steps:
                    values = curve[:, n_steps]
                    diverged = int((~torch.isfinite(values)).sum())
                    if diverged:  # no mean to give: null, and on how many tasks it diverged
                        row[f"mse_{n_steps}"] = row[f"ci95_{n_steps}"] = None
                        row[f"diverged_{n_steps}"] = diverged
                        continue
                    mean, ci = mean_ci95(values)
                    row[f"mse_{n_steps}"] = round(mean, 4)
                    row[f"ci95_{n_steps}"] = round(ci, 4)
            rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_sinusoid(maml.model, pretrained, s, baseline_lr, curves, out_dir / "sinusoid.png")
    result = {
        "settings": {k: v for k, v in vars(s).items()},
        "baseline_step_size": baseline_lr,
        "baseline_validation_mse": val_mse,
        # null above: fine-tuning with that step size diverged on this many validation tasks
        "baseline_validation_diverged_tasks": val_diverged,
        "results": rows,
        "seconds": {"train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
        "plot": str(plot),
    }
    # allow_nan=False: NaN and Infinity are not JSON; every non-finite mean is null by now.
    text = json.dumps(result, indent=2, allow_nan=False)
    atomic_write_text(out_dir / "result.json", text + "\n")
    return result


def _eval_tasks(s: SinusoidSettings, *, seed: int, shots: int) -> EpisodeBatch:
    """Fixed test tasks: K support points and ``eval_queries`` query points each."""
    sampler = SinusoidTasks(shots=shots, queries=s.eval_queries)
    g = torch.Generator().manual_seed(seed)
    return sampler.episodes_for(sampler.sample_tasks(s.eval_tasks, g), g)


def finetune_curve(model: nn.Module, tasks: EpisodeBatch, lr: float, max_steps: int) -> Tensor:
    """Query MSE after 0..max_steps SGD steps on each task's support: ``(tasks, max_steps + 1)``."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def mse(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.mse_loss(functional_call(model, p, (x,)), y)

    opt = sgd(lr)

    def one(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        p, state, out = params, opt.init(params), [mse(params, qx, qy)]
        for _ in range(max_steps):
            updates, state = opt.update(grad(mse)(p, sx, sy), state, p)
            p = apply_updates(p, updates)
            out.append(mse(p, qx, qy))
        return torch.stack(out)

    with torch.no_grad():
        return vmap(one)(tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y)


def adapted_prediction(
    model: nn.Module, sx: Tensor, sy: Tensor, x: Tensor, lr: float, steps: int
) -> Tensor:
    """The model after ``steps`` SGD steps on one task's ``(sx, sy)``, evaluated at ``x``."""
    p = {n: w.detach() for n, w in model.named_parameters()}

    def mse(q: dict[str, Tensor]) -> Tensor:
        return nn.functional.mse_loss(functional_call(model, q, (sx,)), sy)

    opt = sgd(lr)
    state = opt.init(p)
    for _ in range(steps):
        updates, state = opt.update(grad(mse)(p), state, p)
        p = apply_updates(p, updates)
    with torch.no_grad():
        return functional_call(model, p, (x,))


def plot_sinusoid(
    maml_model: nn.Module,
    pretrained: nn.Module,
    s: SinusoidSettings,
    baseline_lr: float,
    curves: dict[tuple[str, int], Tensor],
    path: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(s.eval_shots)
    examples = _eval_tasks(s, seed=s.seed + 303, shots=k)
    x = torch.linspace(-5, 5, 200).unsqueeze(-1)
    g = torch.Generator().manual_seed(s.seed + 303)
    params = SinusoidTasks(shots=k, queries=s.eval_queries).sample_tasks(s.eval_tasks, g)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for col in range(min(3, s.eval_tasks)):  # three example tasks
        ax = axes[col]
        a, phase = params[col].tolist()
        sx, sy = examples.support_x[col], examples.support_y[col]
        ax.plot(x, a * torch.sin(x - phase), "k-", lw=2, label="ground truth")
        ax.plot(
            x,
            adapted_prediction(maml_model, sx, sy, x, s.inner_lr, 0),
            ":",
            color="tab:green",
            label="MAML, before update",
        )
        for steps, style in ((1, "-"), (10, "--")):
            ax.plot(
                x,
                adapted_prediction(maml_model, sx, sy, x, s.inner_lr, steps),
                style,
                color="tab:blue",
                label=f"MAML, {steps} step{'s' * (steps > 1)}",
            )
        ax.plot(
            x,
            adapted_prediction(pretrained, sx, sy, x, baseline_lr, 10),
            "--",
            color="tab:red",
            label="pretrained, 10 steps",
        )
        ax.plot(sx, sy, "^", color="tab:purple", ms=8, label=f"{k} support points")
        ax.set(title=f"task {col + 1}: A={a:.2f}, φ={phase:.2f}", xlabel="x")
        if col == 0:
            ax.legend(fontsize=7, loc="lower left")
    ax = axes[3]
    for (name, shots), curve in sorted(curves.items()):
        mean = curve.mean(0)
        ax.plot(
            range(len(mean)), mean, "o-" if name == "MAML" else "s--", label=f"{name}, K={shots}"
        )
    ax.set(
        xlabel="gradient steps",
        ylabel="query MSE",
        yscale="log",
        title=f"mean over {s.eval_tasks} test tasks",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
