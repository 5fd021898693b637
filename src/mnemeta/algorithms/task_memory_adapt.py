"""Adaptation with a persistent memory of past tasks: retrieve, warm-start, pull, write back.

For each new task (one support set), :class:`MemoryAugmentedAdaptation` wraps a MAML-family
learner (MAML, first-order MAML, Meta-SGD, ANIL) and

1. **retrieves** the ``k`` stored tasks most similar to it (cosine similarity of task
   embeddings, :mod:`mnemeta.algorithms.task_embedding`) and weighs them
   ``ωᵢ = softmax(similarityᵢ / τ)``;
2. **warm-starts** the fast weights at the nearest task's adapted weights, or at their
   ω-weighted mean ``θ̄ = Σᵢ ωᵢ θᵢ``, instead of the meta-learned initialisation;
3. **adapts** with the learner's inner loop, optionally with the memory-weighted update
   ``θ ← θ − α∇L(θ) + β Σᵢ ωᵢ (θᵢ − θ)`` (:class:`~mnemeta.algorithms.inner_loop.MemoryPull`);
4. **writes back** the task: its embedding, its adapted weights (only the adapted tensors:
   the head alone for ANIL), the support loss and accuracy before and after adapting, and the
   caller's ``info``.

Labels are shuffled per episode, so a stored classifier's row ``i`` means "the class that had
label ``i`` *then*". Before a stored head is used, its rows are matched to the new task's
classes through the class prototypes stored beside it
(:func:`~mnemeta.algorithms.task_embedding.match_classes`); without this, a recurring task
would be warm-started with its labels scrambled.

The memory is anything with the :class:`TaskStore` methods; :class:`mnemeta.store.TaskMemory`
is the persistent one. Nothing here changes the learner's meta-parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.func import functional_call

from mnemeta.algorithms.inner_loop import MemoryPull, Params, inner_adapt
from mnemeta.algorithms.maml import MAML
from mnemeta.algorithms.protocol import Predictor
from mnemeta.algorithms.protonet import prototypes
from mnemeta.algorithms.task_embedding import match_classes, task_embedding
from mnemeta.episode import Support
from mnemeta.errors import ConfigError, DataError

#: Key of the class prototypes stored beside a task's weights; parameter names have no "/".
PROTOTYPES = "task/prototypes"

WARM_STARTS = ("weighted", "nearest", None)


class StoredHit(Protocol):
    """One search result: the record's id, its cosine similarity, its info and metrics."""

    @property
    def id(self) -> Any: ...
    @property
    def similarity(self) -> float: ...


class TaskStore(Protocol):
    """What this module needs of a task memory (:class:`mnemeta.store.TaskMemory` has it)."""

    def add(
        self,
        embedding: Tensor,
        params: dict[str, Tensor] | None = ...,
        info: dict[str, Any] | None = ...,
        metrics: dict[str, float] | None = ...,
    ) -> Any: ...

    def search(self, query: Tensor, k: int = ...) -> Sequence[StoredHit]: ...

    def params(self, rid: Any) -> dict[str, Tensor]: ...

    def __len__(self) -> int: ...


@dataclass
class Retrieval:
    """What the memory offers one task.

    Attributes:
        embedding: ``(E,)``, the task's embedding (what is searched with and stored).
        prototypes: ``(n_way, D)`` class prototypes (classification), else ``None``.
        ids: the kept hits, best first (hits below ``min_similarity`` or of another shape are
            dropped).
        similarities: ``(h,)`` cosine similarities of the kept hits.
        weights: ``(h,)``, ω = softmax(similarity / τ).
        params: the kept hits' adapted weights, class rows matched to this task's labels.
    """

    embedding: Tensor
    prototypes: Tensor | None
    ids: list[Hashable] = field(default_factory=list)
    similarities: Tensor = field(default_factory=lambda: torch.zeros(0))
    weights: Tensor = field(default_factory=lambda: torch.zeros(0))
    params: list[Params] = field(default_factory=list)

    @property
    def anchor(self) -> Params | None:
        """θ̄ = Σᵢ ωᵢ θᵢ over the kept hits; ``None`` if there are none."""
        if not self.params:
            return None
        return {
            k: torch.tensordot(self.weights.to(v), torch.stack([p[k] for p in self.params]), dims=1)
            for k, v in self.params[0].items()
        }


