"""Meta-training on 2 processes (gloo, CPU) equals one process over the same tasks.

Two ranks are spawned the way torchrun starts them (its environment variables; the recipes join
the process group themselves) and train ProtoNet, MAML (second order), Reptile and the MANN; the
same runs in this process, with no process group, are the reference. In float64 the loss trace,
the validation accuracies (episodes sharded over the ranks and gathered) and the final weights
agree to rounding: the ranks' gradients are summed in another order, nothing else differs.
Runs stopped and resumed under 2 ranks give the uninterrupted trace, a rank that dies makes the
other stop with a one-line error instead of hanging, and ranks on one host write back to one
task memory.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mnemeta.checkpoint import load_checkpoint
from mnemeta.recipes.distributed import SINGLE, Ranks

sys.path.insert(0, str(Path(__file__).parent))
from dist_workers import RL_RUNS, RL_STEPS, RUNS, STEPS, rank_main, train

#: float64 runs whose only difference is the order of two-term sums.
RTOL, ATOL = 1e-9, 1e-12
#: Accuracies are counted in float32 by the learners (``accuracy``: a mean of 0/1 floats), so a
#: mean over 4 tasks and the mean of two means over 2 differ in float32's last place.
ACCURACY_RTOL = 1e-6
CONV_BIAS_ATOL = 1e-8


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def spawn_ranks(
    root: Path,
    scenario: str,
    *,
    timeout: float,
    grace: float = 60.0,
    env: dict[str, str] | None = None,
) -> tuple[list[int | None], float]:
    """Start 2 ranks of ``scenario`` and wait for them (killed after ``timeout`` seconds, and
    rank 1 ``grace`` seconds after rank 0: a test never hangs); returns their exit codes and the
    seconds rank 0 took."""

    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        context = multiprocessing.get_context("spawn")
        ports = free_ports(16)
        procs = [
            context.Process(target=rank_main, args=(r, 2, ports, str(root), scenario))
            for r in range(2)
        ]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        procs[0].join(timeout)
        seconds = time.perf_counter() - t0  # until rank 0 is done
        for p in procs[1:]:  # a hung rank is not waited for once rank 0 has given up on it
            p.join(max(1.0, min(grace, timeout - seconds)))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        return [p.exitcode for p in procs], seconds
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def errors(root: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(root.glob("error*.txt")))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two_ranks")
    codes, _ = spawn_ranks(root, "train", timeout=240)
    assert codes == [0, 0], errors(root)
    return root


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The reference: each run in this process, float64, no process group."""
    root = tmp_path_factory.mktemp("one_rank")
    before, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        for name in ("protonet", "maml", "reptile", "mann", "mann_nowipe"):
            train(name, root / name)
        for name in RL_RUNS:
            train(name, root / name, steps=RL_STEPS)
        yield root
    finally:
        torch.set_default_dtype(before)
        torch.set_num_threads(threads)


def rows(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]


def assert_same_run(two: Path, one: Path) -> None:
    a, b = rows(two), rows(one)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            rtol = ACCURACY_RTOL if "accuracy" in k else RTOL
            assert ra[k] == pytest.approx(rb[k], rel=rtol, abs=ATOL), (ra["step"], k)
    wa, wb = load_checkpoint(two / "checkpoint.pt"), load_checkpoint(one / "checkpoint.pt")
    assert wa["step"] == wb["step"] == STEPS
    for k, v in wb["model"].items():
        assert wa["model"][k].dtype == torch.float64
        # A convolution's bias before batch norm has a true gradient of 0 (the norm subtracts
        # it): its computed gradient is rounding noise, which Adam scales up to full steps.
        atol = CONV_BIAS_ATOL if k.endswith("conv.bias") else ATOL
        torch.testing.assert_close(wa["model"][k], v, rtol=RTOL, atol=atol, msg=k)


@pytest.mark.parametrize("name", ["protonet", "maml", "reptile", "mann"])
def test_two_ranks_equal_one(two_ranks: Path, one_rank: Path, name: str) -> None:
    assert_same_run(two_ranks / name, one_rank / name)
    result = json.loads((two_ranks / name / "result.json").read_text())
    assert result["world_size"] == 2
    if name != "mann":  # the episodic test episodes are sharded and gathered: same mean ± CI
        reference = json.loads((one_rank / name / "result.json").read_text())
        assert result["test"]["mean"] == pytest.approx(reference["test"]["mean"], rel=RTOL)
        assert result["test"]["ci95"] == pytest.approx(reference["test"]["ci95"], rel=RTOL)


