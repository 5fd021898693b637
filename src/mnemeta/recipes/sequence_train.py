"""Training memory-augmented networks on sequences: the NTM copy task and Santoro's one-shot
Omniglot episodes. Its own loop (the episodic recipe's learners see sets, these see sequences);
the tasks' losses, metrics and evaluation are in :mod:`mnemeta.algorithms.sequence_tasks`.

build (task, network, optimiser) -> loop: sample a batch of sequences -> forward over time ->
loss -> backward -> clip -> step -> log, checkpoint -> final evaluation, report and plots.

Under ``torchrun`` each rank trains on its share of the batch of sequences and the gradients are
averaged over the ranks before the clip (:mod:`mnemeta.recipes.distributed`); rank 0 writes,
prints and runs the final evaluation (sequence evaluations carry state from batch to batch, so
they are not sharded).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mnemeta.algorithms.mann import MemoryAugmentedNetwork, RecurrentState
from mnemeta.algorithms.sequence_tasks import CopyTask, OneShotTask, SequenceTask
from mnemeta.checkpoint import (
    checkpoint_config,
    load_checkpoint,
    save_checkpoint,
)
from mnemeta.checks import check_values
from mnemeta.config import Config
from mnemeta.data.sequences import CopySampler, OneShotSequenceSampler
from mnemeta.errors import ConfigError
from mnemeta.io import atomic_write_text
from mnemeta.recipes.build import (
    build_learner,
    build_splits,
    device_name,
    learner_spec,
    pick_split,
)
from mnemeta.recipes.clock import TrainingClock
from mnemeta.recipes.distributed import Ranks, process_group, run_folder, running_statistics
from mnemeta.recipes.interrupt import StopRequests
from mnemeta.recipes.logging import MetricsLog, log_period
from mnemeta.recipes.meta_train import build_optimizer, build_schedule
from mnemeta.recipes.resume import check_resumable, resumed_clock
from mnemeta.recipes.run_folder import RunFolder


def build_network(config: Config, inputs: int, outputs: int) -> MemoryAugmentedNetwork:
    network = build_learner(config, (inputs,), outputs)
    assert isinstance(network, MemoryAugmentedNetwork)
    return network


def build_task(config: Config, device: torch.device, *, progress: bool) -> SequenceTask:
    sc, ec = config.sequence, config.eval
    if config.data.dataset == "copy":
        sampler = CopySampler(
            bits=sc.bits, min_length=sc.min_length, max_length=sc.max_length, seed=config.seed
        )
        return CopyTask(
            sampler,
            device=device,
            eval_seed=ec.seed,
            eval_max_length=sc.eval_max_length,
            eval_per_length=max(1, ec.episodes // 10),
        )
    splits = build_splits(config.data, progress=progress)
    train = pick_split(splits, config.train.split, "train.split")
    return OneShotTask(
        OneShotSequenceSampler(
            train, classes=sc.classes, instances=sc.instances, seed=config.seed, device=device
        ),
        OneShotSequenceSampler(
            pick_split(splits, ec.split, "eval.split"),
            classes=sc.classes,
            instances=sc.instances,
            device=device,
        ),
        wipe_memory=_wipes(config),
        eval_episodes=ec.episodes,
        eval_seed=ec.seed,
        eval_batch=ec.batch_size,
    )


def sequence_train(
    config: Config,
    *,
    resume: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train an ``ntm`` / ``mann`` / ``lstm`` config; returns the summary in ``result.json``.

    The run folder, resuming and interrupts behave as in
    :func:`mnemeta.recipes.meta_train.meta_train`.
    """
    check_values(config)
    if learner_spec(config).recipe != "sequence":
        raise ConfigError(f"{config.model.algorithm!r} is not a sequence model")
    if config.train.compile != "off":
        raise ConfigError(
            f"train.compile={config.train.compile!r} applies to the episodic learners' meta-loss; "
            f"the sequence models ({config.model.algorithm}) run eagerly: leave it at 'off'"
        )
    with (
        process_group(config.device) as (ranks, device),
        run_folder(ranks, config.run_dir, resume=resume is not None, overwrite=overwrite) as folder,
    ):
        if ranks.world_size > config.train.meta_batch:
            raise ConfigError(
                f"train.meta_batch={config.train.meta_batch} sequences cannot be shared by "
                f"{ranks.world_size} ranks; raise train.meta_batch to at least "
                f"{ranks.world_size} (a multiple of it uses every rank evenly) or start fewer ranks"
            )
        return _sequence_train(config, folder, resume, progress, ranks, device)


