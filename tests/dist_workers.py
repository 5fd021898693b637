"""Rank bodies for ``tests/test_distributed.py``: spawned processes, so not a test module.

Each rank sets the environment torchrun would set (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) and calls the recipes as ``mnemeta train`` does; the recipes
join and leave the gloo process group themselves. Everything runs in float64, one thread.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

#: Glyphs in place of Omniglot, Conv-4 of 8 channels on 16x16 images: a step in milliseconds.
GLYPHS = [
    "data.dataset=glyphs",
    "data.image_size=16",
    "train.split=train",
    "train.queries=2",
    "backbone.hidden=8",
    "train.log_every=1",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "eval.episodes=6",
    "eval.val_episodes=6",
    "eval.batch_size=4",
]
ONE_SHOT = [
    "data.dataset=glyphs",
    "data.image_size=16",  # the glyphs of the episodic runs: rendered once per process
    "model.controller=16",
    "model.memory_rows=16",
    "model.memory_width=6",
    "model.read_heads=2",
    "sequence.classes=3",
    "sequence.instances=4",
    "train.meta_batch=4",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "eval.episodes=6",
    "eval.batch_size=3",
]
#: name -> (preset, settings). ProtoNet at meta_batch 1: one rank trains, the other waits (its
#: batch norm pools a meta-batch, so only that split is exact); Reptile's 3 tasks split 2 + 1.
RUNS: dict[str, tuple[str, list[str]]] = {
    "protonet": (
        "demo_glyphs_protonet",
        [*GLYPHS, "train.ways=5", "train.meta_batch=1", "eval.episodes=10"],
    ),
    "maml": ("maml_omniglot_5w1s", [*GLYPHS, "train.meta_batch=4"]),  # second order
    "reptile": (
        "reptile_omniglot_5w1s",
        [
            *GLYPHS,
            "train.meta_batch=3",
            "train.shots=5",
            "model.inner_steps=2",
            "model.inner_batch=4",
            "model.eval_inner_steps=2",
        ],
    ),
    "mann": ("mann_omniglot_5class", ONE_SHOT),
    "mann_nowipe": ("mann_omniglot_5class_nowipe", ONE_SHOT),
}
STEPS, STOP = 4, 2
#: Meta-RL on 2D navigation: 5 tasks (3 + 2 over the ranks), 3 trajectories of 15 steps, 5 held-out
#: tasks (3 + 2) after 1 inner step. MAML-RL second order with TRPO; RL² with 4 PPO mini-batches
#: of trials, which cut across the ranks' tasks.
NAVIGATION = [
    "rl.trajectories=3",
    "rl.horizon=15",
    "train.meta_batch=5",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "eval.episodes=5",
]
RL_RUNS: dict[str, tuple[str, list[str]]] = {
    "maml_rl": (
        "maml_rl_navigation2d",
        [*NAVIGATION, "model.hidden=[16,16]", "model.eval_steps=1"],
    ),
    "rl2": ("rl2_navigation2d", [*NAVIGATION, "model.hidden=8", "model.minibatches=4"]),
}
RL_STEPS = 3


def train(name: str, out: Path, steps: int = STEPS, resume: bool = False) -> dict[str, Any]:
    """Train ``RUNS[name]`` into ``out`` as ``mnemeta train`` does (``resume``: continue it)."""
    from mnemeta.config import load_config
    from mnemeta.recipes.build import learner_spec
    from mnemeta.recipes.meta_train import meta_train
    from mnemeta.recipes.resume import resume_config
    from mnemeta.recipes.rl_train import rl_train
    from mnemeta.recipes.sequence_train import sequence_train

    preset, settings = RUNS[name] if name in RUNS else RL_RUNS[name]
    items = [*settings, f"train.steps={steps}", f"out_dir={out}", "device=cpu"]
    checkpoint = None
    if resume:
        config, _ = resume_config(out / "checkpoint.pt", [f"train.steps={steps}"])
        config.out_dir = str(out)
        checkpoint = str(out / "checkpoint.pt")
    else:
        config = load_config(preset, items)
    recipe = {"sequence": sequence_train, "rl": rl_train}.get(
        learner_spec(config).recipe, meta_train
    )
    return recipe(config, resume=checkpoint, progress=False)


def rank_main(rank: int, world: int, ports: list[int], root: str, scenario: str) -> None:
    """One rank of ``scenario``; its error, if any, goes to ``root/error<rank>.txt``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    folder = Path(root)
    try:
        if scenario == "train":
            _train_scenario(folder, ports)
        elif scenario in ("die", "hang"):
            _die_scenario(folder, ports, rank, hang=scenario == "hang")
    except BaseException as e:  # reported to the test, which prints it
        (folder / f"error{rank}.txt").write_text(
            json.dumps({"type": type(e).__name__, "message": str(e), "at": time.time()})
            + "\n"
            + traceback.format_exc()
        )
        sys.exit(1)


