"""Meta-training on several processes (``torchrun``): tasks split over ranks, exact meta-gradients.

DDP's wrapper cannot carry meta-learning: it hooks ``.backward()`` on the module's parameters and
does not see gradients taken with ``torch.autograd.grad(create_graph=True)`` or through
``torch.func`` transforms (pytorch#63812, #47562), which every inner loop here uses. What works,
and what learn2learn's ``distributed_maml.py`` does by hand, is plainer: each rank computes the
meta-gradient of its own tasks with the ordinary single-process code, then the gradients are
all-reduced as one flat buffer and averaged. This module is that, for every recipe, on PyTorch's
own engine (``torch.distributed``, gloo on CPUs, NCCL on GPUs). There is no second loop: the
recipes call :func:`process_group`, :meth:`Ranks.shard` and :meth:`Ranks.reduce_step`.

What is exact. The meta-batch of ``B`` tasks is drawn from one stream, the same on every rank (the
training sampler's generator, seeded by the run's seed as in one process), and rank ``r`` keeps
the contiguous tasks :meth:`Ranks.shard` gives it (sizes differ by at most one; a rank may get
none when ``B`` is smaller than the world). Its loss is the mean over its own tasks, so weighting
its gradient by ``n_r / B`` and summing over ranks is the gradient of the mean over all ``B``
tasks: the update equals one process's update on the same tasks, for any world size, up to the
order of floating-point sums (tests: float64, ``tests/test_distributed.py``). Generators stay in
step across ranks (every rank draws the whole batch's indices and gathers only its own images;
learners that draw per task from the global RNG skip the other ranks' draws), so rank 0's
checkpoint is every rank's state, and a resumed run continues every rank exactly.

One all-reduce per step carries, in one buffer: the weighted gradients, one "has a gradient"
flag per tensor (a tensor without a gradient on every rank keeps ``None``, as in one process),
the weighted running batch-norm statistics, the weighted metrics (so every rank logs the
meta-batch's loss, not its own), and the ranks' votes to stop (a signal, ``train.max_minutes``),
so that every rank stops after the same step.

Meta-RL (``maml_rl``, ``rl2``) needs more than one averaged gradient per step (TRPO's
Fisher-vector products and line search, PPO's mini-batches and statistics), so its learners take
a :class:`mnemeta.rl.shard.TaskShard` (this rank's tasks and :meth:`Ranks.sum`) and sum their
parts of every batch mean themselves; each rank rolls out its tasks with the whole batch's
random draws, so the tasks run as in one process.

What is not exact. Learners whose batch norm normalises the episodes of a meta-batch together
(ProtoNet, Matching, the meta-memory network and Baseline++ on Conv-4 keep running statistics and
embed a meta-batch as one batch) normalise each rank's share together instead: the run is valid
but not one process's; with ``train.meta_batch=1`` it is exact (one rank trains, the others wait).
The MAML family's batch norm is per task (statistics of each task's batch, no running ones) and is
exact; there is no SyncBatchNorm, which would pool statistics across tasks. Dropout and DropBlock
masks are drawn per rank.

Side effects belong to rank 0: the run folder and its lock, config.json, metrics, the progress
bar, printed lines, checkpoints, result.json and plots. Evaluation episodes are sharded (each rank
scores a contiguous range of the fixed episodes) and gathered, so mean ± CI equals one process's.

A rank that dies or hangs makes the others fail at their next collective, with a one-line
:class:`~mnemeta.errors.DistributedError`, after at most ``MNEMETA_DIST_TIMEOUT`` seconds (gloo
often sooner: a closed connection is seen at once). One process (no ``WORLD_SIZE`` or
``WORLD_SIZE=1``) creates no process group and runs the recipes' code as before.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mnemeta.errors import ConfigError, DistributedError
from mnemeta.recipes.build import pick_device
from mnemeta.recipes.run_folder import RunFolder

#: Environment variable: seconds a rank waits in a collective before giving up on the others.
TIMEOUT_ENV = "MNEMETA_DIST_TIMEOUT"
#: Ten minutes: longer than any step, checkpoint write or evaluation shard of the presets on a
#: CPU, short enough that a dead node does not hold a cluster allocation for gloo's 30 minutes.
DEFAULT_TIMEOUT_S = 600.0

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the run: ``rank`` of ``world_size`` (``local_rank`` on its
    machine). ``Ranks()`` is one process, for which every method is a no-op or the identity."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's ``[lo, hi)`` of ``n`` items: contiguous, in rank order, sizes differing by
        at most one (the first ``n % world_size`` ranks take one more). Empty when ``n`` is
        smaller than the world and this rank comes after the ``n``-th."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def reduce_step(
        self,
        params: Sequence[Tensor],
        metrics: dict[str, Tensor],
        *,
        weight: float,
        buffers: Sequence[Tensor] = (),
        votes: Sequence[bool] = (),
    ) -> tuple[dict[str, Tensor], list[bool]]:
        """Average this step over the ranks with one all-reduce; returns the averaged metrics and,
        for each vote, whether any rank cast it.

        ``params``' ``.grad`` are replaced by ``Σ_r weight_r · grad_r`` (``weight`` is this rank's
        share of the meta-batch, ``n_r / B``); a tensor with no gradient on any rank keeps
        ``None``. ``buffers`` (running batch-norm statistics) and ``metrics`` are averaged with
        the same weights, in place and in the returned dict."""
        grads = [p.grad for p in params]
        dtype = _common_dtype([*params, *buffers])
        device = params[0].device if params else torch.device("cpu")
        weighted = [
            (g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
            for p, g in zip(params, grads, strict=True)
        ]
        weighted += [b.detach().reshape(-1).to(dtype) for b in buffers]
        weighted += [v.detach().to(device, dtype).reshape(1) for v in metrics.values()]
        flat = torch.cat(weighted).mul_(weight)
        counts = [float(g is not None) for g in grads] + [float(v) for v in votes]
        flat = torch.cat([flat, torch.tensor(counts, dtype=dtype, device=device)])
        self._collective("the all-reduce of a step's gradients", lambda: dist.all_reduce(flat))
        at = 0
        for p in params:
            n = p.numel()
            value = flat[at : at + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = value.clone()
            else:
                p.grad.copy_(value)
            at += n
        for b in buffers:
            b.copy_(flat[at : at + b.numel()].view_as(b))
            at += b.numel()
        averaged = {k: flat[at + i] for i, k in enumerate(metrics)}
        at += len(metrics)
        tally = flat[at:].tolist() if (votes or any(g is None for g in grads)) else []
        if any(g is None for g in grads):
            for p, g, c in zip(params, grads, tally, strict=False):
                if g is None and c == 0:
                    p.grad = None  # no rank has a gradient for it: as in one process
        return averaged, [c > 0 for c in tally[len(params) :]]

    def weighted_sum(self, value: Tensor, weight: float) -> Tensor:
        """``Σ_r weight_r · value_r`` on every rank (one all-reduce): the mean over all tasks of
        a quantity each rank averaged over its ``n_r`` tasks, with ``weight = n_r / B``. For
        loops whose outer step needs more than one gradient (TRPO's Fisher-vector products and
        line search in meta-RL); ``value`` itself is not changed."""
        if not self.active:
            return value
        total = value.detach().mul(weight)
        self._collective("an all-reduce of a task mean", lambda: dist.all_reduce(total))
        return total

    def sum(self, value: Tensor) -> Tensor:
        """``Σ_r value_r`` on every rank (one all-reduce; ``value`` itself in one process): the
        ``sum_over_ranks`` of a sharded meta-RL batch (:class:`mnemeta.rl.shard.TaskShard`)."""
        return self.weighted_sum(value, 1.0)

    def any(self, votes: Sequence[bool]) -> list[bool]:
        """For each vote, whether any rank cast it (one all-reduce): so that every rank stops
        after the same step when one is signalled or out of time."""
        if not self.active:
            return list(votes)
        tally = torch.tensor([float(v) for v in votes], dtype=torch.float64)
        self._collective("sharing the ranks' votes to stop", lambda: dist.all_reduce(tally))
        return [c > 0 for c in tally.tolist()]

    def assemble(self, local: Tensor, total: int, lo: int) -> Tensor:
        """The ``(total, ...)`` tensor whose rows ``[lo, lo + len(local))`` each rank holds,
        on every rank (a sum of zero-padded parts: exact, whatever the dtype)."""
        if not self.active:
            return local
        full = torch.zeros((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
        full[lo : lo + local.shape[0]] = local
        self._collective("gathering a sharded result", lambda: dist.all_reduce(full))
        return full

    def broadcast_module(self, module: nn.Module) -> None:
        """Give every rank rank 0's weights and buffers (they are built the same from the same
        seed; this makes it so even where an initialiser is not deterministic)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in module.state_dict().values():
                if isinstance(t, Tensor):
                    self._collective("sharing rank 0's weights", lambda t=t: dist.broadcast(t, 0))

    def agree(self, failure: BaseException | None) -> None:
        """Rank 0 tells the others whether it could do what only it does (lock the run folder,
        write its files). The others raise :class:`DistributedError` naming rank 0's error; rank
        0 itself re-raises its own exception after this returns."""
        if not self.active:
            return
        box: list[str | None] = [None if failure is None else str(failure)]
        self._collective("hearing from rank 0", lambda: dist.broadcast_object_list(box, src=0))
        if box[0] is not None and not self.is_main:
            raise DistributedError(f"rank 0 stopped the run: {box[0]}")

    def gather_to_main(self, items: list[T]) -> list[T]:
        """Every rank's ``items``, concatenated in rank order, on rank 0 (``[]`` on the others):
        for writing records from ranks on several machines into one task memory on rank 0's,
        since a store on a network file system is not supported (SQLite's WAL needs one host)."""
        if not self.active:
            return list(items)
        parts: list[list[T] | None] | None = [None] * self.world_size if self.is_main else None
        self._collective(
            "gathering records to rank 0",
            lambda: dist.gather_object(list(items), parts, dst=0),
        )
        return [x for part in parts or [] for x in (part or [])]

    def barrier(self) -> None:
        """Wait for every rank (e.g. after each has written its records to a task memory)."""
        if self.active:
            self._collective("waiting for the other ranks", dist.barrier)

    def _collective(self, what: str, call: object) -> None:
        assert callable(call)
        try:
            call()
        except RuntimeError as e:  # gloo and NCCL errors, DistBackendError among them
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({_first_line(e)}): another "
                "rank died, hung or was stopped; see its output (a rank that stalls is given up "
                f"on after {self.timeout_s:g} s; {TIMEOUT_ENV}=SECONDS changes it)"
            ) from None


