"""Meta-training over processes on one CPU: 2 ranks x 1 thread against 1 rank x 2 threads.

    python benchmarks/distributed.py --repeats 3 --steps 30 \
        --out benchmarks/results/distributed.json

Each arm is ``mnemeta train`` as a user runs it, in fresh processes: ``torchrun --nproc_per_node
2`` with ``OMP_NUM_THREADS=1`` (each rank takes half of every meta-batch, gloo all-reduces the
gradients), and one process with ``OMP_NUM_THREADS=2`` (torch's intra-op threads split each
operation). Tasks/s is the run's own count: ``steps_done x train.meta_batch / seconds.train``
from its ``result.json`` (the training loop alone: no start-up, data building or evaluation).
The machine is shared, so the arms alternate (which goes first flips every repeat) and every
repeat is reported; a lead that does not hold in every repeat is "on par".

Workloads: MAML (second order, Conv-4, 5-way 1-shot 15-query, meta-batch 8) and the MANN
(5-class episodes of 10, meta-batch 16) on the embedded glyphs, so that no download is needed;
and the meta-RL learners on 2D navigation at their presets' sizes (MAML-RL with TRPO and RL²,
20 tasks x 20 trajectories of 100 steps). The meta-RL recipe runs one torch thread per process
whatever ``OMP_NUM_THREADS`` says (``rl_train.one_thread``: threads only slow its tiny
operations), so for those workloads the one-process arm computes on one core.
On N GPUs the same comparison is ``torchrun --nproc_per_node N`` against one GPU (see
benchmarks/README.md); this script measures the CPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean
from typing import Any

from common import header

WORKLOADS: dict[str, tuple[str, list[str]]] = {
    "maml_5w1s_mb8": (
        "maml_omniglot_5w1s",
        ["data.dataset=glyphs", "train.split=train", "train.meta_batch=8"],
    ),
    "mann_5class_mb16": (
        "mann_omniglot_5class",
        ["data.dataset=glyphs", "train.split=train", "data.image_size=20"],
    ),
    "maml_rl_navigation_mb20": ("maml_rl_navigation2d", ["model.eval_steps=1"]),
    "rl2_navigation_mb20": ("rl2_navigation2d", []),
}
ARMS = ("2 ranks x 1 thread", "1 rank x 2 threads")


def one_run(arm: str, preset: str, settings: list[str], steps: int) -> dict[str, float]:
    """Train ``steps`` steps in ``arm``; tasks/s and seconds from the run's result.json."""
    torchrun = Path(sys.executable).with_name("torchrun")
    with tempfile.TemporaryDirectory(prefix="mnemeta-dist-") as tmp:
        out = Path(tmp) / "run"
        args = ["train", preset, "--out", str(out), "--device", "cpu", "--no-progress"]
        for item in [
            *settings,
            f"train.steps={steps}",
            f"train.log_every={steps}",
            "train.eval_every=0",
            f"train.checkpoint_every={steps}",
            "eval.episodes=10",
        ]:
            args += ["--set", item]
        if arm == ARMS[0]:
            launcher = str(torchrun) if torchrun.exists() else shutil.which("torchrun")
            # --standalone: a free local port for the rendezvous (29500 may be in use).
            argv = [launcher or "torchrun", "--standalone", "--nproc_per_node", "2"]
            argv += ["-m", "mnemeta", *args]
            threads = "1"
        else:
            argv = [sys.executable, "-m", "mnemeta", *args]
            threads = "2"
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        run = subprocess.run(argv, env=env, capture_output=True, text=True)
        if run.returncode != 0:
            lines = [x for x in (run.stderr + run.stdout).splitlines() if "error" in x.lower()]
            raise SystemExit(f"{arm} failed: {(lines or ['no error line'])[0]}")
        result = json.loads((out / "result.json").read_text())
        batch = int(json.loads((out / "config.json").read_text())["train"]["meta_batch"])
    seconds = float(result["seconds"]["train"])
    return {"tasks_per_s": result["steps_done"] * batch / seconds, "train_seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    record: dict[str, Any] = {**header(), "steps": args.steps, "workloads": {}}
    for name in args.workloads:
        preset, settings = WORKLOADS[name]
        runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
        ratios = []
        for rep in range(args.repeats):
            order = ARMS if rep % 2 == 0 else ARMS[::-1]
            for arm in order:
                runs[arm].append(one_run(arm, preset, settings, args.steps))
                print(f"{name} repeat {rep + 1} {arm}: {runs[arm][-1]}", flush=True)
                # Written after every run: a shared machine may stall an arm for minutes.
                record["workloads"][name] = {"preset": preset, "settings": settings, "runs": runs}
                args.out.write_text(json.dumps(record, indent=2) + "\n")
            ratios.append(runs[ARMS[0]][-1]["tasks_per_s"] / runs[ARMS[1]][-1]["tasks_per_s"])
        tps = {arm: [r["tasks_per_s"] for r in runs[arm]] for arm in ARMS}
        verdict = (
            "2 ranks faster in every repeat"
            if min(ratios) > 1
            else "1 rank faster in every repeat"
            if max(ratios) < 1
            else "on par (the lead changes between repeats)"
        )
        record["workloads"][name] = {
            "preset": preset,
            "settings": settings,
            "runs": runs,
            "ratio_2ranks_over_1rank_per_repeat": ratios,
            "mean_tasks_per_s": {arm: mean(v) for arm, v in tps.items()},
            "verdict": verdict,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"{name}: ratios {[round(r, 3) for r in ratios]}: {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
