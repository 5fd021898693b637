"""MAML-RL on 2D navigation (Finn et al. 2017, §5.3, Figure 4), on the CPU within a budget.

Trains MAML-RL (TRPO outer step, one VPG inner step) for ``--budget-s`` seconds, then a policy
pretrained on all tasks jointly (the same TRPO step, no inner step) for the same number of
iterations, and evaluates on ``--eval-goals`` held-out goals (a seed never used in training):
the return before adaptation and after one inner step (K trajectories for the step, K fresh
ones scored), for MAML, the pretrained policy, the random initialisation (MAML's starting
weights) and an oracle that is given the goal (action = clip(goal - position)).

    OMP_NUM_THREADS=1 python benchmarks/maml_rl_navigation.py --iterations 70 --budget-s 1e9 --ppo
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from common import header
from mnemeta.algorithms.maml_rl import adapt_and_evaluate, inner_step, meta_step, ppo_meta_step
from mnemeta.rl import GaussianMLPPolicy, Navigation2D, estimate_advantages, rollout, sample_goals
from mnemeta.stats import mean_ci95

RESULTS = Path(__file__).parent / "results"


def train(policy, env, args, *, adapt, iterations=None, budget_s=None):
    params = {k: w.detach().clone() for k, w in policy.params().items()}
    log, start, it = [], time.perf_counter(), 0
    while True:
        if iterations is not None and it >= iterations:
            break
        if budget_s is not None and time.perf_counter() - start >= budget_s:
            break
        params, m = meta_step(
            policy,
            params,
            env,
            seed=args.seed,
            iteration=it,
            meta_batch=args.meta_batch,
            lr=args.lr,
            max_kl=args.max_kl,
            adapt=adapt,
        )
        row = {"iteration": it, "seconds": round(time.perf_counter() - start, 2)}
        row.update({k: round(v, 5) for k, v in vars(m).items()})
        log.append(row)
        print(("maml" if adapt else "joint"), row, flush=True)
        it += 1
    return params, log, time.perf_counter() - start


def train_ppo(policy, init, env, args, *, iterations):
    """MAML-RL with the PPO-style outer step (Adam on the clipped meta-surrogate), from the
    same initial weights, for the same number of iterations as the TRPO arm."""
    with torch.no_grad():
        for k, w in policy.named_parameters():
            w.copy_(init[k])
    adam = torch.optim.Adam(policy.parameters(), lr=args.ppo_lr)
    log, start = [], time.perf_counter()
    for it in range(iterations):
        m = ppo_meta_step(
            policy, adam, env, seed=args.seed, iteration=it, meta_batch=args.meta_batch, lr=args.lr
        )
        row = {"iteration": it, "seconds": round(time.perf_counter() - start, 2)}
        row.update({k: round(v, 5) for k, v in vars(m).items()})
        log.append(row)
        print("ppo", row, flush=True)
    params = {k: w.detach().clone() for k, w in policy.params().items()}
    return params, log, time.perf_counter() - start


def oracle_returns(env, goals):
    env.reset(goals)
    total = torch.zeros(goals.shape[0], env.envs_per_task)
    for _ in range(env.horizon):
        action = (goals.unsqueeze(1) - env.position) / env.action_scale
        _, reward, _ = env.step(action)
        total += reward
    return total.mean(dim=1)


def summary(values):
    mean, ci = mean_ci95(values)
    return {"mean": round(mean, 3), "ci95": round(ci, 3)}


def plot(policy, arms, env, goals, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 4), squeeze=False)
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for ax, (name, params) in zip(axes[0], arms.items(), strict=True):
        gen = torch.Generator().manual_seed(args.eval_seed + 7)
        pre = rollout(policy, params, env, goals, generator=gen)
        fast = inner_step(
            policy, params, pre, estimate_advantages(pre), lr=args.lr, first_order=True
        )
        for i in range(goals.shape[0]):
            post = rollout(
                policy,
                {k: w.detach() for k, w in fast[i].items()},
                env,
                goals[i : i + 1],
                generator=gen,
            )
            for trajs, style, label in (
                (pre.select(slice(i, i + 1)), ":", "pre-update"),
                (post, "-", "after 1 step"),
            ):
                m = trajs.mask[0, 0].bool()
                xy = torch.cat([torch.zeros(1, 2), trajs.obs[0, 0][m][1:]])
                ax.plot(xy[:, 0], xy[:, 1], style, color=colors[i], label=label if i == 0 else None)
            ax.plot(*goals[i].tolist(), "*", color=colors[i], markersize=14)
        ax.set(title=name, xlim=(-0.6, 0.6), ylim=(-0.6, 0.6), aspect="equal")
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("2D navigation: one trajectory per goal (stars) before and after one step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=540.0, help="MAML-RL's training budget")
    ap.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="MAML-RL's meta-iterations instead of a time budget (a shared, loaded machine "
        "does fewer iterations in the same seconds)",
    )
    ap.add_argument("--meta-batch", type=int, default=20)
    ap.add_argument("--k", type=int, default=20, help="trajectories per task and step")
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.1, help="inner step size α")
    ap.add_argument("--max-kl", type=float, default=0.01)
    ap.add_argument("--ppo-lr", type=float, default=1e-3, help="PPO arm: Adam's learning rate")
    ap.add_argument("--action-scale", type=float, default=0.1, help="0.1: maml_rl's normalize")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=999_331)
    ap.add_argument("--eval-goals", type=int, default=40)
    ap.add_argument("--eval-steps", type=int, default=3, help="inner steps at test (paper: 0-3)")
    ap.add_argument(
        "--ppo", action="store_true", help="also train the PPO-style outer step, same iterations"
    )
    ap.add_argument("--out", default=str(RESULTS / "maml_rl_navigation.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    env = Navigation2D(args.k, horizon=args.horizon, action_scale=args.action_scale)
    torch.manual_seed(args.seed)
    policy = GaussianMLPPolicy(2, 2)
    init = {k: w.detach().clone() for k, w in policy.params().items()}
    maml, maml_log, maml_s = train(
        policy, env, args, adapt=True, iterations=args.iterations, budget_s=args.budget_s
    )
    joint, joint_log, joint_s = train(policy, env, args, adapt=False, iterations=len(maml_log))
    ppo = ppo_log = ppo_s = None
    if args.ppo:
        ppo, ppo_log, ppo_s = train_ppo(policy, init, env, args, iterations=len(maml_log))

    goals = sample_goals(args.eval_goals, generator=torch.Generator().manual_seed(args.eval_seed))
    arms = {"MAML-RL": maml, "pretrained (joint TRPO)": joint, "random init": init}
    if ppo is not None:
        arms["MAML-RL, PPO outer step"] = ppo
    results = {}
    for name, params in arms.items():
        gen = torch.Generator().manual_seed(args.eval_seed + 1)
        stages = adapt_and_evaluate(
            policy, params, env, goals, generator=gen, lr=args.lr, steps=args.eval_steps
        )
        results[name] = {"before": summary(stages["before"])}
        for n in range(1, args.eval_steps + 1):
            results[name][f"after_{n}_step{'s' if n > 1 else ''}"] = summary(stages[f"after_{n}"])
        print(name, results[name], flush=True)
    oracle = oracle_returns(env, goals)
    results["oracle (given the goal)"] = {"before": summary(oracle), "after_1_step": None}
    print("oracle", results["oracle (given the goal)"], flush=True)

    out = Path(args.out)
    png = out.with_suffix(".png")
    plot(
        policy,
        {k: arms[k] for k in ("MAML-RL", "pretrained (joint TRPO)")},
        env,
        goals[:3],
        args,
        png,
    )
    record = {
        **header(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "maml_iterations": len(maml_log),
        "maml_train_seconds": round(maml_s, 1),
        "joint_iterations": len(joint_log),
        "joint_train_seconds": round(joint_s, 1),
        "ppo_iterations": None if ppo_log is None else len(ppo_log),
        "ppo_train_seconds": None if ppo_s is None else round(ppo_s, 1),
        "eval": results,
        "ppo_log": ppo_log,
        "maml_log": maml_log,
        "joint_log": joint_log,
        "plot": png.name,
    }
    assert all(math.isfinite(r["mean"]) for r in [v["before"] for v in results.values()])
    out.write_text(json.dumps(record, indent=1) + "\n")
    print("wrote", out, png)


if __name__ == "__main__":
    main()
