"""Was speed kept by a change? ``speed_maml.py`` on two source trees, alternated, repeated.

    python benchmarks/speed_kept.py --before /path/to/old/checkout/src --after src \
        --repeats 3 --seconds 15 --out benchmarks/results/speed_kept_cpu.json

Each repetition times mnemeta's MAML meta-training (``speed_maml.py --libs mnemeta``: Conv-4,
5-way 1-shot, 15 queries, meta-batch 32, second and first order) once with the ``before`` tree
and once with the ``after`` tree, in fresh processes, alternating which goes first, so that
both see the same machine load. Reported per strategy and order: every repetition's tasks/s,
the mean, min and max of each side, and after / before of the means.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

from common import header

HERE = Path(__file__).resolve().parent


def one_run(src: str, strategies: str, seconds: float, meta_batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
        argv = [sys.executable, str(HERE / "speed_maml.py"), "--libs", "mnemeta"]
        argv += ["--device", "cpu", "--strategies", strategies, "--seconds", str(seconds)]
        argv += ["--meta-batch", str(meta_batch), "--out", str(out)]
        subprocess.run(argv, check=True, env=env, capture_output=True, text=True)
        rows = json.loads(out.read_text())["results"]
    return {f"{r['strategy']}/{r['order']}": float(r["tasks_per_s"]) for r in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="src/ folder of the old checkout")
    ap.add_argument("--after", required=True, help="src/ folder of the new checkout")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--strategies", default="loop,vmap")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for rep in range(args.repeats):
        order = ("before", "after") if rep % 2 == 0 else ("after", "before")
        for side in order:
            src = args.before if side == "before" else args.after
            runs[side].append(one_run(src, args.strategies, args.seconds, args.meta_batch))
            print(f"repeat {rep + 1} {side}: {runs[side][-1]}", flush=True)
    summary: dict[str, Any] = {}
    for key in runs["before"][0]:
        sides = {side: [r[key] for r in runs[side]] for side in runs}
        summary[key] = {
            **{
                side: {"runs": v, "mean": mean(v), "min": min(v), "max": max(v)}
                for side, v in sides.items()
            },
            "after_over_before": mean(sides["after"]) / mean(sides["before"]),
        }
    record = {**header(), "before": args.before, "after": args.after, "summary": summary}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for key, s in summary.items():
        print(
            f"{key:16s} before {s['before']['mean']:6.2f} [{s['before']['min']:.2f}, "
            f"{s['before']['max']:.2f}]  after {s['after']['mean']:6.2f} "
            f"[{s['after']['min']:.2f}, {s['after']['max']:.2f}]  "
            f"after/before {s['after_over_before']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
