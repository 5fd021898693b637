"""A checksummed cache of preprocessed tensors, for any dataset: safetensors files, no pickle.

Decoding a dataset (PNGs into pixels, texts into embeddings) can take seconds to hours; its
result is a few tensors that a later run can read back in milliseconds. A cache file is keyed by
:func:`cache_key` of a *spec*: a hash of the source's content plus every preprocessing parameter
and a format string to bump when the code's output would change. Another source or other
parameters give another key, hence another file; nothing has to be invalidated by hand.

Nothing in a file is trusted on read (:meth:`TensorCache.read`): the tensor names must be the
expected ones, the key stored in the file must match, a dataset's own checks (``validate``:
dtype, shape, metadata) must pass, and a SHA-256 over the checked metadata and the tensor bytes
must match. A truncated, bit-flipped or hand-edited file is reported with a warning and treated
as a miss, so the caller rebuilds it instead of training on damaged data.

Files are written with :func:`mnemeta.io.atomic_write_bytes` (readers see the old file or the
new one, never half of one; two processes building the same entry both end with a valid file),
with the umask's permissions so that a team can share one cache folder (``MNEMETA_CACHE``), and
without fsync: a file mangled by a crash fails the checks and is rebuilt. A folder that cannot be
written is not an error: the data is returned all the same, with a warning.

Usage, for a dataset that turns ``source`` into one tensor::

    cache = TensorCache(cache_folder(cache_dir, root), label="MyData", rebuild="encoding the texts")
    key = cache_key({"format": "mnemeta.mydata/1", "source": sha256_of_source, "dim": 384})
    path = cache.path("mydata-train", key)
    hit = cache.read(path, key, tensors=("embeddings",))
    if hit is None:
        embeddings = encode(...)
        cache.write(path, key, {"embeddings": embeddings}, {"format": "mnemeta.mydata/1"})
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from mnemeta.io import atomic_write_bytes

__all__ = [
    "TensorCache",
    "cache_folder",
    "cache_key",
    "check_tensor",
    "content_digest",
    "user_cache_folder",
]

#: A dataset's own checks of a cache entry: ``validate(tensors, metadata)`` returns what is
#: wrong (a short phrase for the warning), or None if the entry is good.
Validate = Callable[[dict[str, torch.Tensor], dict[str, str]], str | None]


def cache_folder(cache_dir: str | os.PathLike[str] | None, root: Path) -> Path:
    """Where a dataset's cache goes: ``cache_dir`` if given, else ``$MNEMETA_CACHE`` if set,
    else ``root/.mnemeta_cache`` (beside the data), unless ``root`` is read-only and has no such
    folder yet: then the user's cache folder, ``$XDG_CACHE_HOME/mnemeta`` (default
    ``~/.cache/mnemeta``).

    Why the fallback: datasets are often shared read-only (a cluster's data folder, a team's
    copy). Beside such data the cache could never be written, and every run would decode again
    and warn. Keys hash the source's content, not its path, so one user folder serves every
    copy of a dataset. A read-only root that already holds ``.mnemeta_cache`` keeps using it
    (someone prepared it for everybody).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MNEMETA_CACHE")
    if env:
        return Path(env).expanduser()
    beside = root / ".mnemeta_cache"
    if beside.is_dir() or not root.is_dir() or _writable(root):
        return beside
    return user_cache_folder()


