"""Task embeddings: one vector per support set, for finding similar past tasks in a TaskMemory.

**Definition.** Let ``p₁ … p_N`` be the class prototypes of a support set (the mean embedding of
each class under the meta-trained backbone, Snell et al. eq. 1), ``uₙ = pₙ / ‖pₙ‖``, and
``ū = (1/N) Σₙ uₙ``. The task embedding is the centred second moment of the prototypes,

    M = (1/N) Σₙ (uₙ − ū)(uₙ − ū)ᵀ                  (D × D, symmetric)

packed as its upper triangle (off-diagonal entries × √2, so that dot products of packed vectors
equal Frobenius products of the matrices) and L2-normalised: ``D(D+1)/2`` numbers.

**Why this one.**

* *Invariant to what is arbitrary.* Labels are shuffled per episode, support examples come in any
  order: ``M`` is a symmetric function of the set ``{uₙ}``, so it ignores both (tested exactly).
* *It matches classes to classes.* The cosine of two embeddings is
  ``Σₐ Σ_b ((uₐ − ū)·(v_b − v̄))² / (‖M_u‖ ‖M_v‖)``: a sum over all pairs of classes of their
  squared similarity, which is large when each class of one task has a counterpart in the
  other, and small when the classes merely lie in the same region. The plain mean of the
  prototypes (the first moment) mixes everything: ``ū·v̄`` is one number for all pairs.
* *Centring removes what all images share.* Conv-4 features come out of a ReLU, so all
  prototypes lie in the positive orthant and any two tasks' mean prototypes had cosine ≈ 0.99
  (measured: 0.995 between unrelated glyph tasks against 0.997 for the same classes with new
  drawings). Subtracting ``ū`` leaves how the task's classes differ from each other, which is
  what identifies it: with a ProtoNet-trained Conv-4 on glyphs, the same classes with new
  drawings were the nearest of 40 stored tasks 92% of the time (the uncentred mean: 78%, the
  uncentred second moment: 78%; a random Conv-4: 42%, 35%, 35%; chance 2.5%; 5-way 1-shot,
  Conv-4 with 64 channels after 150 ProtoNet steps). On Omniglot, with a Conv-4 after 600
  ProtoNet steps, a returning 5-way 1-shot task found its own earlier sighting first 98% of the
  time among up to 200 records (``benchmarks/results/task_memory_experiments.md``).

It needs at least two classes (with one, ``M = 0``), and forgets which class is which: to reuse
a stored task's classifier, its rows are matched to the new task's classes separately
(:func:`match_classes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mnemeta.algorithms.protocol import embed_tasks
from mnemeta.algorithms.protonet import prototypes
from mnemeta.episode import Support
from mnemeta.errors import ConfigError, DataError


def embedding_size(feature_dim: int) -> int:
    """Length of a task embedding for ``feature_dim``-dimensional features: ``D(D+1)/2``."""
    return feature_dim * (feature_dim + 1) // 2


def task_embedding(features: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Task embeddings from support features: ``(T, S, D)``, labels ``(T, S)`` ->
    ``(T, D(D+1)/2)``, unit-norm.

    Tasks whose prototypes are all equal (nothing to tell apart) get the zero vector, which has
    cosine similarity 0 with everything.
    """
    if n_way < 2:
        raise ConfigError(
            f"a task embedding needs at least 2 classes to compare (got n_way={n_way}); "
            "use episodes with 2 or more ways"
        )
    u = nn.functional.normalize(prototypes(features, labels, n_way), dim=-1)  # (T, N, D)
    centred = u - u.mean(dim=1, keepdim=True)
    second = centred.transpose(1, 2) @ centred / n_way  # (T, D, D)
    return nn.functional.normalize(pack_symmetric(second), dim=-1)


def support_embedding(encoder: Callable[[Tensor], Tensor], support: Support) -> Tensor:
    """:func:`task_embedding` of each support set under ``encoder``: ``(T, D(D+1)/2)``.

    No gradient is kept. Run the encoder in eval mode: in training mode its batch norm would mix
    the statistics of all the tasks of ``support``, so a task's embedding would depend on the
    others.
    """
    with torch.no_grad():
        return task_embedding(embed_tasks(encoder, support.x), support.y, support.n_way)


def pack_symmetric(m: Tensor) -> Tensor:
    """Upper triangle of symmetric ``(..., D, D)`` as ``(..., D(D+1)/2)``, off-diagonals × √2,
    so that ``pack(a) · pack(b) = Σᵢⱼ aᵢⱼ bᵢⱼ`` (the Frobenius product)."""
    d = m.shape[-1]
    rows, cols = torch.triu_indices(d, d, device=m.device)
    # √2 made in the input's dtype: torch.where on Python scalars would give float32 and cost
    # float64 inputs ~1e-8 of relative accuracy.
    root2 = torch.full(rows.shape, math.sqrt(2.0), dtype=m.dtype, device=m.device)
    scale = torch.where(rows == cols, torch.ones_like(root2), root2)
    return m[..., rows, cols] * scale


def match_classes(new: Tensor, old: Tensor) -> Tensor:
    """Which old class each new class corresponds to: prototypes ``(N, D)``, ``(N, D)`` ->
    a permutation ``(N,)`` with ``perm[j]`` the old class matched to new class ``j``.

    Labels are shuffled per episode, so a stored classifier's row ``i`` means "old class ``i``";
    ``head[perm]`` re-orders it for the new episode. The matching maximises the total cosine
    similarity greedily (the most similar remaining pair first): exact when the tasks share
    their classes, which is when reusing a stored head makes sense at all, and O(N²) for the
    N ≤ 60 of few-shot episodes, where the Hungarian algorithm would need SciPy.
    """
    if new.shape != old.shape:
        raise DataError(f"prototypes disagree in shape: {tuple(new.shape)} vs {tuple(old.shape)}")
    n = new.shape[0]
    sim = nn.functional.normalize(new, dim=-1) @ nn.functional.normalize(old, dim=-1).T
    perm = torch.full((n,), -1, dtype=torch.long)
    order = sim.flatten().argsort(descending=True).tolist()
    used_new: set[int] = set()
    used_old: set[int] = set()
    for flat in order:
        j, i = divmod(flat, n)
        if j in used_new or i in used_old:
            continue
        perm[j] = i
        used_new.add(j)
        used_old.add(i)
        if len(used_new) == n:
            break
    return perm
