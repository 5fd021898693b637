"""The generic tensor cache on data other than Omniglot: several tensors, other dtypes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mnemeta.data.cache import TensorCache, cache_folder, cache_key, check_tensor, content_digest

SPEC = {"format": "test.texts/1", "source": "ab" * 32, "dim": 6}


def entry() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "embeddings": torch.randn(5, 6, generator=g),
        "weights": torch.randn(5, generator=g).to(torch.bfloat16),  # no numpy dtype for this
    }
    return tensors, {"format": "test.texts/1", "ids": json.dumps(["a", "b", "c", "d", "e"])}


def texts_cache(folder: Path) -> TensorCache:
    return TensorCache(folder, label="Texts", rebuild="encoding the texts")


def read(cache: TensorCache, path: Path, key: str) -> object:
    return cache.read(path, key, tensors=("weights", "embeddings"), checked=("ids",))


def test_round_trip_and_no_warning(tmp_path: Path) -> None:
    cache = texts_cache(tmp_path / "c")
    key = cache_key(SPEC)
    path = cache.path("texts-train", key)
    assert path == tmp_path / "c" / f"texts-train-{key[:16]}.safetensors"
    assert read(cache, path, key) is None  # a miss: no file, no warning
    tensors, meta = entry()
    cache.write(path, key, tensors, meta, checked=("ids",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hit = cache.read(path, key, tensors=("weights", "embeddings"), checked=("ids",))
    assert hit is not None
    got, got_meta = hit
    assert got.keys() == tensors.keys()
    for name in tensors:
        assert got[name].dtype == tensors[name].dtype
        assert torch.equal(got[name], tensors[name])
    assert got_meta["ids"] == meta["ids"] and got_meta["key"] == key
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_key_is_the_canonical_json_hash() -> None:
    # Independent of the order of the spec's keys, and exactly SHA-256 of sorted-key JSON.
    reordered = dict(reversed(list(SPEC.items())))
    expected = hashlib.sha256(
        b'{"dim": 6, "format": "test.texts/1", "source": "' + b"ab" * 32 + b'"}'
    ).hexdigest()
    assert cache_key(reordered) == cache_key(SPEC) == expected
    assert cache_key({**SPEC, "dim": 7}) != expected


def test_digest_is_texts_then_tensor_bytes_in_name_order() -> None:
    a = torch.arange(4, dtype=torch.uint8)
    b = torch.tensor([1.0], dtype=torch.float32)
    h = hashlib.sha256(b"names" + bytes([0, 1, 2, 3]) + b"\x00\x00\x80\x3f")  # 1.0f little-endian
    assert content_digest({"b": b, "a": a}, ["names"]) == h.hexdigest()


def _rewrite(path: Path, edit_meta: dict[str, str] | None = None, flip: str | None = None) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    meta.update(edit_meta or {})
    if flip is not None:
        tensors[flip] = tensors[flip].clone()
        tensors[flip].view(-1)[0] += 1
    path.unlink()
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "unreadable"),
        (lambda p: _rewrite(p, {"key": "0" * 64}), "key does not match"),
        (lambda p: _rewrite(p, {"ids": json.dumps(["z", "b", "c", "d", "e"])}), "checksum"),
        (lambda p: _rewrite(p, flip="weights"), "checksum"),
        (lambda p: _rewrite(p, flip="embeddings"), "checksum"),
    ],
)
def test_damaged_entry_is_a_miss_with_a_warning(
    tmp_path: Path, damage: Callable[[Path], object], problem: str
) -> None:
    cache = texts_cache(tmp_path)
    key = cache_key(SPEC)
    path = cache.path("texts", key)
    cache.write(path, key, *entry(), checked=("ids",))
    damage(path)
    with pytest.warns(RuntimeWarning, match=rf"damaged Texts cache file .*{problem}.*encoding the"):
        assert read(cache, path, key) is None


def test_wrong_tensor_names_and_validate(tmp_path: Path) -> None:
    cache = texts_cache(tmp_path)
    key = cache_key(SPEC)
    path = cache.path("texts", key)
    tensors, meta = entry()
    cache.write(path, key, tensors, meta, checked=("ids",))
    with pytest.warns(RuntimeWarning, match=r"holds tensors .*expected \['embeddings'\]"):
        assert cache.read(path, key, tensors=("embeddings",), checked=("ids",)) is None

    def validate(found: dict[str, torch.Tensor], _: dict[str, str]) -> str | None:
        return check_tensor(found["embeddings"], torch.float32, (5, 7), "embeddings")

    with pytest.warns(RuntimeWarning, match=r"embeddings holds torch.float32 \(5, 6\), expected"):
        hit = cache.read(
            path, key, tensors=("embeddings", "weights"), checked=("ids",), validate=validate
        )
    assert hit is None


def test_written_with_the_umask_and_unwritable_folder_warns(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        cache = texts_cache(tmp_path / "shared")
        key = cache_key(SPEC)
        cache.write(cache.path("texts", key), key, *entry())
        assert stat.S_IMODE(cache.path("texts", key).stat().st_mode) == 0o664
    finally:
        os.umask(old)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cache = texts_cache(blocker / "c")
    with pytest.warns(RuntimeWarning, match=r"could not write the Texts cache .*MNEMETA_CACHE"):
        cache.write(cache.path("texts", key), key, *entry())


def test_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNEMETA_CACHE", raising=False)
    assert cache_folder(None, tmp_path) == tmp_path / ".mnemeta_cache"
    monkeypatch.setenv("MNEMETA_CACHE", str(tmp_path / "env"))
    assert cache_folder(None, tmp_path) == tmp_path / "env"
    assert cache_folder(tmp_path / "given", tmp_path) == tmp_path / "given"


def test_cache_folder_beside_read_only_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only data folder caches in the user's cache folder, unless it already holds a
    cache (prepared for everybody); an explicit folder or MNEMETA_CACHE always wins."""
    monkeypatch.delenv("MNEMETA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    try:
        assert cache_folder(None, data) == tmp_path / "xdg" / "mnemeta"
        assert cache_folder(tmp_path / "given", data) == tmp_path / "given"
        monkeypatch.setenv("MNEMETA_CACHE", str(tmp_path / "env"))
        assert cache_folder(None, data) == tmp_path / "env"
        monkeypatch.delenv("MNEMETA_CACHE")
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert cache_folder(None, data) == Path.home() / ".cache" / "mnemeta"
        data.chmod(0o755)
        (data / ".mnemeta_cache").mkdir()
        data.chmod(0o555)
        assert cache_folder(None, data) == data / ".mnemeta_cache"
    finally:
        data.chmod(0o755)
    # A root that does not exist yet (a download will create it): beside it.
    assert cache_folder(None, tmp_path / "new") == tmp_path / "new" / ".mnemeta_cache"
