"""Meta-training a meta-RL learner (``maml_rl``, ``rl2``) on a family of tasks.

build (environment from ``[rl]``, learner) -> loop: one meta-iteration per step (its tasks and
actions drawn from a generator seeded by ``(seed, iteration)``) -> log, checkpoint -> the
held-out test (``eval.episodes`` tasks drawn with ``eval.seed``): the return at each stage of
adaptation, mean ± 95% CI over tasks -> report, curves, and for 2D navigation the trajectories
before and after adaptation (the paper's Figure 4).

Exact resume needs no saved RNG state: an iteration depends only on the weights, the learner's
optimiser state (:meth:`~mnemeta.algorithms.meta_rl.MetaRLLearner.training_state`) and its
index, so a run resumed from the checkpoint of step ``s`` repeats steps ``s + 1, ...`` of the
uninterrupted run bit for bit (``tests/recipes/test_rl_train.py``).

Under torchrun (gloo, on the CPU) each rank runs a contiguous share of every meta-batch's tasks
and of the held-out tasks, with the whole batch's random draws, and the learners sum their
parts of every batch mean over the ranks (:mod:`mnemeta.rl.shard`): every rank makes one
process's update, up to the order of floating-point sums. Rank 0 alone writes and prints
(:mod:`mnemeta.recipes.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from tqdm import tqdm

from mnemeta.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from mnemeta.checks import check_values
from mnemeta.config import Config
from mnemeta.errors import ConfigError
from mnemeta.io import atomic_write_text
from mnemeta.recipes.build import Learner, build_learner, device_name, learner_spec
from mnemeta.recipes.clock import TrainingClock
from mnemeta.recipes.distributed import (
    SINGLE,
    Ranks,
    environment_ranks,
    process_group,
    run_folder,
)
from mnemeta.recipes.interrupt import StopRequests
from mnemeta.recipes.logging import MetricsLog, log_period
from mnemeta.recipes.resume import check_resumable, resumed_clock
from mnemeta.recipes.run_folder import RunFolder
from mnemeta.registry import DATASETS
from mnemeta.rl.environment import TaskEnvironment
from mnemeta.rl.shard import TaskShard
from mnemeta.stats import mean_ci95

#: What the progress bar and the printed lines show, where the learner measures it.
_SHOWN = ("return", "post_return", "kl")


def build_environment(config: Config) -> TaskEnvironment:
    """The task family ``data.dataset`` names, with the ``[rl]`` settings."""
    spec = DATASETS.get(config.data.dataset)
    if spec.kind != "environment" or spec.environment is None:
        names = ", ".join(d.name for d in DATASETS if d.kind == "environment")
        raise ConfigError(
            f"{config.model.algorithm} is a meta-RL learner, so data.dataset must be a family of "
            f"tasks ({names}); got {config.data.dataset!r}"
        )
    env: TaskEnvironment = spec.environment(config.rl, torch.device("cpu"))
    return env


def build_rl_learner(config: Config, env: TaskEnvironment) -> Learner:
    """The learner ``[model]`` describes, for ``env``'s observations and actions."""
    return build_learner(config, (env.observation_size,), env.action_size)


def check_rl_config(config: Config) -> None:
    check_values(config)
    if learner_spec(config).recipe != "rl":
        raise ConfigError(f"{config.model.algorithm!r} is not a meta-RL learner")
    if config.train.compile != "off":
        raise ConfigError(
            f"train.compile={config.train.compile!r} applies to the episodic learners; the "
            "meta-RL learners run eagerly: leave it at 'off'"
        )
    ranks = environment_ranks()
    if ranks is not None:
        # Every rank runs at least one task of each meta-batch and of the test (a rank with
        # none would only wait, and the learners' sums assume a share on every rank).
        world = ranks[1]
        for key, value in (
            ("train.meta_batch", config.train.meta_batch),
            ("eval.episodes", config.eval.episodes),
        ):
            if value < world:
                raise ConfigError(
                    f"{key}={value} is fewer tasks than the {world} torchrun ranks: give it "
                    f"at least {world} (a multiple of {world} keeps every rank busy), or start "
                    f"fewer ranks (torchrun --nproc_per_node {value})"
                )
    if config.device not in ("auto", "cpu"):
        # Rollouts draw tasks, initial states and actions from CPU generators seeded by the
        # iteration (what makes resume exact); the small policies gain nothing from a GPU.
        raise ConfigError(
            f"device={config.device!r}: the meta-RL learners run on the CPU; use --device cpu "
            "(or auto)"
        )


