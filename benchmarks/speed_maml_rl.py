"""MAML-RL speed on 2D navigation: mnemeta beside learn2learn's ``examples/rl/maml_trpo.py``.

Issue 14's "Speed" bullet. The same task in both arms: goals uniform on [-0.5, 0.5]², horizon
100, 20 tasks x 20 trajectories per task, a 2 x 100 ReLU Gaussian policy, one VPG inner step
(α = 0.1), a TRPO outer step (δ = 0.01, 10 CG iterations, 15 backtracks of 0.5). Two figures
per arm:

(a) environment steps per second of the sampling pipeline (20 x 20 trajectories of 100 steps
    with the policy, no learning);
(b) seconds per meta-iteration (sampling before and after the inner step, the inner step, the
    TRPO outer step).

The mnemeta arm runs in this process (``mnemeta.rl.rollout`` steps every task and trajectory
as one tensor op; ``maml_rl.meta_step`` is a whole iteration), with a per-task Python loop over
the same env as an internal baseline for (a). The learn2learn arm is
``l2l_maml_trpo_harness.py`` run as a subprocess with learn2learn's own interpreter, on an
unmodified copy of the example. The arms alternate, ``--repeats`` times; ratios are taken
within a repeat (mnemeta / learn2learn, for (a) throughput, for (b) time).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speed_maml_rl.py --repeats 3 \
        --iterations 2 --l2l-python /work/l2l-venv/bin/python --example-dir /tmp/l2l_example \
        --out benchmarks/results/speed_maml_rl.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import header
from mnemeta.algorithms.maml_rl import meta_step
from mnemeta.algorithms.meta_rl import iteration_generator
from mnemeta.rl import GaussianMLPPolicy, Navigation2D, rollout

HERE = Path(__file__).parent
TASKS, TRAJECTORIES, HORIZON = 20, 20, 100
GAMMA = 0.95  # the example's gamma (mnemeta's default is 0.99; it does not change the work)
MNEMETA_PASSES = 5  # a batched pass takes ~0.05 s: time several, report the median
ACTION_SCALE = 0.1  # cherry's ActionSpaceScaler maps [-1, 1] to the env's [-0.1, 0.1]


def mnemeta_rollout(passes: int, seed: int) -> dict:
    """(a) for mnemeta: batched, and a per-task loop of the same env (fresh env per task)."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2)
    params = {k: w.detach() for k, w in policy.params().items()}
    env = Navigation2D(TRAJECTORIES, horizon=HORIZON, action_scale=ACTION_SCALE)
    steps = TASKS * TRAJECTORIES * HORIZON
    rollout(policy, params, env, env.sample_tasks(TASKS, generator=iteration_generator(seed, 0)))
    batched, looped = [], []
    for p in range(passes):
        gen = iteration_generator(seed, p + 1)
        tasks = env.sample_tasks(TASKS, generator=gen)
        start = time.perf_counter()
        trajs = rollout(policy, params, env, tasks, generator=gen, discount=GAMMA)
        seconds = time.perf_counter() - start
        kept = int(trajs.mask.sum())
        batched.append(
            {"seconds": seconds, "steps_executed": steps, "steps_kept": kept,
             "steps_per_s_executed": steps / seconds, "steps_per_s_kept": kept / seconds}
        )  # fmt: skip
        start = time.perf_counter()
        kept = 0
        for i in range(TASKS):
            trajs = rollout(policy, params, env, tasks[i : i + 1], generator=gen, discount=GAMMA)
            kept += int(trajs.mask.sum())
        seconds = time.perf_counter() - start
        looped.append(
            {"seconds": seconds, "steps_executed": steps, "steps_kept": kept,
             "steps_per_s_executed": steps / seconds, "steps_per_s_kept": kept / seconds}
        )  # fmt: skip
    return {"batched": batched, "per_task_loop": looped}


