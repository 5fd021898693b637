"""Ctrl-C and ``kill`` checkpoint the step they interrupt, and the run resumes exactly.

A real signal is sent to a training subprocess (as a shell's Ctrl-C or a scheduler's
preemption would), long before its first periodic checkpoint: the run must finish its step,
write a checkpoint, exit 130 (SIGINT) or 143 (SIGTERM) with the command that continues it, and
that command, run with the preset forgotten, must log row for row what an uninterrupted run
logs and end with the same weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import mnemeta
from mnemeta.checkpoint import load_checkpoint
from mnemeta.cli import main
from mnemeta.recipes.interrupt import StopRequests

sys.path.insert(0, str(Path(__file__).parent))
from tiny_runs import EPISODIC

#: No periodic checkpoint before the end: whatever checkpoint exists was written by the signal.
SETTINGS = [s for s in EPISODIC if not s.startswith("train.checkpoint_every")] + [
    "train.checkpoint_every=100000"
]
END = 40


def _args(out: Path, steps: int) -> list[str]:
    args = ["train", "demo_glyphs_protonet", "--out", str(out), "--no-progress", "--device", "cpu"]
    for item in [*SETTINGS, f"train.steps={steps}"]:
        args += ["--set", item]
    return args


def _env() -> dict[str, str]:
    """One environment for every run a test compares: the same thread count in each process,
    so that floating-point reductions happen in the same order (bit-identical losses)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(mnemeta.__file__).parents[1]), *sys.path])
    return env


def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess with :func:`_env`."""
    cmd = [sys.executable, "-m", "mnemeta.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


def _interrupt(out: Path, sig: int, after_step: int = 8) -> tuple[int, str]:
    """Start a run of many steps in a subprocess, send ``sig`` once it has logged
    ``after_step``, and return its exit code and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnemeta.cli", *_args(out, 100_000)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith(f"step {after_step}/") or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_ctrl_c_checkpoints_and_the_resume_command_continues_the_run_exactly(
    tmp_path: Path,
) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert _cli(_args(whole, END)).returncode == 0
    code, err = _interrupt(split, signal.SIGINT)
    assert code == 130, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error: SIGINT: stopped after step ")
    assert last.endswith(f"continue with: mnemeta train --resume {split}")
    stopped = load_checkpoint(split / "checkpoint.pt")["step"]
    assert 8 <= stopped < END
    # The printed command, with the new step budget (a safe change): no preset, no --set of
    # the run's own settings; the checkpoint holds them.
    resumed = _cli(["train", "--resume", str(split), "--set", f"train.steps={END}"])
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(split) == _rows(whole)
    a, b = load_checkpoint(whole / "checkpoint.pt"), load_checkpoint(split / "checkpoint.pt")
    assert a["step"] == b["step"] == END
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert (
        json.loads((split / "result.json").read_text())["test"]
        == json.loads((whole / "result.json").read_text())["test"]
    )


def test_sigterm_checkpoints_and_exits_143(tmp_path: Path) -> None:
    code, err = _interrupt(tmp_path / "run", signal.SIGTERM, after_step=3)
    assert code == 143, err
    assert "error: SIGTERM: stopped after step" in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] >= 3


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_the_first_signal_asks_to_stop_and_the_second_aborts() -> None:
    with StopRequests() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    # and the previous handlers are back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_refuses_a_change_of_what_is_trained_and_accepts_the_same_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(_args(run, 4)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set train.lr would change what the resumed run trains")
    assert len(err.strip().splitlines()) == 1
    # the run's own value is no change; more steps and another time budget are safe
    resumed = ["train", "--resume", str(run), "--set", "train.lr=0.001", "--set", "train.steps=6"]
    assert main(resumed) == 0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6


def test_resume_keeps_the_runs_step_budget_not_the_presets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    # A run of 9 steps stopped after its first by its time budget: its checkpoint says 9, so a
    # plain --resume must continue to 9, not to the preset's 500.
    assert main([*_args(run, 9), "--set", "train.max_minutes=1e-9"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 1
    capsys.readouterr()
    args = ["train", "demo_glyphs_protonet", "--out", str(run), "--resume", "--no-progress"]
    assert main([*args, "--set", "train.max_minutes=0"]) == 0
    out, err = capsys.readouterr()
    assert "at step 1 of 9" in out and "step 9/9" in out and "/500" not in out + err


def test_a_run_stopped_during_its_final_evaluation_resumes_to_evaluate(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(_args(run, 3)) == 0
    first = json.loads((run / "result.json").read_text())["test"]
    (run / "result.json").unlink()  # as if killed while evaluating, after the last checkpoint
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "result.json").read_text())["test"] == first
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
