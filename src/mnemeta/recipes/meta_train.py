"""Episodic meta-training, top to bottom: build, then one loop.

sample a meta-batch -> ``meta_loss`` -> backward -> clip -> step -> log; every so often
evaluate on validation episodes (mean ± 95% CI) and checkpoint; at the end evaluate on the
fixed test episodes and plot. A learner that needs a different loop gets its own recipe file.

Under ``torchrun`` the same loop runs on every rank: each takes its share of the meta-batch, the
step's gradients are averaged over the ranks before the clip, and rank 0 alone writes and prints
(:mod:`mnemeta.recipes.distributed`). One process runs exactly the code it ran before.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from mnemeta.algorithms.protocol import DrawsPerTask
from mnemeta.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    save_checkpoint,
)
from mnemeta.checks import check_values
from mnemeta.config import Config
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.errors import ConfigError
from mnemeta.io import atomic_write_text
from mnemeta.recipes.build import (
    build_learner,
    build_meta_loss,
    build_splits,
    check_ways,
    device_name,
    pick_split,
)
from mnemeta.recipes.clock import TrainingClock
from mnemeta.recipes.distributed import (
    Ranks,
    process_group,
    run_folder,
    running_statistics,
    warn_split_meta_batch,
)
from mnemeta.recipes.evaluate import evaluate
from mnemeta.recipes.interrupt import StopRequests
from mnemeta.recipes.logging import MetricsLog, log_period
from mnemeta.recipes.plots import plot_training_curves
from mnemeta.recipes.resume import check_resumable, resumed_clock
from mnemeta.recipes.run_folder import RunFolder


def meta_train(
    config: Config,
    *,
    resume: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``config`` (optionally continuing the checkpoint ``resume``); returns the summary
    written to ``<run_dir>/result.json``.

    The run folder is checked and locked before anything is built, and a folder that holds
    another run is refused unless ``overwrite`` (:mod:`mnemeta.recipes.run_folder`). The first
    SIGINT/SIGTERM stops after the current step with a checkpoint and raises
    :class:`~mnemeta.recipes.interrupt.TrainingInterrupted`.

    Launched by torchrun, every rank calls this with the same config; rank 0 returns (and
    writes) the summary, and so does every other rank, without writing.
    """
    check_values(config)
    with (
        process_group(config.device) as (ranks, device),
        run_folder(ranks, config.run_dir, resume=resume is not None, overwrite=overwrite) as folder,
    ):
        return _meta_train(config, folder, resume, progress, ranks, device)


