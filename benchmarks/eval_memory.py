"""Peak memory and wall time of ``mnemeta evaluate``, before and after a change, same accuracies.

    python benchmarks/eval_memory.py --before /path/to/old/checkout/src --after src \
        --data /path/to/omniglot --work /tmp/eval_memory \
        --out benchmarks/results/eval_memory.json [--ways 5 20] [--episodes 1000 10000] \
        [--skip before:20:10000]

First, with the ``before`` tree, trains a ProtoNet checkpoint per way count for 20 steps
(``mnemeta train protonet_omniglot_{W}w1s --set train.steps=20``, test on 10 episodes): the
checkpoints only have to load and score; their accuracy does not matter (it is far below the
papers'). Then, for each cell (ways W, episodes E), runs
``mnemeta evaluate CK --ways W --shots 1 --episodes E`` once with each tree, in a fresh process
(``PYTHONPATH`` set to that tree), the two sides alternating which goes first. Each process's
own peak RSS comes from ``os.wait4`` (the kernel's ``ru_maxrss`` of exactly that child, what
``getrusage(RUSAGE_CHILDREN)`` reports for a process whose only child it is); wall time is
the whole command (imports, loading the data from the cache, the episodes). Both sides must
report the same mean ± 95% CI; the file says whether they do.

``--data`` must hold the official zips or folders when the ``before`` tree reads only those
(``materialize.py DIR --zip`` writes them). A cache of the decoded images is filled in
``--work`` before timing, so no measurement includes decoding. ``--skip SIDE:W:E`` leaves a
cell out (say why in the record). The JSON is rewritten after every measurement, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import header

SIDES = ("before", "after")


def run(
    argv: list[str], src: Path, work: Path, log: Path
) -> tuple[int, float, int]:  # (return code, wall seconds, peak RSS KiB)
    env = {**os.environ, "PYTHONPATH": str(src), "MNEMETA_CACHE": str(work / "cache")}
    with log.open("w") as out:
        start = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=work)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return child.returncode, wall, int(usage.ru_maxrss)  # KiB on Linux


def mnemeta(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnemeta", *args]


def commit_of(src: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def checkpoint(ways: int, before: Path, data: Path, work: Path) -> Path:
    """A ProtoNet checkpoint trained for 20 steps by the ``before`` tree (so both can load it)."""
    run_dir = work / f"protonet_omniglot_{ways}w1s"
    if not (run_dir / "checkpoint.pt").is_file():
        argv = mnemeta(
            "train",
            f"protonet_omniglot_{ways}w1s",
            "--data",
            str(data),
            "--set",
            "train.steps=20",
            "--set",
            "eval.episodes=10",
            "--out",
            str(run_dir),
        )
        code, wall, _ = run(argv, before, work, work / f"train_{ways}w.log")
        if code:
            sys.exit(f"training the {ways}-way checkpoint failed; see {work}/train_{ways}w.log")
        print(f"trained the {ways}-way checkpoint in {wall:.0f} s", flush=True)
    return run_dir / "checkpoint.pt"


def evaluate(
    side: str, src: Path, ck: Path, ways: int, episodes: int, data: Path, work: Path
) -> dict[str, Any]:
    name = f"{side}_{ways}w_{episodes}"
    out = work / f"eval_{name}.json"
    argv = mnemeta("evaluate", str(ck), "--data", str(data), "--ways", str(ways))
    argv += ["--shots", "1", "--episodes", str(episodes), "--out", str(out)]
    load = os.getloadavg()[0]
    code, wall, rss = run(argv, src, work, work / f"eval_{name}.log")
    if code:
        sys.exit(f"{side} evaluate {ways}-way {episodes} failed; see {work}/eval_{name}.log")
    result = json.loads(out.read_text())
    return {
        "side": side,
        "ways": ways,
        "episodes": episodes,
        "peak_rss_mib": round(rss / 1024, 1),
        "wall_s": round(wall, 1),
        "mean": result["mean"],
        "ci95": result["ci95"],
        "load_average_1min_before": round(load, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="src/ folder of the old checkout")
    ap.add_argument("--after", type=Path, required=True, help="src/ folder of the new checkout")
    ap.add_argument("--data", type=Path, required=True, help="Omniglot folder (zips or folders)")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder: runs, cache, logs")
    ap.add_argument("--ways", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--episodes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--skip", action="append", default=[], help="SIDE:WAYS:EPISODES, repeatable")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    before, after = args.before.resolve(), args.after.resolve()
    srcs = {"before": before, "after": after}
    data, work = args.data.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        **header(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "before": {"src": str(before), "commit": commit_of(before)},
        "after": {"src": str(after), "commit": commit_of(after)},
        "checkpoints": "protonet_omniglot_{W}w1s, train.steps=20 (quality irrelevant)",
        "skipped": args.skip,
        "runs": [],
        "same_accuracy": {},
    }

    def save() -> None:
        args.out.write_text(json.dumps(record, indent=2) + "\n")

    cks = {ways: checkpoint(ways, before, data, work) for ways in args.ways}
    warmup = mnemeta("evaluate", str(cks[args.ways[0]]), "--data", str(data), "--episodes", "1")
    warmup += ["--ways", str(args.ways[0]), "--out", str(work / "warmup.json")]
    for side in SIDES:  # fill the decoded-image cache (and the OS file cache) before timing
        code, _, _ = run(warmup, srcs[side], work, work / f"warmup_{side}.log")
        if code:
            sys.exit(f"warm-up with the {side} tree failed; see {work}/warmup_{side}.log")
    cell = 0
    for episodes in sorted(args.episodes):
        for ways in args.ways:
            order = SIDES if cell % 2 == 0 else SIDES[::-1]
            cell += 1
            rows = {}
            for side in order:
                if f"{side}:{ways}:{episodes}" in args.skip:
                    print(f"{side} {ways}-way {episodes} episodes: skipped", flush=True)
                    continue
                row = evaluate(side, srcs[side], cks[ways], ways, episodes, data, work)
                rows[side] = row
                record["runs"].append(row)
                save()
                print(
                    f"{side:6s} {ways:2d}-way {episodes:5d} episodes: {row['peak_rss_mib']:7.0f} "
                    f"MiB peak, {row['wall_s']:6.0f} s, {row['mean']:.2f} ± {row['ci95']:.2f} %",
                    flush=True,
                )
            if len(rows) == 2:
                same = (rows["before"]["mean"], rows["before"]["ci95"]) == (
                    rows["after"]["mean"],
                    rows["after"]["ci95"],
                )
                record["same_accuracy"][f"{ways}w_{episodes}"] = same
                save()
    save()
    print(f"written to {args.out}")
    return 0 if all(record["same_accuracy"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