def _sequence_train(
    config: Config,
    folder: RunFolder,
    resume: str | None,
    progress: bool | None,
    ranks: Ranks,
    device: torch.device,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    tc = config.train
    run_dir = config.run_dir
    main = ranks.is_main  # rank 0 (or the one process): the only one that writes and prints
    show = (sys.stderr.isatty() if progress is None else progress) and main
    # This rank's share of every batch of sequences: all of it for one process.
    lo, hi = ranks.shard(tc.meta_batch)
    part = (lo, hi) if ranks.active else None

    # ---- build ----
    torch.manual_seed(config.seed)
    task = build_task(config, device, progress=show)
    model = build_network(config, task.inputs, task.outputs).to(device)
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_schedule(config, optimizer)
    running: dict[str, Tensor] = {}
    count = 0
    start = 0
    carry: RecurrentState | None = None
    clock = TrainingClock(tc.max_minutes)
    if resume is not None:
        state = load_checkpoint(resume)
        check_resumable(checkpoint_config(state), config, resume)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        task.set_state(state["rng"]["task"])
        torch.set_rng_state(state["rng"]["torch"])
        running = {k: v.to(device) for k, v in state["running"].items()}
        count = int(state["count"])
        start = int(state["step"])
        if state.get("carry") is not None:
            carry = _carry_from_tensors(model, [t[lo:hi] for t in state["carry"]], device)
        clock = resumed_clock(state, config, resume, evaluated=(run_dir / "result.json").is_file())
    ranks.broadcast_module(model)
    statistics = running_statistics(model) if ranks.active else []
    folder.begin()
    if main:
        atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    log = MetricsLog(run_dir, resume_step=start if resume is not None else None, write=main)

    def checkpoint(step: int) -> None:
        keep = None
        if carry is not None and not _wipes(config):
            # Every rank's share of the carried memory, in batch order: rank 0 saves it whole.
            keep = [ranks.assemble(t.detach(), tc.meta_batch, lo).cpu() for t in carry.memory]
        if not main:
            return
        save_checkpoint(
            run_dir / "checkpoint.pt",
            {
                "config": config.to_json(),
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "task": task.get_state()},
                "running": {k: v.cpu() for k, v in running.items()},
                "count": count,
                "carry": keep,
                "train_seconds": clock.seconds(),
                # What mnemeta.load needs to rebuild the network without the data (an
                # utterance embedding is not an image of data.image_size pixels squared).
                "input_shape": [task.inputs],
                "outputs": task.outputs,
            },
        )

    # ---- the loop ----
    model.train()
    clock.start()
    bar = tqdm(
        range(start, tc.steps), initial=start, total=tc.steps, disable=not show, desc=config.name
    )
    done, out_of_time = start, False
    log_every = log_period(config)
    with StopRequests() as stop:
        for step in bar:
            loss, metrics, carry = task.train_loss(model, tc.meta_batch, carry, part)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if ranks.active:
                metrics, (stopping, out_of_time) = ranks.reduce_step(
                    list(model.parameters()),
                    metrics,
                    weight=(hi - lo) / tc.meta_batch,
                    buffers=statistics,
                    votes=(stop.requested, clock.out_of_time()),
                )
            if tc.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            for k, v in metrics.items():
                running[k] = running.get(k, torch.zeros((), device=device)) + v.detach()
            count += 1
            done = step + 1
            if not ranks.active:
                out_of_time = clock.out_of_time()
            last = done == tc.steps or out_of_time
            if done % log_every == 0 or last:
                row: dict[str, Any] = {"step": done, "sequences": done * tc.meta_batch}
                # Accuracies in percent, as every accuracy mnemeta shows.
                row.update(
                    {
                        k: (100.0 if k.startswith("accuracy") else 1.0) * float(v) / count
                        for k, v in running.items()
                    }
                )
                row["seconds"] = round(clock.seconds(), 2)  # of the whole run, across resumes
                running, count = {}, 0
                log.log(row)
                summary_line = "  ".join(
                    f"{k} {row[k]:.4g}" for k in ("loss", "bits_wrong", "accuracy_2nd") if k in row
                )
                bar.set_postfix_str(summary_line)
                if not show and main:
                    print(
                        f"step {done}/{tc.steps}  {summary_line}  {row['seconds']:.0f}s", flush=True
                    )
            elif not show and main and done == start + 1:
                # Without a progress bar, say at once that training runs (the first logged
                # line may be minutes away); not a metrics row, so resumed logs stay exact.
                print(f"step {done}/{tc.steps}  (a line every {log_every} steps)", flush=True)
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
    if not main:
        log.close()
        # Rank 0 evaluates and writes the results; this rank's part of the run is done.
        return {"name": config.name, "steps_done": done, "rank": ranks.rank, "test": None}

    # ---- final evaluation, report, plots ----
    model.eval()
    t_eval0 = time.perf_counter()
    report = task.evaluate(model)
    t_eval = time.perf_counter() - t_eval0
    log.close()
    summary = {
        "name": config.name,
        "algorithm": config.model.algorithm,
        "steps": tc.steps,
        "steps_done": done,
        "stopped_by_max_minutes": out_of_time,
        "sequences": done * tc.meta_batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "device_name": device_name(device),
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
    atomic_write_text(run_dir / "result.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(run_dir / "result.md", _markdown(summary) + "\n")
    from mnemeta.recipes.plots import plot_copy_weights, plot_sequence_curves

    plot_sequence_curves(log.rows, run_dir / "curves.png", title=config.name)
    if isinstance(task, CopyTask) and config.model.algorithm == "ntm":
        plot_copy_weights(model, task, run_dir / "copy_weights.png")
    return summary


def _carry_from_tensors(
    model: MemoryAugmentedNetwork, tensors: list[Tensor], device: torch.device
) -> RecurrentState:
    fresh = model.initial_state(tensors[0].shape[0], device, tensors[0].dtype)
    memory = type(fresh.memory)(*(t.to(device) for t in tensors))
    return fresh._replace(memory=memory)


def _markdown(summary: dict[str, Any]) -> str:
    test = summary["test"]
    lines = [f"# {summary['name']}", ""]
    if test["task"] == "copy":
        within = test["bits_wrong_lengths_1_to_max"]
        lines.append(
            f"bits wrong per sequence, lengths 1-{within['max']}: {within['mean']:.3f} ± "
            f"{within['ci95']:.3f} ({test['sequences_per_length']} sequences per length)"
        )
        lines += ["", "| length | bits wrong per sequence |", "|---|---|"]
        for length, v in test["bits_wrong_by_length"].items():
            lines.append(f"| {length} | {v['bits_wrong']:.2f} ± {v['ci95']:.2f} |")
    else:
        header = " | ".join(f"{i}{_ordinal(int(i))}" for i in test["accuracy_by_instance"])
        cells = " | ".join(
            f"{v['accuracy']:.1f} ± {v['ci95']:.1f}" for v in test["accuracy_by_instance"].values()
        )
        lines += [
            f"{test['classes']}-class episodes, {test['episodes']} test episodes, accuracy (%) "
            "by presentation of a class",
            "",
            f"| model | {header} |",
            "|---" * (len(test["accuracy_by_instance"]) + 1) + "|",
            f"| {summary['algorithm']} | {cells} |",
        ]
    lines += [
        "",
        f"{summary['steps']} steps ({summary['sequences']} sequences), "
        f"{summary['seconds']['train']:.0f} s training on {summary['device_name']}",
    ]
    return "\n".join(lines)


def _ordinal(n: int) -> str:
    return {1: "st", 2: "nd", 3: "rd"}.get(n if n < 20 else n % 10, "th")


def _wipes(config: Config) -> bool:
    """Whether one-shot episodes start from a wiped memory (every sequence learner's key)."""
    return bool(getattr(config.model, "wipe_memory", True))
