"""Labelled texts -> sentence embeddings (cached) -> a :class:`ClassImages` table for episodes.

Texts are encoded once, in batches, by a frozen
:class:`~mnemeta.nn.sentence_encoder.SentenceEncoder` and cached as safetensors keyed by the
encoder's identity (name and weights hash) and a hash of the texts, so a second run reads
22,500 CLINC150 embeddings in milliseconds instead of encoding them for half a minute. The
embeddings are then grouped by label into one ``(n_classes, max_per_class, dim)`` float32
table, which the ordinary :class:`~mnemeta.data.sampler.EpisodeSampler` draws episodes from by
tensor indexing, as for images: no per-item Python loop.

For a backbone that runs the encoder itself (``data.inputs = "tokens"``,
:mod:`mnemeta.nn.sentence_transformer`), the texts are instead tokenised once by the encoder's
own tokenizer into the same kind of table of int64 token ids, ``(n_classes, max_per_class,
max_tokens)``. That is not cached: tokenising CLINC150's 22,500 utterances takes 2.5 s on one
CPU thread (measured), less than reading a cache would save.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mnemeta.data.cache import TensorCache, cache_key, check_tensor, user_cache_folder
from mnemeta.data.classes import ClassImages
from mnemeta.data.text import LabelledTexts
from mnemeta.errors import ConfigError, DataError

if TYPE_CHECKING:
    from mnemeta.nn.sentence_encoder import SentenceEncoder

_FORMAT = "mnemeta.text-embeddings/1"


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of the texts in order (NUL-separated, so ``["ab"]`` and ``["a", "b"]`` differ)."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()


def embed_texts(
    texts: Sequence[str],
    encoder: SentenceEncoder,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    batch_size: int = 128,
) -> Tensor:
    """float32 ``(len(texts), dim)`` embeddings of ``texts``, read from the cache when there.

    Args:
        cache_dir: the cache folder; None: ``$MNEMETA_CACHE``, else ``~/.cache/mnemeta``.
    """
    folder = Path(cache_dir).expanduser() if cache_dir else user_cache_folder()
    cache = TensorCache(folder, label="text embedding", rebuild="encoding the texts")
    digest = texts_digest(texts)
    key = cache_key({"format": _FORMAT, "encoder": encoder.identity, "texts": digest})
    path = cache.path(f"embeddings-{len(texts)}", key)

    def validate(found: dict[str, Tensor], meta: dict[str, str]) -> str | None:
        # The width is the encoder's, which is not loaded on a hit: the checksum covers it.
        width = found["embeddings"].shape[-1] if found["embeddings"].dim() == 2 else 0
        return check_tensor(found["embeddings"], torch.float32, (len(texts), width), "embeddings")

    hit = cache.read(path, key, tensors=("embeddings",), validate=validate)
    if hit is not None:
        return hit[0]["embeddings"]
    embeddings = encoder.encode(list(texts), batch_size=batch_size, progress=progress)
    cache.write(
        path,
        key,
        {"embeddings": embeddings},
        {"format": _FORMAT, "encoder": encoder.identity, "texts_sha256": digest},
    )
    return embeddings


def tokenize_texts(texts: Sequence[str], encoder: SentenceEncoder, *, max_tokens: int) -> Tensor:
    """int64 ``(len(texts), max_tokens)`` token ids by the encoder's tokenizer, right-padded
    with its padding id, truncated at ``max_tokens`` (special tokens included)."""
    return encoder.tokenize(list(texts), max_tokens=max_tokens)


def group_by_label(
    embeddings: Tensor,
    labels: Sequence[str],
    *,
    names: Sequence[str] | None = None,
    padding: int = 0,
) -> ClassImages:
    """``(n, dim)`` embeddings with one label each -> a ClassImages of ``(classes, max, dim)``;
    int64 ``(n, seq_len)`` token ids likewise (kept int64), float ones become float32.

    Args:
        names: the classes, in this order (default: the distinct labels, sorted). A name with no
            text is an error.
        padding: the value of the padding rows (token ids: the tokenizer's padding id).
    """
    if embeddings.dim() != 2 or embeddings.shape[0] != len(labels):
        raise DataError(
            f"{tuple(embeddings.shape)} embeddings for {len(labels)} labels; expected (n, dim)"
        )
    order = list(names) if names is not None else sorted(set(labels))
    rows: dict[str, list[int]] = {name: [] for name in order}
    for i, label in enumerate(labels):
        if label in rows:
            rows[label].append(i)
    empty = [name for name, r in rows.items() if not r]
    if empty:
        raise DataError(f"class {empty[0]!r} has no examples; remove it or add labelled texts")
    width = max(len(r) for r in rows.values())
    index = torch.zeros(len(order), width, dtype=torch.long)
    counts = torch.tensor([len(rows[name]) for name in order], dtype=torch.long)
    for c, name in enumerate(order):
        index[c, : len(rows[name])] = torch.tensor(rows[name])
    values = embeddings if embeddings.dtype == torch.int64 else embeddings.to(torch.float32)
    table = values[index]
    # Padding rows are never drawn (the sampler draws below each class's count).
    table[torch.arange(width) >= counts.unsqueeze(-1)] = padding
    return ClassImages(table.contiguous(), counts, tuple(order))


def text_classes(
    texts: LabelledTexts,
    encoder: SentenceEncoder,
    splits: Mapping[str, Sequence[str]],
    *,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    inputs: str = "embeddings",
    max_tokens: int = 64,
) -> dict[str, ClassImages]:
    """Encode ``texts`` once and return one ClassImages per split of label names.

    Args:
        inputs: ``"embeddings"`` (float32 ``(classes, max, dim)``, cached) or ``"tokens"``
            (int64 ``(classes, max, max_tokens)`` token ids of the encoder's tokenizer).
    """
    padding = 0
    if inputs == "tokens":
        table = tokenize_texts(texts.texts, encoder, max_tokens=max_tokens)
        padding = encoder.pad_id
    elif inputs == "embeddings":
        table = embed_texts(texts.texts, encoder, cache_dir=cache_dir, progress=progress)
    else:
        raise ConfigError(f"data.inputs={inputs!r} is unknown; choose embeddings or tokens")
    return {
        name: group_by_label(table, texts.labels, names=sorted(labels), padding=padding)
        for name, labels in splits.items()
    }
