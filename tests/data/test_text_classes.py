"""Texts -> cached embeddings -> a class table that the ordinary EpisodeSampler draws from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mnemeta.data.classes import ClassImages
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.data.text import LabelledTexts
from mnemeta.data.text_classes import embed_texts, group_by_label, text_classes
from mnemeta.errors import DataError


class CountingEncoder:
    """A stand-in for SentenceEncoder: a text's embedding is its length and first letter."""

    identity = "counting@0"
    dim = 2

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str], *, batch_size: int = 128, progress: bool = False):
        self.calls += 1
        return torch.tensor([[float(len(t)), float(ord(t[0]))] for t in texts])


def test_embeddings_are_cached_by_encoder_and_texts(tmp_path: Path) -> None:
    enc = CountingEncoder()
    first = embed_texts(["ab", "c"], enc, cache_dir=tmp_path)  # type: ignore[arg-type]
    again = embed_texts(["ab", "c"], enc, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert enc.calls == 1 and torch.equal(first, again)
    embed_texts(["a", "bc"], enc, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert enc.calls == 2  # other texts (same characters): another key
    enc.identity = "counting@1"
    embed_texts(["ab", "c"], enc, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert enc.calls == 3  # another encoder: another key
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_damaged_cache_file_is_rebuilt(tmp_path: Path) -> None:
    enc = CountingEncoder()
    embed_texts(["ab", "c"], enc, cache_dir=tmp_path)  # type: ignore[arg-type]
    (file,) = tmp_path.glob("embeddings-*.safetensors")
    blob = bytearray(file.read_bytes())
    blob[-3] ^= 0xFF
    file.write_bytes(bytes(blob))
    with pytest.warns(RuntimeWarning, match="damaged text embedding cache"):
        out = embed_texts(["ab", "c"], enc, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert enc.calls == 2 and out.tolist() == [[2.0, 97.0], [1.0, 99.0]]


def test_group_by_label_pads_and_keeps_order() -> None:
    z = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    table = group_by_label(z, ["b", "a", "b", "b", "a"])
    assert table.names == ("a", "b") and table.counts.tolist() == [2, 3]
    assert table.images.shape == (2, 3, 2) and table.example_shape == (2,)
    assert table.images[0, :2].tolist() == [[2.0, 3.0], [8.0, 9.0]]
    assert table.images[0, 2].tolist() == [0.0, 0.0]  # padding
    with pytest.raises(DataError, match="class 'c' has no examples"):
        group_by_label(z, ["b", "a", "b", "b", "a"], names=["a", "c"])


def test_episodes_over_embeddings_are_the_embeddings_themselves(tmp_path: Path) -> None:
    texts = LabelledTexts(
        tuple(f"{c}{'x' * i}" for c in "abcd" for i in range(4)),
        tuple(c for c in "abcd" for _ in range(4)),
    )
    splits = text_classes(
        texts,
        CountingEncoder(),
        {"all": ["a", "b", "c", "d"]},  # type: ignore[arg-type]
        cache_dir=tmp_path,
    )
    batch = EpisodeSampler(splits["all"], ways=3, shots=2, queries=2, seed=0).sample(5)
    assert batch.support_x.dtype == torch.float32 and batch.support_x.shape == (5, 6, 2)
    # Not rescaled like pixels: the first letter's code point survives, and each label's rows
    # share it (one class, one letter).
    letters = batch.support_x[..., 1]
    for t in range(5):
        for label in range(3):
            assert letters[t][batch.support_y[t] == label].unique().numel() == 1
    assert letters.min() >= ord("a")
    with pytest.raises(DataError, match="class '.' of split 'all' has only 4 examples"):
        EpisodeSampler(splits["all"], ways=3, shots=3, queries=2, split="all")


def test_one_shot_sequences_over_embeddings_keep_their_values() -> None:
    from mnemeta.data.sequences import OneShotSequenceSampler

    z = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2) / 7.0
    table = ClassImages.from_equal_classes(z, ["a", "b", "c", "d"])
    batch = OneShotSequenceSampler(table, classes=2, instances=3, seed=0).sample(2)
    assert batch.images.shape == (2, 6, 2)
    # Not divided by 255 like pixels: every value is one of the table's.
    assert set(batch.images.reshape(-1).tolist()) <= set(z.reshape(-1).tolist())


class LetterTokenizer(CountingEncoder):
    """A stand-in tokenizer: [CLS]=1, one id per letter (a=3, b=4, ...), [SEP]=2, padding 0."""

    pad_id = 0

    def tokenize(self, texts: list[str], *, max_tokens: int) -> torch.Tensor:
        out = torch.zeros(len(texts), max_tokens, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [*[1, *(ord(c) - 94 for c in text)][: max_tokens - 1], 2]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def test_token_tables_are_padded_truncated_and_drawn_unscaled(tmp_path: Path) -> None:
    texts = LabelledTexts(("ab", "a", "abcdef", "b", "ba", "bb"), ("x", "x", "x", "y", "y", "z"))
    splits = text_classes(
        texts,
        LetterTokenizer(),  # type: ignore[arg-type]
        {"all": ["x", "y", "z"]},
        cache_dir=tmp_path,
        inputs="tokens",
        max_tokens=5,
    )
    table = splits["all"]
    assert table.is_tokens and not table.is_features and table.images.dtype == torch.int64
    assert table.images.shape == (3, 3, 5) and table.example_shape == (5,)
    assert table.counts.tolist() == [3, 2, 1]
    assert table.images[0].tolist() == [
        [1, 3, 4, 2, 0],
        [1, 3, 2, 0, 0],
        [1, 3, 4, 5, 2],  # "abcdef" cut at 5 ids, [SEP] kept
    ]
    assert table.images[2, 1:].eq(0).all()  # padding rows hold the padding id
    assert not list(tmp_path.iterdir())  # tokens are not cached
    two = table.subset(["x", "y"])
    batch = EpisodeSampler(two, ways=2, shots=1, queries=1, seed=0).sample(3)
    assert batch.support_x.dtype == torch.int64 and batch.support_x.shape == (3, 2, 5)
    assert set(batch.query_x.reshape(-1).tolist()) <= set(two.images.reshape(-1).tolist())
    with pytest.raises(DataError, match="class 'z' of split 'all' has only 1 examples"):
        EpisodeSampler(table, ways=2, shots=1, queries=1, split="all")


def test_class_images_refuses_other_integer_tables() -> None:
    with pytest.raises(DataError, match="int64 \\(classes, per_class, seq_len\\) token ids"):
        ClassImages.from_equal_classes(torch.zeros(2, 3, 4, 5, dtype=torch.int64), ["a", "b"])
    with pytest.raises(DataError, match="got torch.int32"):
        ClassImages.from_equal_classes(torch.zeros(2, 3, 4, dtype=torch.int32), ["a", "b"])