def test_the_tested_runs_use_both_ranks() -> None:
    """The comparisons above split real work: MAML 2 + 2 tasks, Reptile 2 + 1, the MANN 2 + 2
    sequences (ProtoNet's single episode goes to rank 0)."""
    for name, (_, settings) in RUNS.items():
        batch = int(next(s for s in settings if s.startswith("train.meta_batch=")).split("=")[1])
        shares = [Ranks(rank=r, world_size=2).shard(batch) for r in range(2)]
        assert shares[0][0] == 0 and shares[1][1] == batch and shares[0][1] == shares[1][0]
        assert (name == "protonet") == (shares[1][0] == shares[1][1]), name


@pytest.mark.parametrize("name", ["mann_nowipe", "maml"])
def test_resume_under_two_ranks_gives_the_uninterrupted_run(
    two_ranks: Path, one_rank: Path, name: str
) -> None:
    """Stopped at step 2 and resumed to 4 under 2 ranks: MAML's sampler, optimiser and sharded
    validation, and the no-wipe MANN's memory carried over from every rank's sequences."""
    resumed = two_ranks / ("maml_resumed" if name == "maml" else name)
    assert json.loads((resumed / "result.json").read_text())["resumed_from_step"] == 2
    assert_same_run(resumed, one_rank / name)


def test_weighted_sum_is_the_mean_over_all_tasks(two_ranks: Path) -> None:
    for rank in range(2):
        value = json.loads((two_ranks / f"weighted_sum{rank}.json").read_text())
        assert value == pytest.approx(2.0, rel=1e-12)  # (1 + 1 + 4) / 3


def test_a_two_rank_checkpoint_resumes_in_one_process(two_ranks: Path, one_rank: Path) -> None:
    """A run's state does not depend on the world size: stopped under 2 ranks, continued by
    one process, it is still the uninterrupted run."""
    run = two_ranks / "maml_at_stop"
    (run / ".mnemeta.lock").unlink(missing_ok=True)
    before, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        train("maml", run, steps=STEPS, resume=True)
    finally:
        torch.set_default_dtype(before)
        torch.set_num_threads(threads)
    assert_same_run(run, one_rank / "maml")


def test_ranks_on_one_host_write_back_to_one_task_memory(two_ranks: Path) -> None:
    everything = sorted([r, t] for r in range(2) for t in range(5))
    for rank in range(2):
        assert json.loads((two_ranks / f"memory_seen{rank}.json").read_text()) == everything
    # The way for ranks on several machines: gather the records, rank 0 writes them.
    gathered = json.loads((two_ranks / "memory_gathered.json").read_text())
    assert gathered == sorted([r, t] for r in range(2) for t in range(3))


@pytest.mark.parametrize("how", ["die", "hang"])
def test_a_dead_or_hung_rank_stops_the_other_with_a_clear_error(tmp_path: Path, how: str) -> None:
    """Dead: its connection closes and rank 0 stops at once. Hung: rank 0 gives up when the
    collective's timeout (``MNEMETA_DIST_TIMEOUT``, 3 s here) runs out."""
    codes, seconds = spawn_ranks(
        tmp_path, how, timeout=90, grace=1, env={"MNEMETA_DIST_TIMEOUT": "3"}
    )
    assert codes[0] == 1, "rank 0 should have stopped with an error"
    if how == "die":
        assert codes[1] == 3
    report = json.loads((tmp_path / "error0.txt").read_text().splitlines()[0])
    assert report["type"] == "DistributedError"
    assert "\n" not in report["message"]
    assert report["message"].startswith("rank 0 of 2: the all-reduce of a step's gradients")
    assert "another rank died" in report["message"] and "MNEMETA_DIST_TIMEOUT" in report["message"]
    assert seconds < 60


def test_one_process_has_no_process_group() -> None:
    assert SINGLE.shard(7) == (0, 7) and not SINGLE.active and SINGLE.is_main
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(("n", "world"), [(1, 2), (3, 2), (4, 2), (5, 3), (2, 4)])
def test_shards_cover_the_batch_in_order(n: int, world: int) -> None:
    shares = [Ranks(rank=r, world_size=world).shard(n) for r in range(world)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))
    sizes = [hi - lo for lo, hi in shares]
    assert max(sizes) - min(sizes) <= 1


