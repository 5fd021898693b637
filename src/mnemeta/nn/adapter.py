"""Backbones over precomputed feature vectors (sentence embeddings): identity and an adapter.

A frozen sentence encoder turns each utterance into one vector once (cached); what is then
meta-trained is small: a residual projection ``x + W₂ σ(W₁ x)`` (He et al. 2016's identity
shortcut, as in the adapters of Houlsby et al. 2019), whose last layer starts at zero so that
step 0 *is* the frozen embedding. Meta-training it episodically takes minutes on a CPU, and any
head sits on top: ProtoNet, MAML or Meta-SGD (ANIL-style, adapting only the head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mnemeta.checks import checked
from mnemeta.errors import ConfigError
from mnemeta.registry import BACKBONES, BackboneSpec


def _features(input_shape: tuple[int, ...], expected: int, name: str) -> int:
    n = math.prod(input_shape)
    if n != expected:
        raise ConfigError(
            f"{name} was built for {expected} features but input_shape {tuple(input_shape)} "
            f"has {n}; build it with features={n}"
        )
    return n


class Identity(nn.Module):
    """The features as they are: ``(N, D) -> (N, D)``. No parameters (frozen embeddings)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def out_features(self, input_shape: tuple[int, ...]) -> int:
        return _features(input_shape, self.features, "identity")


class ResidualAdapter(nn.Module):
    """``s ⊙ x + b + W₂ ReLU(W₁ LayerNorm(x))``: ``(N, D) -> (N, D)``.

    Args:
        features: D, the embedding width (384 for MiniLM).
        hidden: the bottleneck's width; 0 leaves only the per-feature scale ``s`` and shift
            ``b`` (2·D weights), which transfers best to unseen domains of CLINC150
            (``benchmarks/results/text_clinc150.md``: a bottleneck learns the training domains).
        dropout: on the bottleneck, in training only.

    ``s`` starts at one, ``b``, ``W₂`` and its bias at zero: before any training the adapter is
    the identity, so meta-training starts from the frozen encoder's prototypes and can only move
    away from them where the episodes reward it.
    """

    def __init__(self, features: int, hidden: int = 256, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = features
        self.scale = nn.Parameter(torch.ones(features))
        self.shift = nn.Parameter(torch.zeros(features))
        self.branch: nn.Sequential | None = None
        if hidden > 0:
            up = nn.Linear(hidden, features)
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
            self.branch = nn.Sequential(
                nn.LayerNorm(features),
                nn.Linear(features, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                up,
            )

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        out = x * self.scale + self.shift
        return out if self.branch is None else out + self.branch(x)

    def out_features(self, input_shape: tuple[int, ...]) -> int:
        return _features(input_shape, self.features, "adapter")


@dataclass
class IdentityConfig:
    pass


@dataclass
class AdapterConfig:
    # Bottleneck width (256: 2/3 of MiniLM's 384, ~200k weights); 0: only a per-feature scale
    # and shift, the variant that transfers to unseen CLINC150 domains.
    hidden: int = checked(256, ge=0)
    # On the bottleneck in training. 0 by default: dropout under vmap (MAML's GPU strategy)
    # would need per-task randomness; the ProtoNet presets set it.
    dropout: float = checked(0.0, ge=0, lt=1)


def _build_identity(
    cfg: IdentityConfig, in_features: int, *, per_task_statistics: bool
) -> Identity:
    return Identity(in_features)


def _build_adapter(
    cfg: AdapterConfig, in_features: int, *, per_task_statistics: bool
) -> ResidualAdapter:
    # No batch norm, so per_task_statistics changes nothing (LayerNorm is per example).
    return ResidualAdapter(in_features, cfg.hidden, dropout=cfg.dropout)


BACKBONES.register(
    BackboneSpec(
        "identity",
        IdentityConfig,
        "precomputed features as they are (frozen sentence embeddings); nothing to train",
        build=_build_identity,
        takes="features",
    )
)
BACKBONES.register(
    BackboneSpec(
        "adapter",
        AdapterConfig,
        "over precomputed features: s*x + b + W2 relu(W1 norm(x)) (hidden=0: s*x + b), "
        "starting as the identity",
        build=_build_adapter,
        takes="features",
    )
)
