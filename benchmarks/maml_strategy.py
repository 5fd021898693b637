"""MAML meta-training throughput: vmap over the tasks of a meta-batch vs a loop over tasks.

    python benchmarks/maml_strategy.py [--device cpu] [--meta-batch 32] [--seconds 20]
        [--out benchmarks/results/maml_strategy.json]

Conv-4 (64 channels, per-task batch statistics from primitive ops), Omniglot-shaped 5-way
1-shot episodes with 15 queries per class (random pixels: speed does not depend on them), one
inner step, Adam outer step. Reports tasks/s (meta-batch x steps / s) for second- and
first-order MAML under each strategy, all measured in one process, side by side. This is what
``strategy = "auto"`` is chosen from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header
from mnemeta.algorithms.maml import MAML, Classifier
from mnemeta.episode import EpisodeBatch
from mnemeta.nn import Conv4


def batch(meta_batch: int, device: torch.device) -> EpisodeBatch:
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(meta_batch, 5, 1, 28, 28, generator=g)
    qx = torch.rand(meta_batch, 75, 1, 28, 28, generator=g)
    sy = torch.arange(5).repeat(meta_batch, 1)
    qy = torch.arange(5).repeat_interleave(15).repeat(meta_batch, 1)
    return EpisodeBatch(sx, sy, qx, qy, 5).to(device)


def tasks_per_second(learner: MAML, b: EpisodeBatch, seconds: float, device: torch.device) -> float:
    opt = torch.optim.Adam(learner.parameters(), 1e-3)

    def step() -> None:
        loss, _ = learner.meta_loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * b.n_tasks / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    b = batch(args.meta_batch, device)
    rows = []
    for first_order in (False, True):
        for strategy in ("vmap", "loop"):
            torch.manual_seed(0)
            model = Classifier(Conv4(1, 64, track_running_stats=False), 64, 5).to(device)
            learner = MAML(model, inner_lr=0.4, first_order=first_order, strategy=strategy)
            rate = tasks_per_second(learner, b, args.seconds, device)
            order = "first" if first_order else "second"
            rows.append({"order": order, "strategy": strategy, "tasks_per_s": round(rate, 2)})
            print(f"{order}-order, {strategy:4s}: {rate:8.2f} tasks/s", flush=True)
    result = {**header(), "meta_batch": args.meta_batch, "results": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