SINGLE = Ranks()


def environment_ranks() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None for one process
    (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``)."""
    world = os.environ.get("WORLD_SIZE")
    if world is None or world.strip() in ("", "1"):
        return None
    try:
        rank, size = int(os.environ["RANK"]), int(world)
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise DistributedError(
            f"WORLD_SIZE={world} is set but RANK/LOCAL_RANK are missing or not integers; launch "
            "with torchrun, which sets all three, or unset WORLD_SIZE for one process"
        ) from None
    if not 0 <= rank < size:
        raise DistributedError(f"RANK={rank} is outside WORLD_SIZE={size}; launch with torchrun")
    return rank, size, local


def is_main_process() -> bool:
    """Whether this process is rank 0 (or alone): the one that prints results."""
    env = environment_ranks()
    return env is None or env[0] == 0


def collective_timeout() -> float:
    """``MNEMETA_DIST_TIMEOUT`` in seconds, else :data:`DEFAULT_TIMEOUT_S`."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds")
    return value


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[Ranks, torch.device]]:
    """This process's :class:`Ranks` and device for the run, with the process group joined (and
    left at the end) when launched by torchrun; one process gets ``(SINGLE, pick_device(device))``
    and no process group.

    Under torchrun, ``device`` ``auto`` / ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank,
    NCCL) where CUDA is present, else the CPU (gloo). A group that the caller initialised already
    is used as it is and left alone."""
    env = environment_ranks()
    if env is None:
        yield SINGLE, pick_device(device)
        return
    rank, size, local = env
    timeout = collective_timeout()
    if device.startswith("cuda:"):
        raise ConfigError(
            f"device={device!r} puts every rank on one GPU; under torchrun leave device at auto "
            "or cuda (rank r uses cuda:LOCAL_RANK), or use --device cpu"
        )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local)
        where = torch.device("cuda", local)
    else:
        where = pick_device(device)
    owned = not dist.is_initialized()
    if owned:
        try:
            dist.init_process_group(
                backend="nccl" if where.type == "cuda" else "gloo",
                timeout=datetime.timedelta(seconds=timeout),
                device_id=where if where.type == "cuda" else None,
            )
        except RuntimeError as e:
            raise DistributedError(
                f"rank {rank} of {size} could not join the process group ({_first_line(e)}); "
                "check MASTER_ADDR/MASTER_PORT or the --rdzv-endpoint, and that every rank started"
            ) from None
    else:
        rank, size = dist.get_rank(), dist.get_world_size()
    try:
        yield Ranks(rank, size, local, timeout), where
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


