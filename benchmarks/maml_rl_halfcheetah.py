"""MAML-RL on HalfCheetah-Vel / -Dir and Meta-World ML1 (Finn et al. 2017 §5.3), on a CPU budget.

Trains MAML-RL (one VPG inner step, TRPO outer step: ``mnemeta.algorithms.maml_rl.meta_step``)
for ``--budget-s`` seconds on one of the rl extra's task families, recording per iteration the
mean return before and after the inner step, then evaluates on ``--eval-tasks`` held-out tasks
(velocities / directions from a seed never used in training; for Meta-World, ML1's held-out
test goals): the return (and, for Meta-World, the success rate) before adaptation and after one
inner step, for the trained policy and for its random initialisation. It also measures the
rollout pipeline's environment steps per second (policy sampling + gymnasium stepping).

    OMP_NUM_THREADS=1 python benchmarks/maml_rl_halfcheetah.py --env halfcheetah_vel \\
        --budget-s 1500 --meta-batch 20 --k 10

Needs the rl extra (``pip install 'mnemeta[rl]'``).
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from common import header
from mnemeta.algorithms.maml_rl import adapt_and_evaluate, inner_step, meta_step
from mnemeta.rl import GaussianMLPPolicy, estimate_advantages, rollout
from mnemeta.stats import mean_ci95

RESULTS = Path(__file__).parent / "results"
PAPER = {"iterations": 500, "meta_batch": 40, "trajectories": 20, "horizon": 200}


def build(name: str, k: int, horizon: int) -> tuple[Any, Any]:
    """``(training env, held-out env)``: the held-out one draws from ML1's test goals for
    Meta-World; the locomotion families have no fixed test set (a fresh seed instead)."""
    if name == "metaworld_ml1":
        from mnemeta.rl.metaworld_ml1 import MetaWorldML1

        env = MetaWorldML1(k, horizon=horizon)
        return env, env.held_out()
    from mnemeta.rl.locomotion import HalfCheetahDir, HalfCheetahVel

    cls = HalfCheetahVel if name == "halfcheetah_vel" else HalfCheetahDir
    env = cls(k, horizon=horizon)
    return env, env


def throughput(policy: GaussianMLPPolicy, env: Any, meta_batch: int, seed: int) -> dict:
    """Env steps per second of one ``rollout`` of the meta-batch (policy + environments), and of
    the same steps with zero actions and no policy (the environments alone)."""
    gen = torch.Generator().manual_seed(seed)
    tasks = env.sample_tasks(meta_batch, generator=gen)
    rollout(policy, policy.params(), env, tasks, generator=gen)  # build the sub-environments
    steps = meta_batch * env.envs_per_task * env.horizon
    start = time.perf_counter()
    rollout(policy, policy.params(), env, tasks, generator=gen)
    with_policy = time.perf_counter() - start
    start = time.perf_counter()
    env.reset(tasks, generator=gen)
    zeros = torch.zeros(meta_batch, env.envs_per_task, env.action_size)
    for _ in range(env.horizon):
        env.step(zeros)
    env_only = time.perf_counter() - start
    return {
        "steps_per_rollout": steps,
        "rollout_steps_per_s": round(steps / with_policy),
        "env_only_steps_per_s": round(steps / env_only),
    }


def evaluate_with_success(
    policy: GaussianMLPPolicy,
    params: dict,
    env: Any,
    tasks: torch.Tensor,
    gen: torch.Generator,
    lr: float,
) -> dict[str, torch.Tensor]:
    """``adapt_and_evaluate``'s protocol, step by step, keeping ``env.success`` of the
    pre-update rollout and of each task's post-update rollout (the function returns returns
    only)."""
    params = {k: w.detach() for k, w in params.items()}
    pre = rollout(policy, params, env, tasks, generator=gen)
    pre_success = env.success.float().mean(dim=1)
    fast = inner_step(policy, params, pre, estimate_advantages(pre), lr=lr, first_order=True)
    after, after_success = [], []
    for i, f in enumerate(fast):
        post = rollout(
            policy, {k: w.detach() for k, w in f.items()}, env, tasks[i : i + 1], generator=gen
        )
        after.append(post.undiscounted_return().mean())
        after_success.append(env.success.float().mean())
    return {
        "before": pre.undiscounted_return().mean(dim=1),
        "after_1_step": torch.stack(after),
        "success_before": pre_success,
        "success_after_1_step": torch.stack(after_success),
    }


def summary(values: torch.Tensor) -> dict[str, float]:
    mean, ci = mean_ci95(values)
    return {"mean": round(mean, 3), "ci95": round(ci, 3)}


def plot(log: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    its = [r["iteration"] for r in log]
    ax.plot(its, [r["pre_return"] for r in log], label="before the inner step (θ)")
    ax.plot(its, [r["post_return"] for r in log], label="after 1 step (θ'_i)")
    ax.set(xlabel="meta-iteration", ylabel="mean undiscounted return", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--env",
        default="halfcheetah_vel",
        choices=("halfcheetah_vel", "halfcheetah_dir", "metaworld_ml1"),
    )
    ap.add_argument("--budget-s", type=float, default=1500.0, help="training budget (seconds)")
    ap.add_argument("--max-iterations", type=int, default=500, help="the paper's 500")
    ap.add_argument("--meta-batch", type=int, default=40, help="tasks per iteration (paper: 40)")
    ap.add_argument("--k", type=int, default=20, help="trajectories per task (paper: 20)")
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.1, help="inner step size α")
    ap.add_argument("--max-kl", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=999_331)
    ap.add_argument("--eval-tasks", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out or RESULTS / f"maml_rl_{args.env}.json")

    env, held_out = build(args.env, args.k, args.horizon)
    torch.manual_seed(args.seed)
    policy = GaussianMLPPolicy(env.observation_size, env.action_size, hidden=(100, 100))
    init = {k: w.detach().clone() for k, w in policy.params().items()}
    speed = throughput(policy, env, args.meta_batch, args.seed + 17)
    print("throughput", speed, flush=True)

    params, log, start = dict(init), [], time.perf_counter()
    while len(log) < args.max_iterations and time.perf_counter() - start < args.budget_s:
        it = len(log)
        params, m = meta_step(
            policy,
            params,
            env,
            seed=args.seed,
            iteration=it,
            meta_batch=args.meta_batch,
            lr=args.lr,
            max_kl=args.max_kl,
        )
        row = {"iteration": it, "seconds": round(time.perf_counter() - start, 2)}
        row.update({k: round(v, 5) for k, v in vars(m).items()})
        log.append(row)
        print(row, flush=True)
    train_s = time.perf_counter() - start
    trained_steps = len(log) * 2 * args.meta_batch * args.k * args.horizon

    eval_gen = torch.Generator().manual_seed(args.eval_seed)
    tasks = held_out.sample_tasks(args.eval_tasks, generator=eval_gen)
    results: dict[str, Any] = {}
    eval_start = time.perf_counter()
    for name, weights in (("MAML-RL", params), ("random init", init)):
        gen = torch.Generator().manual_seed(args.eval_seed + 1)
        if args.env == "metaworld_ml1":
            r = evaluate_with_success(policy, weights, held_out, tasks, gen, args.lr)
        else:
            before, after = adapt_and_evaluate(
                policy, weights, held_out, tasks, generator=gen, lr=args.lr
            )
            r = {"before": before, "after_1_step": after}
        results[name] = {k: summary(v) for k, v in r.items()}
        print(name, results[name], flush=True)
    eval_s = time.perf_counter() - eval_start

    record = {
        **header(),
        "versions": {p: version(p) for p in ("gymnasium", "mujoco", "metaworld")},
        "env": args.env,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "paper": PAPER,
        "iterations": len(log),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "train_env_steps": trained_steps,
        "train_env_steps_per_s": round(trained_steps / train_s) if train_s else None,
        "fraction_of_paper_trajectories": round(
            len(log) * args.meta_batch * args.k / (500 * 40 * 20), 4
        ),
        "throughput": speed,
        "eval_tasks": tasks.flatten().tolist(),
        "held_out": results,
        "log": log,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    plot(log, f"MAML-RL on {args.env} ({len(log)} iterations)", out.with_suffix(".png"))
    print("wrote", out, flush=True)


if __name__ == "__main__":
    main()