def _rl_differences(two: Path, one: Path) -> dict[str, float]:
    """The largest relative difference of the metrics, the weights and the held-out stages."""
    worst: dict[str, float] = {"metrics": 0.0, "weights": 0.0, "test": 0.0}
    a, b = rows(two), rows(one)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, RL_STEPS + 1))
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            if k in ("step", "tasks"):
                assert ra[k] == rb[k]
            else:
                worst["metrics"] = max(worst["metrics"], abs(ra[k] - rb[k]) / max(abs(rb[k]), 1e-3))
    wa, wb = load_checkpoint(two / "checkpoint.pt"), load_checkpoint(one / "checkpoint.pt")
    assert wa["step"] == wb["step"] == RL_STEPS
    for k, v in wb["model"].items():
        assert wa["model"][k].dtype == v.dtype
        if v.is_floating_point():
            gap = float((wa["model"][k] - v).abs().max()) / max(float(v.abs().max()), 1e-3)
            worst["weights"] = max(worst["weights"], gap)
        else:
            assert torch.equal(wa["model"][k], v), k
    ta = json.loads((two / "result.json").read_text())["test"]["stages"]
    tb = json.loads((one / "result.json").read_text())["test"]["stages"]
    assert ta.keys() == tb.keys()
    for stage in tb:
        for k in ("mean", "ci95"):
            gap = abs(ta[stage][k] - tb[stage][k]) / max(abs(tb[stage][k]), 1e-3)
            worst["test"] = max(worst["test"], gap)
    return worst


#: Meta-RL over 2 ranks sums the same float64 terms in another order. RL²'s PPO keeps that at
#: rounding (8e-15 measured); TRPO's conjugate gradient on a near-singular Fisher (damping 1e-5)
#: amplifies it: scaling every sum by (1 + 1e-15) in one process moves the second iteration's KL
#: by ~1e-5 (tests/rl/test_shard.py), and 2 ranks differ from 1 by 2.4e-6 after three iterations
#: (measured). A wrong weight or denominator is off by percents.
RL_RTOL = {"maml_rl": 1e-4, "rl2": 1e-9}


@pytest.mark.parametrize("name", list(RL_RUNS))
def test_meta_rl_on_two_ranks_equals_one(two_ranks: Path, one_rank: Path, name: str) -> None:
    """MAML-RL (TRPO, second order) and RL² (PPO): 5 tasks split 3 + 2, the held-out 5 tasks
    split and gathered; the same metrics, weights and held-out mean ± CI as one process."""
    worst = _rl_differences(two_ranks / name, one_rank / name)
    assert max(worst.values()) < RL_RTOL[name], worst
    assert json.loads((two_ranks / name / "result.json").read_text())["world_size"] == 2


def test_meta_rl_resumed_under_two_ranks_is_the_uninterrupted_run(
    two_ranks: Path, one_rank: Path
) -> None:
    run = two_ranks / "maml_rl_resumed"
    assert json.loads((run / "result.json").read_text())["resumed_from_step"] == 1
    worst = _rl_differences(run, one_rank / "maml_rl")
    assert max(worst.values()) < RL_RTOL["maml_rl"], worst


def test_evaluating_a_checkpoint_on_two_ranks_is_one_processs_evaluation(
    two_ranks: Path, tmp_path: Path
) -> None:
    """`mnemeta evaluate` under torchrun: 7 episodes (4 + 3) of a MAML checkpoint and 3 held-out
    tasks (2 + 1) of an RL² one, gathered; rank 0 wrote the same result one process writes."""
    from mnemeta.recipes.evaluate_checkpoint import evaluate_checkpoint
    from mnemeta.recipes.rl_evaluate import evaluate_rl_checkpoint

    before, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        evaluate_checkpoint(str(two_ranks / "maml"), episodes=7, out=str(tmp_path / "maml.json"))
        evaluate_rl_checkpoint(str(two_ranks / "rl2"), tasks=3, out=str(tmp_path / "rl2.json"))
    finally:
        torch.set_default_dtype(before)
        torch.set_num_threads(threads)
    maml = json.loads((two_ranks / "evaluate_maml.json").read_text())
    alone = json.loads((tmp_path / "maml.json").read_text())
    assert maml["episodes"] == alone["episodes"] == 7
    assert maml["mean"] == pytest.approx(alone["mean"], rel=ACCURACY_RTOL)
    assert maml["ci95"] == pytest.approx(alone["ci95"], rel=ACCURACY_RTOL)
    rl2 = json.loads((two_ranks / "evaluate_rl2.json").read_text())
    assert rl2["tasks"] == 3
    assert rl2["stages"] == json.loads((tmp_path / "rl2.json").read_text())["stages"]
