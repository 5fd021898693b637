"""Loss traces of every preset: proof that a restructuring kept behaviour.

Runs every preset for its first ``--steps`` training steps on the CPU (one thread, so that
floating-point reductions happen in one fixed order), through the CLI as a user would, and
records every logged value of every step (loss, accuracy or bits wrong, learning rate) and the
tiny final evaluation. Run it on the commit before a change and after it, then compare:

    python benchmarks/loss_traces.py --data DIR --out benchmarks/results/loss_traces_before.json
    python benchmarks/loss_traces.py --data DIR --out benchmarks/results/loss_traces_after.json
    python benchmarks/loss_traces.py --compare benchmarks/results/loss_traces_before.json \
        benchmarks/results/loss_traces_after.json

Only keys that exist in every version of the config are set (``train.steps``, logging,
evaluation, data location), so the same command runs on old and new commits. With
``train.steps`` lowered, a linear schedule (Reptile) anneals over those steps: the trace is
that of a short run of the preset's configuration, identical on both sides. ``--data`` is a
folder with Omniglot's official zips or folders, or the compact .npz copy (on an old commit, whose
loader reads only the official forms, ``materialize.py DIR --zip`` writes them);
the sinusoid recipe (the demo) is traced too, by its result table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import header

# Values that differ between two identical runs (wall-clock) are not part of a trace.
UNTRACED = ("seconds",)


def presets(python: str) -> list[str]:
    code = "from mnemeta.config import preset_names; print('\\n'.join(preset_names()))"
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    return out.stdout.split()


def trace_preset(
    python: str, name: str, steps: int, data: str, scratch: Path, env: dict[str, str]
) -> dict[str, Any]:
    out = scratch / name
    argv = [
        python,
        "-m",
        "mnemeta.cli",
        "train",
        name,
        "--device",
        "cpu",
        "--out",
        str(out),
        "--data",
        data,
        "--no-progress",
        "--set",
        f"train.steps={steps}",
        "--set",
        "train.log_every=1",
        "--set",
        "train.eval_every=0",
        "--set",
        f"train.checkpoint_every={steps}",
        "--set",
        "eval.episodes=20",
        "--set",
        "eval.batch_size=10",
        "--set",
        f"data.cache_dir={scratch / 'cache'}",
    ]
    t0 = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        return {"error": (run.stderr or run.stdout).strip().splitlines()[-1:], "seconds": seconds}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trace = [{k: v for k, v in row.items() if k not in UNTRACED} for row in rows]
    result = json.loads((out / "result.json").read_text())
    test = result.get("test") or {k: v for k, v in result.items() if k not in ("seconds",)}
    return {"trace": trace, "test": _without_times(test), "seconds": round(seconds, 1)}


def trace_sinusoid(python: str, steps: int, scratch: Path, env: dict[str, str]) -> dict[str, Any]:
    out = scratch / "sinusoid"
    argv = [python, "-m", "mnemeta.cli", "demo", "--steps", str(steps), "--out", str(out)]
    argv.append("--no-progress")
    t0 = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        return {"error": (run.stderr or run.stdout).strip().splitlines()[-1:], "seconds": seconds}
    result = json.loads((out / "result.json").read_text())
    return {
        "trace": result["results"],
        "test": {"baseline_validation_mse": result["baseline_validation_mse"]},
        "seconds": round(seconds, 1),
    }


def _without_times(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _without_times(v) for k, v in d.items() if k not in UNTRACED}
    return d


def compare(before_path: str, after_path: str) -> int:
    before = json.loads(Path(before_path).read_text())
    after = json.loads(Path(after_path).read_text())
    names = sorted(set(before["runs"]) | set(after["runs"]))
    identical = 0
    for name in names:
        a, b = before["runs"].get(name), after["runs"].get(name)
        if a is None or b is None:
            print(f"{name:34s} only in {'after' if a is None else 'before'}")
            continue
        if "error" in a or "error" in b:
            print(f"{name:34s} error: before {a.get('error')} / after {b.get('error')}")
            continue
        if a["trace"] == b["trace"] and a["test"] == b["test"]:
            identical += 1
            print(f"{name:34s} bit-identical ({len(a['trace'])} logged rows, test result)")
            continue
        print(f"{name:34s} DIFFERS: {_first_difference(a, b)}")
    print(f"{identical} of {len(names)} bit-identical")
    return 0 if identical == len(names) else 1


def merge(paths: list[str], out: str) -> int:
    """One file of the runs of several (each keeps the command, commit and date it ran with)."""
    runs: dict[str, Any] = {}
    for path in paths:
        part = json.loads(Path(path).read_text())
        for name, run in part["runs"].items():
            keep = ("command", "commit", "date", "machine", "torch")
            runs[name] = {**run, **{k: part[k] for k in keep}}
    Path(out).write_text(json.dumps({**header(), "runs": runs}, indent=1) + "\n")
    return 0


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    for i, (ra, rb) in enumerate(zip(a["trace"], b["trace"], strict=False)):
        if ra != rb:
            keys = sorted(set(ra) | set(rb))
            diffs = {k: (ra.get(k), rb.get(k)) for k in keys if ra.get(k) != rb.get(k)}
            return f"row {i}: {diffs}"
    if len(a["trace"]) != len(b["trace"]):
        return f"{len(a['trace'])} vs {len(b['trace'])} rows"
    return f"test result {a['test']} vs {b['test']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="Omniglot folder (official zips or folders)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--presets", nargs="*", help="default: every preset, and the sinusoid")
    parser.add_argument("--python", default=sys.executable, help="the Python with mnemeta")
    parser.add_argument("--out", help="write the traces here (JSON)")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument(
        "--merge", nargs="+", metavar="TRACES", help="join trace files (one preset each) into --out"
    )
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.merge:
        return merge(args.merge, args.out)
    if not args.data or not args.out:
        parser.error("--data and --out are needed to record traces")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    names = args.presets or [*presets(args.python), "sinusoid"]
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mnemeta-traces-") as tmp:
        scratch = Path(tmp)
        for name in names:
            if name == "sinusoid":
                runs[name] = trace_sinusoid(args.python, args.steps, scratch, env)
            else:
                runs[name] = trace_preset(args.python, name, args.steps, args.data, scratch, env)
            status = runs[name].get("error") or f"{len(runs[name]['trace'])} rows"
            print(f"{name:34s} {runs[name]['seconds']:7.1f} s  {status}", flush=True)
            record = {**header(), "commit": commit, "steps": args.steps, "threads": 1}
            Path(args.out).write_text(json.dumps({**record, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