def mnemeta_meta(iterations: int, seed: int, repeat: int) -> list[dict]:
    """(b) for mnemeta: ``iterations`` calls of ``meta_step`` from a fresh policy."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2)
    params = {k: w.detach().clone() for k, w in policy.params().items()}
    env = Navigation2D(TRAJECTORIES, horizon=HORIZON, action_scale=ACTION_SCALE)
    rows = []
    for it in range(iterations):
        start = time.perf_counter()
        params, m = meta_step(
            policy, params, env, seed=seed + repeat, iteration=it, meta_batch=TASKS,
            lr=0.1, max_kl=0.01, discount=GAMMA,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        rows.append({"seconds": seconds, "step_fraction": m.step_fraction, "kl": m.kl})
    return rows


def l2l_arm(args: argparse.Namespace, seed: int) -> dict:
    cmd = [
        args.l2l_python, str(HERE / "l2l_maml_trpo_harness.py"),
        "--example-dir", args.example_dir, "--iterations", str(args.iterations),
        "--rollouts", str(args.rollouts), "--seed", str(seed),
        "--num-workers", str(args.num_workers),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("L2L_RESULT ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"learn2learn arm failed (rc {done.returncode}): {' '.join(cmd)}")
    result = json.loads(lines[-1].removeprefix("L2L_RESULT "))
    result["process_wall_s"] = wall
    return result


def summarize(repeat: dict) -> dict:
    mb, ml = repeat["mnemeta"], repeat["learn2learn"]
    sps = statistics.median
    m_steps = sps(r["steps_per_s_executed"] for r in mb["rollout"]["batched"])
    m_loop = sps(r["steps_per_s_executed"] for r in mb["rollout"]["per_task_loop"])
    l_steps = sps(r["steps_per_s_executed"] for r in ml["rollout"])
    m_iter = sps(r["seconds"] for r in mb["meta"])
    l_iter = sps(r["seconds"] for r in ml["meta"])
    return {
        "steps_per_s": {"mnemeta_batched": m_steps, "mnemeta_per_task_loop": m_loop,
                        "learn2learn": l_steps},
        "steps_ratio_mnemeta_over_l2l": m_steps / l_steps,
        "steps_ratio_loop_over_l2l": m_loop / l_steps,
        "steps_ratio_batched_over_loop": m_steps / m_loop,
        "s_per_iteration": {"mnemeta": m_iter, "learn2learn": l_iter},
        "iteration_time_ratio_mnemeta_over_l2l": m_iter / l_iter,
        "l2l_surrogate_evaluations": [r["surrogate_evaluations"] for r in ml["meta"]],
        "mnemeta_step_fractions": [r["step_fraction"] for r in mb["meta"]],
    }  # fmt: skip


def _loadavg() -> str:
    """The machine's load (other engineers' jobs share its 2 cores)."""
    with open("/proc/loadavg") as f:
        return f.read().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2, help="meta-iterations per arm")
    parser.add_argument("--rollouts", type=int, default=1, help="timed sampling passes per arm")
    parser.add_argument("--num-workers", type=int, default=10, help="l2l vector env workers")
    parser.add_argument("--l2l-python", default="/work/l2l-venv/bin/python")
    parser.add_argument("--example-dir", default="/tmp/l2l_example")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "speed_maml_rl.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    record = header()
    record.update(
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        torch_threads=torch.get_num_threads(),
        workload={"tasks": TASKS, "trajectories": TRAJECTORIES, "horizon": HORIZON,
                  "gamma": GAMMA, "action_scale": ACTION_SCALE, "inner_lr": 0.1,
                  "max_kl": 0.01, "iterations_per_arm": args.iterations,
                  "rollout_passes_per_arm": args.rollouts, "l2l_num_workers": args.num_workers},
        repeats=[],
    )  # fmt: skip
    for r in range(args.repeats):
        seed = args.seed + r
        order = ["mnemeta", "learn2learn"] if r % 2 == 0 else ["learn2learn", "mnemeta"]
        rep: dict = {"repeat": r, "order": order, "started": time.strftime("%H:%M:%S")}
        rep["loadavg"] = _loadavg()
        for arm in order:
            if arm == "mnemeta":
                rep["mnemeta"] = {
                    "rollout": mnemeta_rollout(max(args.rollouts, MNEMETA_PASSES), seed),
                    "meta": mnemeta_meta(args.iterations, seed, r),
                }
            else:
                rep["learn2learn"] = l2l_arm(args, seed)
            print(f"repeat {r} {arm} done", flush=True)
        rep["loadavg_end"] = _loadavg()
        rep["summary"] = summarize(rep)
        print(json.dumps(rep["summary"]), flush=True)
        record["repeats"].append(rep)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    record["l2l_versions"] = record["repeats"][0]["learn2learn"]["versions"]
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