def _train_scenario(root: Path, ports: list[int]) -> None:
    port = iter(ports)
    for name in ("protonet", "maml", "reptile", "mann"):
        os.environ["MASTER_PORT"] = str(next(port))
        train(name, root / name)
    # Resumed mid-run: stopped at STOP (its checkpoint carries the memory of every rank's
    # sequences), continued to STEPS.
    os.environ["MASTER_PORT"] = str(next(port))
    train("mann_nowipe", root / "mann_nowipe", steps=STOP)
    os.environ["MASTER_PORT"] = str(next(port))
    train("mann_nowipe", root / "mann_nowipe", steps=STEPS, resume=True)
    os.environ["MASTER_PORT"] = str(next(port))
    train("maml", root / "maml_resumed", steps=STOP)
    if int(os.environ["RANK"]) == 0:  # kept for a resume by one process
        shutil.copytree(root / "maml_resumed", root / "maml_at_stop")
    os.environ["MASTER_PORT"] = str(next(port))
    train("maml", root / "maml_resumed", steps=STEPS, resume=True)
    os.environ["MASTER_PORT"] = str(next(port))
    _memory_scenario(root)
    # Meta-RL: whole runs, and MAML-RL stopped after iteration 1 and resumed to 3.
    for name in RL_RUNS:
        os.environ["MASTER_PORT"] = str(next(port))
        train(name, root / name, steps=RL_STEPS)
    os.environ["MASTER_PORT"] = str(next(port))
    train("maml_rl", root / "maml_rl_resumed", steps=1)
    os.environ["MASTER_PORT"] = str(next(port))
    train("maml_rl", root / "maml_rl_resumed", steps=RL_STEPS, resume=True)
    # `mnemeta evaluate` of a checkpoint: its episodes (tasks) split over the ranks, gathered.
    from mnemeta.recipes.evaluate_checkpoint import evaluate_checkpoint
    from mnemeta.recipes.rl_evaluate import evaluate_rl_checkpoint

    os.environ["MASTER_PORT"] = str(next(port))
    evaluate_checkpoint(str(root / "maml"), episodes=7, out=str(root / "evaluate_maml.json"))
    os.environ["MASTER_PORT"] = str(next(port))
    evaluate_rl_checkpoint(str(root / "rl2"), tasks=3, out=str(root / "evaluate_rl2.json"))


def _memory_scenario(root: Path) -> None:
    """Every rank writes its tasks to one task memory; after a barrier each sees all of them."""
    from mnemeta.recipes.distributed import process_group
    from mnemeta.store import TaskMemory

    with process_group("cpu") as (ranks, _):
        path = root / "memory"
        with TaskMemory(path, dim=8) as memory:
            for i in range(5):
                memory.add(
                    torch.randn(8, generator=torch.Generator().manual_seed(10 * ranks.rank + i)),
                    params={"head.weight": torch.full((2, 2), float(ranks.rank))},
                    info={"rank": ranks.rank, "task": i},
                )
            ranks.barrier()
            hits = memory.search(torch.ones(8), k=20)
            seen = sorted((h.info["rank"], h.info["task"]) for h in hits)
        (root / f"memory_seen{ranks.rank}.json").write_text(json.dumps(seen))
        # A task mean from unequal shares (2 tasks of value 1 on rank 0, 1 of value 4 on rank 1).
        mean = ranks.weighted_sum(torch.tensor([1.0, 4.0][ranks.rank]), [2 / 3, 1 / 3][ranks.rank])
        (root / f"weighted_sum{ranks.rank}.json").write_text(json.dumps(float(mean)))
        # Several machines: the records travel to rank 0, which alone writes its local store.
        mine = [(ranks.rank, i, torch.full((8,), 1.0 + ranks.rank + i)) for i in range(3)]
        gathered = ranks.gather_to_main(mine)
        if ranks.is_main:
            with TaskMemory(root / "memory_rank0", dim=8) as memory:
                for rank, i, embedding in gathered:
                    memory.add(embedding, info={"rank": rank, "task": i})
                stored = sorted(
                    [r.info["rank"], r.info["task"]] for r in map(memory.get, memory.ids())
                )
            (root / "memory_gathered.json").write_text(json.dumps(stored))


def _die_scenario(root: Path, ports: list[int], rank: int, *, hang: bool) -> None:
    """Rank 1 dies (as a killed process does: no exception, no goodbye) while drawing step 3,
    or (``hang``) stops there without dying, as a deadlocked or swapped-out process does."""
    from mnemeta.data.sampler import EpisodeSampler

    RUNS["protonet"] = (RUNS["protonet"][0], [*RUNS["protonet"][1], "train.meta_batch=2"])
    os.environ["MASTER_PORT"] = str(ports[0])
    if rank == 1:
        sample, calls = EpisodeSampler.sample, [0]

        def dying(self: EpisodeSampler, *args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == 3:
                if hang:
                    time.sleep(600)  # killed by the test once rank 0 has given up
                os._exit(3)
            return sample(self, *args, **kwargs)

        EpisodeSampler.sample = dying  # type: ignore[method-assign]
    train("protonet", root / "die", steps=STEPS)
