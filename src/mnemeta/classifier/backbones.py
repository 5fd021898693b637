"""Image backbones of timm and torchvision as a classifier's encoder, with the user's weights.

    mnemeta classes create products --encoder timm:resnet50@resnet50.safetensors
    mnemeta classes create products --encoder torchvision:resnet18@resnet18.pth

The spec is ``LIBRARY:NAME`` and, after ``@``, a weights file: safetensors, or a PyTorch state
dict read with ``torch.load(weights_only=True)`` (nothing is unpickled). Nothing is downloaded:
without a weights file the backbone is randomly initialised with a fixed seed, which is what
tests use and what no user wants (the classifier says so when it is created). The embedding is
the backbone's pooled features: timm's ``num_classes=0``, or torchvision's last classification
layer replaced by the identity. Images are read as RGB, resized bilinearly to the backbone's
input size (timm's ``pretrained_cfg``, else 224×224) and normalised with its mean and standard
deviation (ImageNet's for torchvision); the identity records all of it.

timm and torchvision are not dependencies of mnemeta; a missing one is a one-line error. (Here,
beside the CPU build of PyTorch 2.13, PyPI's torchvision does not import, and timm needs it;
tests skip unless both are importable.)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mnemeta.classifier.encoders import read_image, state_digest
from mnemeta.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneEncoder:
    """A timm or torchvision image backbone over image files."""

    modality = "images"

    def __init__(self, library: str, name: str, weights: Path | None = None) -> None:
        if library not in ("timm", "torchvision"):
            raise ConfigError(
                f"unknown backbone library {library!r}; use timm:NAME or torchvision:NAME"
            )
        if importlib.util.find_spec(library) is None:
            raise ConfigError(
                f"the encoder {library}:{name} needs {library}, which is not installed; pip "
                f"install {library} (with weights of your own: nothing is downloaded)"
            )
        self.library, self.name = library, name
        self.weights = None if weights is None else Path(weights).expanduser().resolve()
        with torch.random.fork_rng():
            torch.manual_seed(0)  # random initialisation, when no weights are given, is fixed
            self.network, size, mean, std = _build(library, name)
        if self.weights is not None:
            _load_weights(self.network, self.weights, f"{library}:{name}")
        self.network.eval()
        self.height, self.width = size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            self.dim = int(self.network(torch.zeros(1, 3, *size)).flatten(1).shape[1])
        self._digest = state_digest(self.network.state_dict())

    @classmethod
    def from_spec(cls, spec: str) -> BackboneEncoder:
        library, _, rest = spec.partition(":")
        name, _, weights = rest.partition("@")
        if not name:
            raise ConfigError(f"{spec!r} names no backbone; write {library}:NAME[@WEIGHTS_FILE]")
        return cls(library, name, Path(weights) if weights else None)

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.library,
            "name": self.name,
            "weights": self._digest if self.weights else f"random-init-seed0-{self._digest}",
            "preprocessing": (
                f"RGB, bilinear resize to {self.height}x{self.width}, /255, mean "
                f"{tuple(round(float(m), 4) for m in self.mean.flatten())}, std "
                f"{tuple(round(float(s), 4) for s in self.std.flatten())}"
            ),
        }

    def spec(self) -> str:
        return f"{self.library}:{self.name}" + (f"@{self.weights}" if self.weights else "")

    @torch.no_grad()
    def encode(self, items: Sequence[Any], *, progress: bool = False) -> Tensor:
        out = []
        starts: Any = range(0, len(items), 64)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="images", unit="batch", leave=False)
        for start in starts:
            chunk = [
                read_image(item, grey=False, size=(self.height, self.width))
                for item in items[start : start + 64]
            ]
            x = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float().div_(255.0)
            out.append(self.network((x - self.mean) / self.std).flatten(1).float())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def _build(library: str, name: str) -> tuple[nn.Module, tuple[int, int], Any, Any]:
    """The backbone without its classifier, its input size, mean and std."""
    if library == "timm":
        import timm

        try:
            network = timm.create_model(name, pretrained=False, num_classes=0)
        except RuntimeError as e:  # "Unknown model (...)"
            raise ConfigError(f"timm has no model {name!r} ({e}); see timm.list_models()") from None
        cfg = getattr(network, "pretrained_cfg", {}) or {}
        size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
        return (
            network,
            (int(size[0]), int(size[1])),
            cfg.get("mean", IMAGENET_MEAN),
            cfg.get("std", IMAGENET_STD),
        )
    import torchvision

    try:
        network = torchvision.models.get_model(name, weights=None)
    except ValueError as e:
        raise ConfigError(
            f"torchvision has no model {name!r} ({e}); see torchvision.models.list_models()"
        ) from None
    for attribute in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(network, attribute, None), nn.Module):
            setattr(network, attribute, nn.Identity())
            break
    else:
        raise ConfigError(
            f"torchvision's {name} has no fc, classifier or heads layer to remove; use a "
            "classification backbone (resnet18, efficientnet_b0, vit_b_16, ...)"
        )
    return network, (224, 224), IMAGENET_MEAN, IMAGENET_STD


def _load_weights(network: nn.Module, path: Path, what: str) -> None:
    if not path.is_file():
        raise ConfigError(f"no weights file {path} for {what}; pass a .safetensors or .pth file")
    try:
        state: Any
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as e:  # safetensors' and torch's own errors for damaged files
        raise ConfigError(f"cannot read the weights {path} ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds no state dict of tensors; save model.state_dict()")
    try:
        missing, _ = network.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise ConfigError(
            f"{path} does not fit {what} ({first[:160]}); pass the weights of that architecture"
        ) from None
    if missing:
        raise ConfigError(
            f"{path} does not fit {what}: {len(missing)} weights missing (first: {missing[0]}); "
            "pass the weights of that architecture"
        )
