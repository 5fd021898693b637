"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Each class is represented by the mean of its support embeddings, its *prototype* (eq. 1),
and a query is classified by a softmax over negative squared Euclidean distances to the
prototypes (eq. 2). Meta-training minimises the query cross-entropy over episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mnemeta.algorithms.protocol import Predictor, accuracy, embed_tasks
from mnemeta.checks import checked
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.errors import ConfigError
from mnemeta.registry import LEARNERS, BuildContext, EpisodicConfig, LearnerSpec


class ProtoNet(nn.Module):
    """Prototypical Networks over any encoder ``(N, *input_shape) -> (N, D)``.

    Args:
        encoder: the embedding network f_φ (Conv-4 in the paper).
        distance: ``"sqeuclidean"`` (the paper's choice, a Bregman divergence, which the paper
            shows works better than cosine) or ``"cosine"``.
        scale: cosine only: logits are ``scale · cos``. Cosines lie in [-1, 1], so with scale 1
            the softmax can never be confident and the loss stays near log N; 10 is the usual
            fixed temperature (Chen et al. 2019's Baseline++; Gidaris & Komodakis 2018).
    """

    def __init__(
        self, encoder: nn.Module, *, distance: str = "sqeuclidean", scale: float = 1.0
    ) -> None:
        super().__init__()
        if distance not in ("sqeuclidean", "cosine"):
            raise ConfigError(
                f"model.distance={distance!r} is unknown; choose sqeuclidean or cosine"
            )
        self.encoder = encoder
        self.distance = distance
        self.scale = scale

    def embed(self, x: Tensor) -> Tensor:
        """``(tasks, n, *input_shape)`` -> ``(tasks, n, D)``, one encoder call for all tasks."""
        return embed_tasks(self.encoder, x)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, Tensor]]:
        # Support and query go through the encoder together: one batch, one set of BN statistics,
        # as in the reference implementation.
        n_s = batch.support_x.shape[1]
        z = self.embed(torch.cat([batch.support_x, batch.query_x], dim=1))
        logits = self._logits(prototypes(z[:, :n_s], batch.support_y, batch.n_way), z[:, n_s:])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, {"loss": loss.detach(), "accuracy": accuracy(logits, batch.query_y).mean()}

    def adapt(self, support: Support) -> Predictor:
        protos = prototypes(self.embed(support.x), support.y, support.n_way)

        def predict(query_x: Tensor) -> Tensor:
            return self._logits(protos, self.embed(query_x))

        return predict

    def _logits(self, protos: Tensor, queries: Tensor) -> Tensor:
        """``(T, N, D)`` prototypes, ``(T, Q, D)`` queries -> ``(T, Q, N)`` logits."""
        if self.distance == "cosine":
            return self.scale * cosine_similarity(queries, protos)
        return -squared_euclidean(queries, protos)


def prototypes(embeddings: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Class means (Snell et al. eq. 1): ``(T, S, D)``, labels ``(T, S)`` -> ``(T, n_way, D)``.

    Written as a one-hot matrix product so that it needs no sorting of the support set and
    works for any number of shots per class.
    """
    onehot = nn.functional.one_hot(labels, n_way).to(embeddings.dtype)  # (T, S, N)
    sums = onehot.transpose(1, 2) @ embeddings  # (T, N, D)
    return sums / onehot.sum(dim=1).clamp_min(1.0).unsqueeze(-1)


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """``(T, Q, D)``, ``(T, N, D)`` -> ``(T, Q, N)`` of cosines."""
    return nn.functional.normalize(a, dim=-1) @ nn.functional.normalize(b, dim=-1).transpose(1, 2)


def squared_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """``(T, Q, D)``, ``(T, N, D)`` -> ``(T, Q, N)`` of ``||a_q - b_n||²``.

    Computed from differences, not ``|a|² + |b|² - 2ab``: the expansion cancels badly in
    float32 when points are close, which is exactly when the softmax is most sensitive.
    """
    return (a.unsqueeze(2) - b.unsqueeze(1)).square().sum(dim=-1)


@dataclass
class ProtoNetConfig(EpisodicConfig):
    # Squared Euclidean: the paper's choice (a Bregman divergence, better than cosine in its
    # §2.7 ablation); "cosine" compares normalised embeddings.
    distance: str = checked("sqeuclidean", choices=("sqeuclidean", "cosine"))
    # cosine only: logits = scale x cosine; 1 keeps v0.1's logits, the text presets use 10.
    scale: float = checked(1.0, gt=0)


def _build(cfg: ProtoNetConfig, ctx: BuildContext) -> ProtoNet:
    # Metric learners keep running BN statistics for evaluation.
    return ProtoNet(
        ctx.build_backbone(per_task_statistics=False), distance=cfg.distance, scale=cfg.scale
    )


LEARNERS.register(
    LearnerSpec(
        "protonet",
        ProtoNetConfig,
        "Prototypical Networks: nearest class mean in embedding space (Snell et al. 2017)",
        build=_build,
    )
)