def rl_train(
    config: Config,
    *,
    resume: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a meta-RL config; returns the summary in ``result.json``.

    The run folder, resuming and interrupts behave as in
    :func:`mnemeta.recipes.meta_train.meta_train`.
    """
    check_rl_config(config)
    with (
        one_thread(),
        process_group("cpu") as (ranks, _),
        run_folder(ranks, config.run_dir, resume=resume is not None, overwrite=overwrite) as folder,
    ):
        return _rl_train(config, folder, resume, progress, ranks)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread, then restore the count: a meta-RL step is thousands
    of tiny ops (a 100-unit policy on a few hundred states) that threads only slow down — one
    navigation iteration took 3.5 x longer with 2 threads than with 1 on the shared 2-core
    machine (25.3 s against 7.1 s, `mnemeta train maml_rl_navigation2d --set train.steps=1`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rl_train(
    config: Config, folder: RunFolder, resume: str | None, progress: bool | None, ranks: Ranks
) -> dict[str, Any]:
    t_start = time.perf_counter()
    tc = config.train
    run_dir = config.run_dir
    main = ranks.is_main  # rank 0 (or the one process): the only one that writes and prints
    show = (sys.stderr.isatty() if progress is None else progress) and main

    # ---- build ----
    torch.manual_seed(config.seed)  # the initial weights; nothing later draws from it
    env = build_environment(config)
    learner = build_rl_learner(config, env)
    start = 0
    clock = TrainingClock(tc.max_minutes)
    if resume is not None:
        state = load_checkpoint(resume)
        check_resumable(checkpoint_config(state), config, resume)
        learner.load_state_dict(state["model"])
        learner.load_training_state(state["training"])
        start = int(state["step"])
        clock = resumed_clock(state, config, resume, evaluated=(run_dir / "result.json").is_file())
    ranks.broadcast_module(learner)
    # This rank's tasks of every meta-batch (None: one process, the whole batch).
    shard = _shard(ranks, tc.meta_batch)
    folder.begin()
    if main:
        atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    log = MetricsLog(run_dir, resume_step=start if resume is not None else None, write=main)

    def checkpoint(step: int) -> None:
        if not main:
            return  # every rank holds the same weights and optimiser state
        save_checkpoint(
            run_dir / "checkpoint.pt",
            {
                "config": config.to_json(),
                "step": step,
                "model": learner.state_dict(),
                "training": learner.training_state(),
                "train_seconds": clock.seconds(),
                # What mnemeta.load needs to rebuild the learner without the environment.
                "input_shape": [env.observation_size],
                "outputs": env.action_size,
            },
        )

    # ---- the loop ----
    clock.start()
    bar = tqdm(
        range(start, tc.steps), initial=start, total=tc.steps, disable=not show, desc=config.name
    )
    running: dict[str, float] = {}
    count, done, out_of_time = 0, start, False
    log_every = log_period(config)
    with StopRequests() as stop:
        for step in bar:
            metrics = learner.train_iteration(
                env, seed=config.seed, iteration=step, meta_batch=tc.meta_batch, shard=shard
            )
            for k, v in metrics.items():
                running[k] = running.get(k, 0.0) + v
            count += 1
            done = step + 1
            # Every rank stops after the same iteration: any rank's signal or clock stops all.
            stopping, out_of_time = ranks.any((stop.requested, clock.out_of_time()))
            last = done == tc.steps or out_of_time
            if done % log_every == 0 or last:
                row: dict[str, Any] = {"step": done, "tasks": done * tc.meta_batch}
                row.update({k: v / count for k, v in running.items()})
                row["seconds"] = round(clock.seconds(), 2)  # of the whole run, across resumes
                running, count = {}, 0
                log.log(row)
                line = "  ".join(f"{k} {row[k]:.4g}" for k in _SHOWN if k in row)
                bar.set_postfix_str(line)
                if not show and main:
                    print(f"step {done}/{tc.steps}  {line}  {row['seconds']:.0f}s", flush=True)
            elif not show and main and done == start + 1:
                print(f"step {done}/{tc.steps}  (a line every {log_every} steps)", flush=True)
            if done % tc.checkpoint_every == 0 or last or stopping:
                checkpoint(done)
            if stopping and not last:
                if stop.signal is None:  # another rank was signalled: stop as it does
                    stop.signal = signal.SIGTERM
                bar.close()
                log.close()
                raise stop.interrupted(done, tc.steps, run_dir)
            if out_of_time:
                if main:
                    clock.announce_stop(done, tc.steps)
                break
    bar.close()
    t_train = clock.finish(torch.device("cpu"))

    # ---- the held-out test, report, plots ----
    t_eval0 = time.perf_counter()
    report = evaluate_rl(learner, env, config, ranks)
    t_eval = time.perf_counter() - t_eval0
    log.close()
    summary = {
        "name": config.name,
        "algorithm": config.model.algorithm,
        "environment": config.data.dataset,
        "steps": tc.steps,
        "steps_done": done,
        "stopped_by_max_minutes": out_of_time,
        "tasks": done * tc.meta_batch,
        "parameters": sum(p.numel() for p in learner.parameters()),
        "device": "cpu",
        "device_name": device_name(torch.device("cpu")),
        "test": report,
        "seconds": {
            "train": round(t_train, 1),
            "train_all_runs": round(clock.trained_before + t_train, 1),
            "evaluate": round(t_eval, 1),
            "total": round(time.perf_counter() - t_start, 1),
        },
        "resumed_from_step": start if resume is not None else None,
    }
    if ranks.active:
        summary["world_size"] = ranks.world_size
    if not main:
        return summary
    atomic_write_text(run_dir / "result.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(run_dir / "result.md", rl_markdown(summary) + "\n")
    from mnemeta.recipes.plots import plot_navigation_trajectories, plot_rl_curves

    plot_rl_curves(log.rows, run_dir / "curves.png", title=config.name, test=report)
    if config.data.dataset == "navigation2d" and hasattr(learner, "example_trajectories"):
        tasks = env.sample_tasks(
            3,
            generator=torch.Generator().manual_seed(config.eval.seed),
            dtype=next(learner.parameters()).dtype,
        )
        stages = learner.example_trajectories(
            env, tasks, generator=torch.Generator().manual_seed(config.eval.seed + 1)
        )
        plot_navigation_trajectories(stages, tasks, run_dir / "trajectories.png", config.name)
    return summary


def evaluate_rl(
    learner: Learner, env: TaskEnvironment, config: Config, ranks: Ranks = SINGLE
) -> dict[str, Any]:
    """The held-out test: ``eval.episodes`` tasks drawn with ``eval.seed`` (a seed training
    never uses: its generators are seeded by ``seed * 1_000_003 + iteration``) — from the
    family's held-out tasks where it has them (``env.held_out()``) — each stage's return (and
    success) as mean ± 95% CI over the tasks.

    Under torchrun (``ranks``) each rank runs its share of the tasks, with the whole test's
    draws, and the per-task values are gathered: the same mean ± CI as one process."""
    ec = config.eval
    # A family with tasks set apart for testing (Meta-World ML1's test goals) is scored on
    # those; the others on fresh draws of the same distribution.
    env = env.held_out() if hasattr(env, "held_out") else env
    dtype = next(learner.parameters()).dtype  # the policy's (float64 where it was built so)
    tasks = env.sample_tasks(
        ec.episodes, generator=torch.Generator().manual_seed(ec.seed), dtype=dtype
    )
    generator = torch.Generator().manual_seed(ec.seed + 1)
    shard = _shard(ranks, ec.episodes)
    if shard is None:
        columns = learner.evaluate(env, tasks, generator=generator)
    else:
        own = learner.evaluate(env, shard.part(tasks), generator=generator, shard=shard)
        columns = {k: ranks.assemble(v, ec.episodes, shard.lo) for k, v in own.items()}
    stages: dict[str, dict[str, float]] = {}
    for name, values in columns.items():
        mean, ci = mean_ci95(values.double())
        stages[name] = {"mean": round(mean, 4), "ci95": round(ci, 4)}
    return {
        "task": "meta-rl",
        "environment": config.data.dataset,
        "tasks": ec.episodes,
        "trajectories_per_task": env.envs_per_task,
        "horizon": env.horizon,
        "seed": ec.seed,
        "stages": stages,
    }


def _shard(ranks: Ranks, tasks: int) -> TaskShard | None:
    """This rank's share of ``tasks`` (None for one process: the whole batch)."""
    if not ranks.active:
        return None
    lo, hi = ranks.shard(tasks)
    return TaskShard(lo, hi, tasks, ranks.sum)


def rl_markdown(summary: dict[str, Any]) -> str:
    test = summary["test"]
    returns = {k: v for k, v in test["stages"].items() if not k.startswith("success_")}
    with_success = len(returns) < len(test["stages"])
    lines = [
        f"# {summary['name']}",
        "",
        f"{summary['algorithm']} on {test['environment']}: {test['tasks']} held-out tasks "
        f"(seed {test['seed']}), {test['trajectories_per_task']} trajectories of "
        f"{test['horizon']} steps per task and stage; mean ± 95% CI over tasks",
        "",
        "| stage | return | success |" if with_success else "| stage | return |",
        "|---|---|---|" if with_success else "|---|---|",
    ]
    for name, v in returns.items():
        cells = f"| {name.replace('_', ' ')} | {v['mean']:.2f} ± {v['ci95']:.2f} |"
        success = test["stages"].get(f"success_{name}")
        if success is not None:
            cells += f" {100 * success['mean']:.1f} ± {100 * success['ci95']:.1f}% |"
        lines.append(cells)
    lines += [
        "",
        f"{summary['steps_done']} meta-iterations ({summary['tasks']} tasks), "
        f"{summary['seconds']['train']:.0f} s training on {summary['device_name']}",
    ]
    return "\n".join(lines)