def user_cache_folder() -> Path:
    """``$MNEMETA_CACHE`` if set, else ``$XDG_CACHE_HOME/mnemeta`` (default ``~/.cache/mnemeta``):
    the cache of data that has no folder of its own to sit beside (e.g. text embeddings)."""
    env = os.environ.get("MNEMETA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mnemeta"


def _writable(folder: Path) -> bool:
    """Whether files may be created in ``folder``. A folder with every write bit cleared counts
    as read-only even for root (who may write anyway): someone marked it so on purpose."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def cache_key(spec: Mapping[str, Any]) -> str:
    """SHA-256 hex of ``spec`` as canonical JSON (sorted keys).

    ``spec`` holds JSON values: the hash of the source's content, every preprocessing
    parameter, and a format string to bump when the decoded tensors would change.
    """
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def content_digest(tensors: Mapping[str, torch.Tensor], texts: Sequence[str] = ()) -> str:
    """SHA-256 over ``texts`` (UTF-8, in order) and then the raw bytes of each tensor (in name
    order): ~20 ms for 15 MB.

    The parts are concatenated without separators: this guards against damage, not forgery
    (the key and the dataset's checks come first).
    """
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
    for name in sorted(tensors):
        # Bytes through a uint8 view: works for every dtype, bfloat16 included.
        flat = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().data)
    return h.hexdigest()


def check_tensor(
    tensor: torch.Tensor, dtype: torch.dtype, shape: Sequence[int], name: str = ""
) -> str | None:
    """What is wrong with ``tensor`` if it is not ``dtype`` of ``shape``, for a ``validate``."""
    if tensor.dtype == dtype and tuple(tensor.shape) == tuple(shape):
        return None
    what = f"{name} " if name else ""
    dtype_name = str(dtype).removeprefix("torch.")
    return f"{what}holds {tensor.dtype} {tuple(tensor.shape)}, expected {dtype_name} {tuple(shape)}"


class TensorCache:
    """A folder of cached tensors, each entry one safetensors file verified on read.

    Args:
        folder: the cache folder (created on the first write).
        label: names the data in warnings, e.g. ``"Omniglot"``.
        rebuild: what a miss costs, as the caller will do it, e.g. ``"decoding the images"``.
    """

    def __init__(self, folder: Path, *, label: str, rebuild: str) -> None:
        self.folder = Path(folder)
        self.label = label
        self.rebuild = rebuild

    def path(self, stem: str, key: str) -> Path:
        """``folder/STEM-KEY16.safetensors``: a readable stem, then the key's first 16 digits."""
        return self.folder / f"{stem}-{key[:16]}.safetensors"

    def read(
        self,
        path: Path,
        key: str,
        *,
        tensors: Sequence[str],
        checked: Sequence[str] = (),
        validate: Validate | None = None,
        stacklevel: int = 2,
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """The tensors and metadata of the entry at ``path`` if it is complete and intact for
        ``key``; None (with a warning if a file was there) otherwise.

        Args:
            path: from :meth:`path`.
            key: from :func:`cache_key`.
            tensors: the names the file must hold, no more, no fewer.
            checked: the metadata fields covered by the checksum, as given to :meth:`write`.
            validate: the dataset's own checks, run after the key check and before the
                checksum (see :data:`Validate`).
            stacklevel: for the warning, as for :func:`warnings.warn`, counted from the caller.
        """
        if not path.is_file():
            return None
        want = sorted(tensors)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                keys = list(f.keys())
                found = {k: f.get_tensor(k) for k in keys} if sorted(keys) == want else None
        except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
            problem: str | None = f"unreadable: {exc}"
        else:
            if found is None:
                problem = f"holds tensors {keys}, expected {want}"
            else:
                problem = _problem(found, meta, key, checked, validate)
                if problem is None:
                    return found, meta
        warnings.warn(
            f"ignoring the damaged {self.label} cache file {path} ({problem}); {self.rebuild} "
            "again and rewriting it",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )
        return None

    def write(
        self,
        path: Path,
        key: str,
        tensors: Mapping[str, torch.Tensor],
        meta: Mapping[str, str],
        *,
        checked: Sequence[str] = (),
        stacklevel: int = 2,
    ) -> None:
        """Write the entry atomically, with ``key`` and the checksum added to ``meta``.

        ``checked`` names the fields of ``meta`` that the checksum covers (those that a load
        trusts, e.g. class names); others are for people reading the file. A failure to write
        is a warning, not an error: only the next load is slower.
        """
        digest = content_digest(tensors, [meta[m] for m in checked])
        full = {**meta, "key": key, "content_sha256": digest}
        blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=full)
        try:
            # Our own write rather than safetensors' save_file, which creates 0600 files: a cache
            # shared by a team (MNEMETA_CACHE) must follow the umask like any other file.
            atomic_write_bytes(path, blob, fsync=False)
        except OSError as exc:
            # Not fatal: the data is decoded and correct, only the next load will be slow again. A
            # read-only dataset folder (common on shared clusters) is the usual cause.
            warnings.warn(
                f"could not write the {self.label} cache {path} ({exc}); the next load will "
                f"repeat {self.rebuild}: pass cache_dir= or set MNEMETA_CACHE to a writable folder",
                RuntimeWarning,
                stacklevel=stacklevel + 1,
            )


def _problem(
    found: dict[str, torch.Tensor],
    meta: dict[str, str],
    key: str,
    checked: Sequence[str],
    validate: Validate | None,
) -> str | None:
    """What is wrong with an entry whose tensor names are right, or None."""
    if meta.get("key") != key:
        return "its key does not match the data it claims to cache"
    if validate is not None and (problem := validate(found, meta)) is not None:
        return problem
    texts = [meta.get(m) for m in checked]
    if (
        meta.get("content_sha256") != content_digest(found, [t or "" for t in texts])
        or None in texts
    ):
        words = " and ".join([*checked, "tensors"])
        return f"its {words} do not match their checksum"
    return None