class FollowerFolder(RunFolder):
    """The run folder as ranks other than 0 see it: rank 0 checks, locks and writes it; they only
    read from it (a resumed checkpoint)."""

    def open(self) -> None:
        pass

    def begin(self) -> list[str]:
        self._begun = True
        return []

    def close(self) -> None:
        pass


@contextlib.contextmanager
def run_folder(ranks: Ranks, path: Path, *, resume: bool, overwrite: bool) -> Iterator[RunFolder]:
    """The run folder, opened (checked and locked) by rank 0 alone; the other ranks learn whether
    it could, and stop with rank 0's reason if not, instead of waiting for it at a collective."""
    if not ranks.active:
        with RunFolder(path, resume=resume, overwrite=overwrite) as folder:
            yield folder
        return
    if not ranks.is_main:
        ranks.agree(None)
        yield FollowerFolder(path, resume=resume, overwrite=overwrite)
        return
    stack = contextlib.ExitStack()
    try:
        folder = stack.enter_context(RunFolder(path, resume=resume, overwrite=overwrite))
    except BaseException as e:
        ranks.agree(e)
        raise
    ranks.agree(None)
    with stack:
        yield folder


def pooled_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` has batch norm with running statistics: the learners that normalise a
    meta-batch's episodes together (metric learners), for which a split meta-batch is normalised
    per rank."""
    return any(
        getattr(m, "running_mean", None) is not None and isinstance(m.running_mean, Tensor)
        for m in module.modules()
    )


def running_statistics(module: nn.Module) -> list[Tensor]:
    """The floating running batch-norm statistics of ``module`` (averaged over ranks each step)."""
    return [
        b
        for name, b in module.named_buffers()
        if b.is_floating_point() and name.rsplit(".", 1)[-1] in ("running_mean", "running_var")
    ]


def warn_split_meta_batch(ranks: Ranks, meta_batch: int, learner: nn.Module, name: str) -> None:
    """Rank 0 says once what a split meta-batch means for this run, when it is not plain."""
    if not ranks.active or not ranks.is_main:
        return
    busy = min(meta_batch, ranks.world_size)
    if busy < ranks.world_size:
        print(
            f"note: train.meta_batch={meta_batch} over {ranks.world_size} ranks: "
            f"{ranks.world_size - busy} rank(s) have no task and wait; give train.meta_batch a "
            f"multiple of {ranks.world_size} to use them",
            file=sys.stderr,
            flush=True,
        )
    if busy > 1 and pooled_batch_norm(learner):
        lo, hi = ranks.shard(meta_batch)
        print(
            f"note: {name}'s batch norm normalises the episodes of a step together; over "
            f"{ranks.world_size} ranks each rank's {hi - lo} of the {meta_batch} are normalised "
            "together, so the run is valid but not equal to one process's (train.meta_batch=1 "
            "is exact)",
            file=sys.stderr,
            flush=True,
        )


def _common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype if tensors else torch.get_default_dtype()
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _first_line(e: BaseException) -> str:
    """The first line of an error, without gloo's ``[path/to/source.cc:123]`` prefix."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text if len(text) <= 160 else text[:160].rsplit(" ", 1)[0] + " …"
