"""The "none of these" threshold of a few-shot classifier, from its own examples only.

No example of an unknown class exists when a user adds classes, so both sides are estimated from
the stored examples. Scored against its own class's prototype built without it (leave-one-out),
an example is a *known* query; scored against the *other* classes, it is a query of a class the
classifier does not know (its best cosine is how well an unknown can fit). The threshold keeps
``keep`` (90% by default) of the leave-one-out known queries: the rule that held up on CLINC150
(``benchmarks/results/classifier_clinc150.md``), where the other rule, rejecting 90% of the
simulated unknowns, also rejected about half of the in-scope queries, because a neighbouring
intent of the same domain fits much better than a real out-of-scope query does. When no class
has two vectors (one example each and no names) there is no leave-one-out query, and the
threshold rejects ``keep`` of the simulated unknowns instead.

Recomputed whenever classes are added, removed, confirmed or a head is fitted, from at most
``sample`` examples (evenly spread over the store), so that it costs O(sample × classes × dim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mnemeta.algorithms.open_set import rejection_threshold

_UNKNOWN_SAMPLE = 100  # examples scored against every class when there are known queries


@dataclass(frozen=True)
class Calibration:
    """A threshold and what it was measured on."""

    threshold: float
    rule: str  # "known" (keeps `keep` of known queries) or "unknown" (rejects `keep` of them)
    keep: float
    known_kept: float  # the fraction of leave-one-out known queries kept (nan: none)
    unknown_rejected: float  # the fraction of simulated unknown queries rejected
    examples: int
    classes: int

    def as_dict(self) -> dict[str, float | int | str | None]:
        return {
            "value": self.threshold,
            "rule": self.rule,
            "keep": self.keep,
            "known_kept": None if self.known_kept != self.known_kept else self.known_kept,
            "unknown_rejected": self.unknown_rejected,
            "examples": self.examples,
            "classes": self.classes,
        }


def calibrate(
    z: Tensor,
    y: Tensor,
    sums: Tensor,
    counts: Tensor,
    *,
    keep: float = 0.9,
    sample: int = 1000,
    vectors: Tensor | None = None,
) -> Calibration | None:
    """The threshold from unit example embeddings and the class sums they belong to.

    Args:
        z: ``(N, D)`` unit embeddings of stored examples.
        y: ``(N,)`` their class indices into ``sums``.
        sums: ``(C, D)`` per class, the sum of its unit embeddings plus its name's (if names
            count as a shot); ``counts``: ``(C,)`` how many vectors each sum holds.
        keep: the fraction of known queries to keep (or, without any, of simulated unknowns to
            reject).
        sample: at most this many examples are scored.
        vectors: ``(C, D)`` the class vectors queries are scored against, if not the
            normalised sums (an adapted head's rows).

    Returns:
        None when fewer than two classes exist (nothing can stand in for an unknown).
    """
    if sums.shape[0] < 2 or z.shape[0] == 0:
        return None
    if z.shape[0] > sample:
        pick = torch.linspace(0, z.shape[0] - 1, sample).round().long()
        z, y = z[pick], y[pick]
    protos = torch.nn.functional.normalize(sums, dim=1) if vectors is None else vectors
    # Leave-one-out: the own class's prototype without this example (none if it was alone).
    # O(n·D): cheap at any number of classes.
    own_sum = sums[y] - z
    own = (torch.nn.functional.normalize(own_sum, dim=1) * z).sum(dim=1)
    known = own[(counts[y] > 1) & (own_sum.norm(dim=1) > 1e-6)]
    # The unknown side costs O(n·C·D); with known queries it only reports how many simulated
    # unknowns the threshold rejects, so fewer examples do (a tenth of the time at 10⁴ classes).
    m = z.shape[0] if not known.numel() else min(z.shape[0], _UNKNOWN_SAMPLE)
    pick = torch.linspace(0, z.shape[0] - 1, m).round().long()
    others = z[pick] @ protos.T  # (m, C)
    others[torch.arange(m), y[pick]] = -float("inf")
    unknown = others.max(dim=1).values
    if known.numel():
        rule, threshold = "known", float(torch.quantile(known.double(), 1 - keep))
        kept = float((known >= threshold).float().mean())
    else:
        rule, threshold, kept = "unknown", rejection_threshold(unknown, keep), float("nan")
    rejected = float((unknown < threshold).float().mean())
    return Calibration(threshold, rule, keep, kept, rejected, int(z.shape[0]), int(sums.shape[0]))


def unit(x: Tensor) -> Tensor:
    """Rows scaled to length one (cosine geometry)."""
    return torch.nn.functional.normalize(x.float(), dim=-1)