class MemoryAugmentedAdaptation:
    """A MAML-family learner whose ``adapt`` uses and grows a memory of past tasks.

    Args:
        learner: a :class:`~mnemeta.algorithms.maml.MAML` (any of its switches).
        memory: the task store; records are added to it by :meth:`adapt`.
        k: tasks retrieved per new task.
        tau: temperature τ of ω = softmax(similarity / τ); small τ trusts the nearest task.
        beta: β of the memory-weighted inner update; 0 disables it.
        warm_start: ``"weighted"`` (start at θ̄), ``"nearest"`` (the best hit's weights) or
            ``None`` (the meta-learned initialisation).
        min_similarity: hits less similar than this are ignored; with none left, adaptation
            starts from the meta-learned initialisation (the memory abstains).
        steps / lr: inner steps and step size; ``None`` means the learner's evaluation values
            (Meta-SGD: its learned step sizes).
        encoder: maps ``(N, *input_shape)`` to features ``(N, D)`` for the class prototypes and
            the task embedding (classification). Default: ``learner.model.encoder``.
        embed: replaces the task embedding: ``Support`` with one task -> ``(1, E)``. Needed for
            regression, where there are no classes.
        class_params: name prefixes of the adapted tensors whose first axis indexes the
            classes (the output layer); their rows are matched to the new task's labels.
        write: write each adapted task back to the memory.
    """

    def __init__(
        self,
        learner: MAML,
        memory: TaskStore,
        *,
        k: int = 5,
        tau: float = 0.1,
        beta: float = 0.0,
        warm_start: str | None = "weighted",
        min_similarity: float = -1.0,
        steps: int | None = None,
        lr: float | None = None,
        encoder: Callable[[Tensor], Tensor] | None = None,
        embed: Callable[[Support], Tensor] | None = None,
        class_params: Sequence[str] = ("head.",),
        write: bool = True,
    ) -> None:
        if warm_start not in WARM_STARTS:
            raise ConfigError(
                f"warm_start={warm_start!r} is unknown; choose 'weighted', 'nearest' or None"
            )
        if k < 1 or tau <= 0:
            raise ConfigError(f"need k >= 1 and tau > 0; got k={k}, tau={tau}")
        classification = learner.task == "classification"
        if encoder is None and classification:
            encoder = getattr(learner.model, "encoder", None)
        if classification and encoder is None:
            raise ConfigError(
                "the learner's model has no .encoder for class prototypes; pass encoder="
            )
        if not classification and embed is None:
            raise ConfigError(
                "regression tasks have no classes to embed; pass embed=, a function from a "
                "one-task Support to a (1, E) embedding"
            )
        self.learner, self.memory = learner, memory
        self.k, self.tau, self.beta = k, tau, beta
        self.warm_start, self.min_similarity = warm_start, min_similarity
        self.steps = learner.eval_inner_steps if steps is None else steps
        self.lr = lr
        self.encoder, self.embed = encoder, embed
        self.class_params = tuple(class_params)
        self.write = write

    # ---- the learner-level API ----
    def adapt(
        self, support: Support, *, info: Sequence[Mapping[str, Any]] | None = None
    ) -> Predictor:
        """Retrieve, adapt and (if ``write``) store each task of ``support``, in order.

        Tasks are handled one after another, so a later task of the batch can retrieve an
        earlier one. ``info[t]`` is stored with task ``t``. Returns a predictor from query
        inputs ``(T, Q, *input_shape)`` to outputs ``(T, Q, n_way)`` (or ``(T, Q, out)``).
        """
        if isinstance(info, Mapping):
            raise ConfigError("info is one mapping per task; pass a list, e.g. info=[{...}]")
        if info is not None and len(info) != support.x.shape[0]:
            raise DataError(
                f"info has {len(info)} entries for {support.x.shape[0]} tasks; give one per task"
            )
        fast_weights = []
        for t in range(support.x.shape[0]):
            one = Support(support.x[t : t + 1], support.y[t : t + 1], support.n_way)
            retrieval = self.retrieve(one)
            start = self.start(retrieval)
            fast = self.fast_weights(one, start, retrieval=retrieval)
            if self.write:
                extra = dict(info[t]) if info is not None else {}
                self.store(one, retrieval, start, fast, info=extra)
            fast_weights.append(fast)

        def predict(query_x: Tensor) -> Tensor:
            return torch.stack(
                [self.forward(fast, query_x[t]) for t, fast in enumerate(fast_weights)]
            )

        return predict

    # ---- the steps, public so that experiments can mix them ----
    def retrieve(self, support: Support) -> Retrieval:
        """Embed the one task of ``support`` and look up its nearest stored tasks."""
        protos = None
        if self.embed is not None:
            embedding = self.embed(support)[0]
        else:
            assert self.encoder is not None  # checked in __init__
            with torch.no_grad():
                features = self.encoder(support.x[0]).unsqueeze(0)
            protos = prototypes(features, support.y, support.n_way)[0]
            embedding = task_embedding(features, support.y, support.n_way)[0]
        retrieval = Retrieval(embedding.detach().cpu(), None if protos is None else protos.cpu())
        if len(self.memory) == 0:
            return retrieval
        adapted, _ = self._split()
        for hit in self.memory.search(retrieval.embedding, k=self.k):
            if hit.similarity < self.min_similarity:
                continue
            stored = self.memory.params(hit.id)
            params = self._aligned(stored, retrieval.prototypes, adapted)
            if params is None:
                continue
            retrieval.ids.append(hit.id)
            retrieval.params.append(params)
            retrieval.similarities = torch.cat(
                [retrieval.similarities, torch.tensor([float(hit.similarity)])]
            )
        if retrieval.params:
            retrieval.weights = torch.softmax(retrieval.similarities / self.tau, dim=0)
        return retrieval

    def start(self, retrieval: Retrieval) -> Params:
        """The fast weights to adapt from: the meta-learned initialisation, or the memory's."""
        adapted, _ = self._split()
        init = {k: v.detach() for k, v in adapted.items()}
        if self.warm_start is None or not retrieval.params:
            return init
        if self.warm_start == "nearest":
            chosen = retrieval.params[0]
        else:
            anchor = retrieval.anchor
            assert anchor is not None
            chosen = anchor
        # Tensors the memory does not hold (e.g. a stored head only) keep their initial values.
        return {k: chosen[k].to(v) if k in chosen else v for k, v in init.items()}

    def fast_weights(
        self, support: Support, start: Params, *, retrieval: Retrieval, steps: int | None = None
    ) -> Params:
        """``steps`` inner steps on the one task of ``support`` from ``start``, with the memory
        pull when ``beta`` > 0 and something was retrieved. Returns detached weights."""
        _, fixed = self._split()
        pull = None
        anchor = retrieval.anchor
        if self.beta > 0 and anchor is not None:
            pull = MemoryPull({k: v.to(start[k]) for k, v in anchor.items()}, self.beta)
        fast = inner_adapt(
            self.learner.model,
            start,
            fixed,
            support.x[0],
            support.y[0],
            loss_fn=self.learner.loss_fn,
            steps=self.steps if steps is None else steps,
            lr=self._lr(),
            first_order=True,
            pull=pull,
        )
        return {k: v.detach() for k, v in fast.items()}

    def forward(self, fast: Params, x: Tensor) -> Tensor:
        """The learner's model with ``fast`` weights on one task's inputs ``(n, *input_shape)``."""
        _, fixed = self._split()
        with torch.no_grad():
            return functional_call(self.learner.model, {**fixed, **fast}, (x,))

    def store(
        self,
        support: Support,
        retrieval: Retrieval,
        start: Params,
        fast: Params,
        *,
        info: dict[str, Any] | None = None,
    ) -> Any:
        """Write one adapted task to the memory; returns its record id.

        Stored: the embedding; the adapted tensors (and the class prototypes, for matching
        labels later); support loss (and accuracy) at the starting point and after adapting;
        ``info`` plus how the task was adapted.
        """
        x, y = support.x[0], support.y[0]
        metrics: dict[str, float] = {}
        for when, weights in (("before", start), ("after", fast)):
            out = self.forward(weights, x)
            metrics[f"support_loss_{when}"] = float(self.learner.loss_fn(out, y))
            if self.learner.task == "classification":
                metrics[f"support_accuracy_{when}"] = float((out.argmax(-1) == y).float().mean())
        params = {k: v.detach().cpu() for k, v in fast.items()}
        if retrieval.prototypes is not None:
            params[PROTOTYPES] = retrieval.prototypes
        record_info: dict[str, Any] = {
            "n_way": support.n_way,
            "support_size": int(x.shape[0]),
            "steps": self.steps,
            "warm_start": self.warm_start if retrieval.params else None,
            "beta": self.beta,
            "retrieved": [_jsonable(i) for i in retrieval.ids],
            **(info or {}),
        }
        return self.memory.add(retrieval.embedding, params, record_info, metrics)

    # ---- internals ----
    def _split(self) -> tuple[Params, Params]:
        return self.learner.split_params()

    def _lr(self) -> float | Params:
        if self.lr is not None:
            return self.lr
        lr = self.learner.inner_step_sizes(training=False)
        return {k: v.detach() for k, v in lr.items()} if isinstance(lr, dict) else lr

    def _aligned(
        self, stored: dict[str, Tensor], protos: Tensor | None, adapted: Params
    ) -> Params | None:
        """A stored task's weights in this task's label order; ``None`` if they do not fit the
        learner (another n_way, another model)."""
        params = {k: v for k, v in stored.items() if k in adapted}
        if not params or any(v.shape != adapted[k].shape for k, v in params.items()):
            return None
        class_keys = [k for k in params if k.startswith(self.class_params)]
        if protos is not None and class_keys:
            old = stored.get(PROTOTYPES)
            if old is None or old.shape != protos.shape:
                return None
            perm = match_classes(protos, old.to(protos))
            params = {k: v[perm] if k in class_keys else v for k, v in params.items()}
        return params


def _jsonable(rid: Any) -> Any:
    return rid if isinstance(rid, (int, str)) else str(rid)
