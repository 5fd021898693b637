"""RL² (Duan et al. 2016) with PPO on 2D navigation, on the CPU within a budget.

Trains :class:`mnemeta.algorithms.rl2.RL2` for ``--budget-s`` seconds (trials of
``--episodes`` episodes, memory kept across a trial's episodes), then evaluates on
``--eval-goals`` held-out goals — the same goals as ``maml_rl_navigation.py`` (its
``--eval-seed``) — the return of each episode of a trial, for the trained learner and for its
random initialisation, beside an oracle that is given the goal, and MAML-RL's recorded figures
(``results/maml_rl_navigation.json``).

    OMP_NUM_THREADS=1 python benchmarks/rl2_navigation.py --budget-s 600
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from common import header
from mnemeta.algorithms.rl2 import RL2, RL2Config
from mnemeta.rl import Navigation2D, sample_goals
from mnemeta.stats import mean_ci95

RESULTS = Path(__file__).parent / "results"


def summary(values: torch.Tensor) -> dict[str, float]:
    mean, ci = mean_ci95(values)
    return {"mean": round(mean, 3), "ci95": round(ci, 3)}


def oracle_returns(env: Navigation2D, goals: torch.Tensor) -> torch.Tensor:
    """Given the goal: action = clip(goal - position), deterministic; mean per goal."""
    env.reset(goals)
    total = torch.zeros(goals.shape[0], env.envs_per_task)
    for _ in range(env.horizon):
        _, reward, _ = env.step((goals.unsqueeze(1) - env.position) / env.action_scale)
        total += reward
    return total.mean(dim=1)


def evaluate(learner: RL2, env: Navigation2D, goals: torch.Tensor, seed: int) -> dict[str, object]:
    out = learner.evaluate(env, goals, generator=torch.Generator().manual_seed(seed))
    result: dict[str, object] = {k: summary(v) for k, v in out.items()}
    if "episode_2" in out:  # paired over goals: what the memory of episode 1 bought
        result["episode_2_minus_1"] = summary(out["episode_2"] - out["episode_1"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=600.0, help="training budget, seconds")
    ap.add_argument("--meta-batch", type=int, default=20, help="tasks per iteration")
    ap.add_argument("--trials", type=int, default=10, help="parallel trials of each task")
    ap.add_argument("--episodes", type=int, default=2, help="episodes per trial")
    ap.add_argument("--horizon", type=int, default=100)
    ap.add_argument("--action-scale", type=float, default=0.1, help="0.1: maml_rl's normalize")
    ap.add_argument("--lr", type=float, default=RL2Config.lr)
    ap.add_argument("--hidden", type=int, default=RL2Config.hidden)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=999_331)
    ap.add_argument("--eval-goals", type=int, default=40)
    ap.add_argument("--eval-trials", type=int, default=20, help="trials per held-out goal")
    ap.add_argument("--out", default=str(RESULTS / "rl2_navigation.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    cfg = RL2Config(algorithm="rl2", hidden=args.hidden, trial_episodes=args.episodes, lr=args.lr)
    env = Navigation2D(args.trials, horizon=args.horizon, action_scale=args.action_scale)
    torch.manual_seed(args.seed)
    learner = RL2(cfg, observation_size=2, action_size=2)
    init = copy.deepcopy(learner)

    log, start, it = [], time.perf_counter(), 0
    while time.perf_counter() - start < args.budget_s:
        m = learner.train_iteration(env, seed=args.seed, iteration=it, meta_batch=args.meta_batch)
        row = {"iteration": it, "seconds": round(time.perf_counter() - start, 2)}
        row.update({k: round(v, 5) for k, v in m.items()})
        log.append(row)
        if it % 10 == 0:
            print(row, flush=True)
        it += 1
    train_s = time.perf_counter() - start

    eval_env = Navigation2D(args.eval_trials, horizon=args.horizon, action_scale=args.action_scale)
    goals = sample_goals(args.eval_goals, generator=torch.Generator().manual_seed(args.eval_seed))
    results = {
        "RL2": evaluate(learner, eval_env, goals, args.eval_seed + 1),
        "random init": evaluate(init, eval_env, goals, args.eval_seed + 1),
        "oracle (given the goal)": {"episode_1": summary(oracle_returns(eval_env, goals))},
    }
    for name, r in results.items():
        print(name, r, flush=True)
    maml_path = RESULTS / "maml_rl_navigation.json"
    maml = json.loads(maml_path.read_text())["eval"] if maml_path.is_file() else None

    record = {
        **header(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "learner_config": vars(cfg),
        "iterations": len(log),
        "train_seconds": round(train_s, 1),
        "eval": results,
        "maml_rl_recorded": maml,
        "log": log,
    }
    assert all(math.isfinite(v["mean"]) for v in results["RL2"].values())  # type: ignore[index]
    out = Path(args.out)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
