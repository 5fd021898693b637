"""Resume after kill -9, measured: a run killed again and again (many kills mid-checkpoint-write)
and resumed each time ends exactly where an uninterrupted run ends.

    python benchmarks/resume_kill9.py [--steps 150] [--kills 12] [--seed 0] \
        [--out benchmarks/results/resume_kill9.json]

1. The reference: ``mnemeta train demo_glyphs_protonet`` for ``--steps`` steps in one go
   (a checkpoint every step, a metrics row every step, a small Conv-4, on the CPU, one thread).
2. The same run started in a fresh folder and SIGKILLed ``--kills`` times, each time after a
   random delay past the point where the previous process began training (so kills land in
   steps, in metrics appends and, with a checkpoint every step, often inside a checkpoint
   write: counted by the temporary file such a kill leaves). After each kill the run goes on
   with ``mnemeta train --resume RUN`` (a kill before the first checkpoint has nothing to
   resume: then the run restarts with ``--overwrite``); after the last kill it runs to its end.
3. Reported: whether every metrics row (loss, accuracy, learning rate, validation results;
   not the wall-clock ``seconds``) and every weight of the final checkpoint equal the
   reference's bit for bit, the final test result of both, how many kills hit a checkpoint
   write, whether any temporary file or lock was left after the resumes, and whether every
   resume was accepted (the lock of a killed process is stale and must be taken over).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import header

SETTINGS = [
    "backbone.hidden=16",
    "train.ways=5",
    "train.queries=5",
    "train.log_every=1",
    "train.checkpoint_every=1",
    "train.eval_every=25",
    "eval.episodes=100",
    "eval.val_episodes=20",
]


def run(
    args: list[str],
    env: dict[str, str],
    *,
    kill_after: float | None = None,
    mid_write: Path | None = None,
) -> tuple[int, float]:
    """Run the CLI; with ``kill_after``, SIGKILL it that many seconds after it starts to train;
    with ``mid_write`` as well, at the first moment after that when a checkpoint's temporary
    file exists in the folder ``mid_write`` (a kill inside ``torch.save``'s write or its fsync).
    Returns the exit code and the seconds it trained before the kill."""
    cmd = [sys.executable, "-m", "mnemeta.cli", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    if kill_after is None:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {err.strip().splitlines()[-1:]}")
        return 0, 0.0
    for line in proc.stdout:  # the first step line: training has begun
        if line.startswith("step "):
            break
    start = time.monotonic()
    time.sleep(kill_after)
    while mid_write is not None and proc.poll() is None and time.monotonic() - start < 60:
        if any(mid_write.glob(".checkpoint.pt.*.tmp")):
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return proc.returncode, time.monotonic() - start


def rows(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-delay", type=float, default=2.0, help="most seconds after training starts"
    )
    parser.add_argument("--out", default="benchmarks/results/resume_kill9.json")
    a = parser.parse_args()
    rng = random.Random(a.seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    scratch = Path(tempfile.mkdtemp(prefix="mnemeta-kill9-"))
    reference, killed = scratch / "reference", scratch / "killed"
    base = ["demo_glyphs_protonet", "--no-progress", "--device", "cpu"]
    settings = [x for s in [*SETTINGS, f"train.steps={a.steps}"] for x in ("--set", s)]

    t0 = time.perf_counter()
    run(["train", *base, "--out", str(reference), *settings], env)
    t_reference = time.perf_counter() - t0

    kills: list[dict[str, Any]] = []

    def next_args() -> list[str]:
        if (killed / "checkpoint.pt").is_file():
            return ["train", "--resume", str(killed), "--no-progress"]
        fresh = ["train", *base, "--out", str(killed), *settings]
        return [*fresh, "--overwrite"] if killed.exists() else fresh

    for i in range(a.kills):
        if (killed / "result.json").is_file():
            print("the run finished before this kill; no more kills")
            break
        has_checkpoint = (killed / "checkpoint.pt").is_file()
        delay = rng.uniform(0.05, a.max_delay)
        # Every other kill waits for a checkpoint write to be under way.
        target = killed if i % 2 == 1 else None
        code, _ = run(next_args(), env, kill_after=delay, mid_write=target)
        temps = sorted(p.name for p in killed.glob(".*.tmp")) if killed.exists() else []
        step = (
            int(torch.load(killed / "checkpoint.pt", weights_only=True)["step"])
            if (killed / "checkpoint.pt").is_file()
            else None
        )
        kills.append(
            {
                "delay_s": round(delay, 3),
                "aimed_at_a_checkpoint_write": target is not None,
                "exit_code": code,
                "mid_checkpoint_write": any(t.startswith(".checkpoint.pt.") for t in temps),
                "temp_files_left": temps,
                "checkpoint_step_after": step,
                "resumed": has_checkpoint,
            }
        )
        print(f"kill {i + 1}: after {delay:.2f} s, checkpoint at step {step}, temp files {temps}")
    if not (killed / "result.json").is_file():
        run(next_args(), env)  # to the end (or, killed while evaluating, the evaluation)

    same_rows = rows(killed) == rows(reference)
    ref_ck = torch.load(reference / "checkpoint.pt", weights_only=True)
    got_ck = torch.load(killed / "checkpoint.pt", weights_only=True)
    same_weights = all(torch.equal(v, got_ck["model"][k]) for k, v in ref_ck["model"].items())
    leftovers = sorted(p.name for p in killed.iterdir() if p.name.startswith("."))
    test_ref = json.loads((reference / "result.json").read_text())["test"]
    test_got = json.loads((killed / "result.json").read_text())["test"]
    result = {
        **header(),
        "steps": a.steps,
        "settings": SETTINGS,
        "kills": kills,
        "kills_mid_checkpoint_write": sum(k["mid_checkpoint_write"] for k in kills),
        "metrics_rows": len(rows(reference)),
        "metrics_rows_identical": same_rows,
        "final_weights_identical": same_weights,
        "final_step": int(got_ck["step"]),
        "test_reference": test_ref,
        "test_killed_and_resumed": test_got,
        "hidden_files_left_in_run_folder": leftovers,
        "seconds_reference_run": round(t_reference, 1),
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{len(kills)} kills ({result['kills_mid_checkpoint_write']} mid checkpoint write): "
        f"metrics rows identical {same_rows}, final weights identical {same_weights}, "
        f"leftover hidden files {leftovers}; written to {a.out}"
    )


if __name__ == "__main__":
    main()
