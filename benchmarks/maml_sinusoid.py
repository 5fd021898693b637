"""Finn et al. 2017 §5.1 sinusoid table: MAML vs a network pretrained on all tasks.

    python benchmarks/maml_sinusoid.py [--steps 70000] [--out benchmarks/results/maml_sinusoid]

Writes ``<out>.json`` (header + figures) and ``<out>.png`` (adapted curves, MSE vs steps).
Targets from the issue: 5-shot MSE after 1 / 5 / 10 steps <= 0.67 / 0.38 / 0.35, in <= 10
minutes on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header
from mnemeta.algorithms.maml import MAML
from mnemeta.data.sinusoid import SinusoidTasks
from mnemeta.nn import MLP
from mnemeta.recipes.sinusoid import SinusoidSettings, run_sinusoid


def check_compiled_gradient() -> None:
    """The compiled meta-gradient must equal the eager one before its speed means anything."""
    torch.manual_seed(0)
    maml = MAML(MLP(1, (40, 40), 1), task="regression", inner_lr=0.01, strategy="vmap")
    batch = SinusoidTasks(shots=10, queries=10, seed=5).sample(25)
    grads = []
    for fn in (maml.meta_loss, torch.compile(maml.meta_loss)):
        maml.zero_grad()
        fn(batch)[0].backward()
        grads.append([p.grad.clone() for p in maml.parameters()])
    for eager, compiled in zip(*grads, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)
    print("compiled meta-gradient equals eager (rtol 1e-4)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=70_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategy", default="vmap")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile the meta-loss (checked against eager first)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/maml_sinusoid"))
    args = ap.parse_args()
    if args.compile:
        check_compiled_gradient()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_sinusoid(
            SinusoidSettings(
                steps=args.steps, seed=args.seed, strategy=args.strategy, compile=args.compile
            ),
            Path(tmp),
            progress=sys.stderr.isatty(),
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(result["plot"], args.out.with_suffix(".png"))
    result["plot"] = str(args.out.with_suffix(".png"))
    args.out.with_suffix(".json").write_text(json.dumps({**header(), **result}, indent=2) + "\n")
    for row in result["results"]:
        print(row)
    print(f"seconds: {result['seconds']}; written to {args.out}.json/.png")


if __name__ == "__main__":
    main()
