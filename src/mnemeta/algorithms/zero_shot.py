"""Zero-shot and name-blended prototypes: a class's name (or a short description) as a shot.

A sentence encoder puts "what is my credit limit" near the words "credit limit", so the
embedding of an intent's name is a prototype before any example exists (zero-shot), and one more
shot once some exist (the name blended with k examples). Names are turned into words by
:func:`mnemeta.data.text.intent_description` (``credit_limit_change`` -> ``credit limit change``).
"""

from __future__ import annotations

from torch import Tensor, nn

from mnemeta.algorithms.protonet import cosine_similarity


def blended_prototypes(
    support_z: Tensor, support_y: Tensor, n_way: int, name_z: Tensor, *, name_weight: float = 1.0
) -> Tensor:
    """Class means with each class's name embedding counted as ``name_weight`` more shots.

    Args:
        support_z: ``(T, S, D)`` support embeddings (S may be 0: zero-shot).
        support_y: ``(T, S)`` labels in ``[0, n_way)``.
        name_z: ``(T, n_way, D)`` the embedding of each episode class's name.

    Returns:
        ``(T, n_way, D)``: ``(Σ support of the class + w · name) / (shots + w)``.
    """
    onehot = nn.functional.one_hot(support_y, n_way).to(support_z.dtype)  # (T, S, N)
    sums = onehot.transpose(1, 2) @ support_z + name_weight * name_z
    counts = onehot.sum(dim=1) + name_weight
    return sums / counts.unsqueeze(-1)


def zero_shot_logits(query_z: Tensor, name_z: Tensor, *, scale: float = 10.0) -> Tensor:
    """``(T, Q, D)`` queries, ``(T, N, D)`` names -> ``(T, Q, N)`` scaled cosine logits."""
    return scale * cosine_similarity(query_z, name_z)


def episode_names(names_z: Tensor, classes: Tensor) -> Tensor:
    """The name embeddings of each episode's classes: ``(C, D)`` table, ``(T, N)`` indices ->
    ``(T, N, D)``."""
    return names_z.to(classes.device)[classes]


__all__ = ["blended_prototypes", "episode_names", "zero_shot_logits"]