def _meta_train(
    config: Config,
    folder: RunFolder,
    resume: str | None,
    progress: bool | None,
    ranks: Ranks,
    device: torch.device,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    tc, ec = config.train, config.eval
    run_dir = config.run_dir
    main = ranks.is_main  # rank 0 (or the one process): the only one that writes and prints
    show = (sys.stderr.isatty() if progress is None else progress) and main

    # ---- build: data, samplers, learner, optimiser (each step fails early and clearly) ----
    torch.manual_seed(config.seed)
    splits = build_splits(config.data, progress=show)
    train_data = pick_split(splits, tc.split, "train.split")
    sampler = EpisodeSampler(
        train_data,
        ways=tc.ways,
        shots=tc.shots,
        queries=tc.queries,
        seed=config.seed,
        device=device,
        split=tc.split,
    )
    val_sampler = None
    if tc.eval_every and ec.val_split:
        val_sampler = EpisodeSampler(
            pick_split(splits, ec.val_split, "eval.val_split"),
            ways=ec.ways,
            shots=ec.shots,
            queries=ec.queries,
            device=device,
            split=ec.val_split,
        )
    test_sampler = EpisodeSampler(
        pick_split(splits, ec.split, "eval.split"),
        ways=ec.ways,
        shots=ec.shots,
        queries=ec.queries,
        device=device,
        split=ec.split,
    )
    check_ways(
        config, ec.ways, f"set eval.ways and train.ways to the same value ({ec.ways} != {tc.ways})"
    )
    learner = build_learner(
        config, train_data.example_shape, n_way=tc.ways, classes=train_data.n_classes
    ).to(device)
    # Frozen weights (a sentence encoder's lower layers) stay out of the optimiser.
    trained = [p for p in learner.parameters() if p.requires_grad]
    if not trained:
        raise ConfigError(
            f"{config.model.algorithm} with backbone {getattr(config.model, 'backbone', '')!r} "
            "has nothing to train (every weight is frozen); evaluate it with `mnemeta evaluate` "
            "or choose a backbone with weights to train"
        )
    optimizer = build_optimizer(config, iter(trained))
    # This rank's share of every meta-batch: all of it for one process.
    lo, hi = ranks.shard(tc.meta_batch)
    statistics = running_statistics(learner) if ranks.active else []
    warn_split_meta_batch(ranks, tc.meta_batch, learner, config.model.algorithm)
    meta_loss = build_meta_loss(learner, tc.compile)
    scheduler = build_schedule(config, optimizer)
    # Running sums of the logged metrics stay on the device: no host sync every step.
    running = torch.zeros(3, device=device)  # loss sum, accuracy sum, count
    start = 0
    clock = TrainingClock(tc.max_minutes)
    if resume is not None:
        state = load_checkpoint(resume)
        check_resumable(checkpoint_config(state), config, resume)
        learner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.set_state(state["rng"]["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        running = state["running"].to(device)
        start = int(state["step"])
        clock = resumed_clock(state, config, resume, evaluated=(run_dir / "result.json").is_file())
    ranks.broadcast_module(learner)
    folder.begin()
    if main:
        atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    log = MetricsLog(run_dir, resume_step=start if resume is not None else None, write=main)
    t_data = time.perf_counter() - t_start

    def checkpoint(step: int) -> None:
        if not main:
            return  # every rank holds the same state (see mnemeta.recipes.distributed)
        save_checkpoint(
            run_dir / "checkpoint.pt",
            {
                "config": config.to_json(),
                "step": step,
                "model": learner.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "sampler": sampler.get_state()},
                "running": running.cpu(),
                "train_seconds": clock.seconds(),
                # What mnemeta.load needs to rebuild the learner without the data.
                "input_shape": list(train_data.example_shape),
                "outputs": tc.ways,
                "classes": train_data.n_classes,
            },
        )

    # ---- the loop ----
    learner.train()
    clock.start()
    bar = tqdm(
        range(start, tc.steps),
        initial=start,
        total=tc.steps,
        disable=not show,
        desc=config.name,
        dynamic_ncols=True,
    )
    step = done = start
    out_of_time = False
    log_every = log_period(config)
    with StopRequests() as stop:
        for step in bar:
            if not ranks.active:
                batch = sampler.sample(tc.meta_batch)
                loss, metrics = meta_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            else:
                metrics, stopping, out_of_time = _distributed_step(
                    ranks, config, sampler, learner, meta_loss, optimizer, trained, statistics,
                    stop.requested, clock.out_of_time(), (lo, hi),
                )  # fmt: skip
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trained, tc.grad_clip)
            optimizer.step()
            scheduler.step()
            running += torch.stack(
                [metrics["loss"], metrics["accuracy"], torch.ones((), device=device)]
            )
            done = step + 1
            if not ranks.active:
                out_of_time = clock.out_of_time()
            last = done == tc.steps or out_of_time
            if done % log_every == 0 or last:
                loss_sum, acc_sum, count = running.tolist()
                running.zero_()
                row = {
                    "step": done,
                    "loss": loss_sum / count,
                    "accuracy": 100 * acc_sum / count,  # percent, as every accuracy mnemeta shows
                    "lr": scheduler.get_last_lr()[0],
                    "seconds": round(clock.seconds(), 2),  # of the whole run, across resumes
                }
                log.log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.1f}%")
                if not show and main:
                    print(
                        f"step {done}/{tc.steps}  loss {row['loss']:.4f}  "
                        f"acc {row['accuracy']:.2f}%  {row['seconds']:.0f}s",
                        flush=True,
                    )
            elif not show and main and done == start + 1:
                # Without a progress bar, say at once that training runs (the first logged
                # line may be minutes away); not a metrics row, so resumed logs stay exact.
                print(f"step {done}/{tc.steps}  (a line every {log_every} steps)", flush=True)
            if val_sampler is not None and done % tc.eval_every == 0:
                val = evaluate(
                    learner,
                    val_sampler,
                    episodes=ec.val_episodes,
                    seed=ec.seed,
                    batch_size=ec.batch_size,
                    split=ec.val_split,
                    ranks=ranks,
                )
                log.log({"step": done, "val_accuracy": val.mean, "val_ci95": val.ci95})
                if main:
                    tqdm.write(
                        f"step {done}: {ec.val_split} accuracy {val.mean:.2f} ± {val.ci95:.2f}%",
                        file=sys.stdout,
                    )
            if not ranks.active:
                stopping = stop.requested
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
    t_train = clock.finish(device)

    # ---- final evaluation on the fixed test episodes ----
    t_eval0 = time.perf_counter()
    result = evaluate(
        learner,
        test_sampler,
        episodes=ec.episodes,
        seed=ec.seed,
        batch_size=ec.batch_size,
        split=ec.split,
        ranks=ranks,
    )
    t_eval = time.perf_counter() - t_eval0
    log.close()
    summary = {
        "name": config.name,
        "steps": tc.steps,
        "steps_done": done,
        "stopped_by_max_minutes": out_of_time,
        "compile": tc.compile,
        "device": str(device),
        "device_name": device_name(device),
        "test": result.to_dict(),
        "seconds": {
            "build": round(t_data, 1),
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
    atomic_write_text(run_dir / "result.md", result.markdown(config.name) + "\n")
    plot_training_curves(log.rows, run_dir / "curves.png", title=config.name, test=result)
    return summary


def _distributed_step(
    ranks: Ranks,
    config: Config,
    sampler: EpisodeSampler,
    learner: torch.nn.Module,
    meta_loss: Any,
    optimizer: torch.optim.Optimizer,
    trained: list[torch.nn.Parameter],
    statistics: list[torch.Tensor],
    stop_requested: bool,
    out_of_time: bool,
    share: tuple[int, int],
) -> tuple[dict[str, torch.Tensor], bool, bool]:
    """One rank's part of a step: its share of the meta-batch, its meta-gradient, then the
    all-reduce that leaves every rank with the meta-batch's gradient and metrics. Returns the
    metrics and whether any rank asked to stop (a signal) or ran out of time."""
    tc = config.train
    lo, hi = share
    # The whole batch's indices are drawn on every rank, the share's images alone gathered.
    batch = sampler.sample(tc.meta_batch, part=share)
    draws = learner if isinstance(learner, DrawsPerTask) else None
    if draws is not None:
        draws.skip_task_draws(lo, tc.ways * tc.shots)
    optimizer.zero_grad(set_to_none=True)
    if hi > lo:
        loss, metrics = meta_loss(batch)
        loss.backward()
    else:  # more ranks than tasks: this one contributes nothing, with weight 0
        zero = torch.zeros((), device=trained[0].device)
        metrics = {"loss": zero, "accuracy": zero}
    if draws is not None:
        draws.skip_task_draws(tc.meta_batch - hi, tc.ways * tc.shots)
    averaged, (stopping, late) = ranks.reduce_step(
        trained,
        {"loss": metrics["loss"], "accuracy": metrics["accuracy"]},
        weight=(hi - lo) / tc.meta_batch,
        buffers=statistics,
        votes=(stop_requested, out_of_time),
    )
    return averaged, stopping, late


def build_optimizer(config: Config, params: Iterator[torch.nn.Parameter]) -> torch.optim.Optimizer:
    tc = config.train
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr)
    if tc.optimizer == "rmsprop":
        # Graves (2014) and Santoro et al. (2016): RMSProp with momentum 0.9, decay 0.95.
        return torch.optim.RMSprop(params, lr=tc.lr, alpha=0.95, momentum=0.9)
    raise ConfigError(f"train.optimizer={tc.optimizer!r} is unknown; choose adam, sgd or rmsprop")


def build_schedule(config: Config, optimizer: torch.optim.Optimizer) -> LRScheduler:
    tc = config.train
    if tc.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(tc.lr_decay_every, 1), gamma=tc.lr_decay
        )
    if tc.lr_schedule == "linear":
        steps = max(tc.steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / steps))
    raise ConfigError(f"train.lr_schedule={tc.lr_schedule!r} is unknown; choose step or linear")
