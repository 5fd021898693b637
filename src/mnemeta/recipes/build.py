"""From a :class:`~mnemeta.config.Config` to objects: explicit name -> builder tables.

The CLI's names (``data.dataset``, ``model.backbone``, ``model.algorithm``) resolve here and
nowhere else, so ``mnemeta list`` and the error for an unknown name read the same tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from mnemeta.algorithms import MatchingNet, ProtoNet
from mnemeta.algorithms.maml import MAML, Classifier
from mnemeta.algorithms.meta_memory import MetaMemoryNet
from mnemeta.algorithms.reptile import Reptile
from mnemeta.config import DataConfig, ModelConfig
from mnemeta.data.classes import ClassImages
from mnemeta.data.glyphs import glyph_splits
from mnemeta.episode import EpisodeBatch
from mnemeta.errors import MnemetaError
from mnemeta.nn import Conv4

T = TypeVar("T")

#: The learners the CLI can build: nn.Modules that satisfy the MetaLearner protocol.
Learner = ProtoNet | MatchingNet | MAML | Reptile | MetaMemoryNet


def _omniglot(cfg: DataConfig, progress: bool) -> dict[str, ClassImages]:
    from mnemeta.data.omniglot import find_omniglot_root, load_omniglot

    return load_omniglot(
        find_omniglot_root(cfg.root or None),
        split=cfg.split,
        image_size=cfg.image_size,
        cache_dir=cfg.cache_dir or None,
        download=cfg.download,
        progress=progress,
    )


def _glyphs(cfg: DataConfig, progress: bool) -> dict[str, ClassImages]:
    return glyph_splits(n_train=400, n_val=50, n_test=150, image_size=cfg.image_size)


DATASETS: dict[str, Callable[[DataConfig, bool], dict[str, ClassImages]]] = {
    "omniglot": _omniglot,
    "glyphs": _glyphs,
}


def build_splits(cfg: DataConfig, *, progress: bool = False) -> dict[str, ClassImages]:
    return _lookup(DATASETS, cfg.dataset, "data.dataset")(cfg, progress)


def _conv4(cfg: ModelConfig, in_channels: int, per_task_bn: bool) -> nn.Module:
    # Gradient-based learners use the batch statistics of each task (MAML paper) and keep no
    # running statistics; metric learners keep them for evaluation. Either way BatchNorm uses
    # primitive ops under vmap (right second-order gradients) and the native kernel elsewhere.
    return Conv4(in_channels, cfg.hidden, track_running_stats=not per_task_bn)


BACKBONES: dict[str, Callable[[ModelConfig, int, bool], nn.Module]] = {"conv4": _conv4}


def _protonet(cfg: ModelConfig, in_channels: int) -> Learner:
    encoder = _lookup(BACKBONES, cfg.backbone, "model.backbone")(cfg, in_channels, False)
    return ProtoNet(
        encoder, distance=_choice(cfg.distance, ("sqeuclidean", "cosine"), "model.distance")
    )


def _matching(cfg: ModelConfig, in_channels: int) -> Learner:
    encoder = _lookup(BACKBONES, cfg.backbone, "model.backbone")(cfg, in_channels, False)
    return MatchingNet(encoder, embedding_dim=cfg.hidden, fce=cfg.fce, scale=cfg.scale)


def _classifier(cfg: ModelConfig, in_channels: int, n_way: int, image_size: int) -> nn.Module:
    encoder = _lookup(BACKBONES, cfg.backbone, "model.backbone")(cfg, in_channels, True)
    features = cfg.hidden * (image_size // 16) ** 2
    return Classifier(encoder, features, n_way)


def _maml_family(**switches: object) -> Callable[[ModelConfig, int, int, int], Learner]:
    def build(cfg: ModelConfig, in_channels: int, n_way: int, image_size: int) -> Learner:
        return MAML(
            _classifier(cfg, in_channels, n_way, image_size),
            inner_lr=cfg.inner_lr,
            inner_steps=cfg.inner_steps,
            eval_inner_steps=cfg.eval_inner_steps or None,
            eval_inner_lr=cfg.eval_inner_lr or None,
            strategy=_choice(cfg.strategy, ("auto", "vmap", "loop"), "model.strategy"),
            task_chunk=cfg.task_chunk,
            **switches,  # type: ignore[arg-type]
        )

    return build


def _reptile(cfg: ModelConfig, in_channels: int, n_way: int, image_size: int) -> Learner:
    return Reptile(
        _classifier(cfg, in_channels, n_way, image_size),
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        inner_batch=cfg.inner_batch,
        eval_inner_steps=cfg.eval_inner_steps or cfg.inner_steps,
        eval_inner_batch=cfg.eval_inner_batch,
        strategy=_choice(cfg.strategy, ("auto", "vmap", "loop"), "model.strategy"),
    )


def _meta_memory(cfg: ModelConfig, in_channels: int, n_way: int, image_size: int) -> Learner:
    # Any n_way (the output layer is built from the memory per episode); BN keeps running
    # statistics for evaluation, as for the metric learners.
    encoder = _lookup(BACKBONES, cfg.backbone, "model.backbone")(cfg, in_channels, False)
    return MetaMemoryNet(
        encoder,
        cfg.hidden * (image_size // 16) ** 2,
        hops=cfg.hops,
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        eval_inner_steps=cfg.eval_inner_steps or None,
    )


def _metric(build: Callable[[ModelConfig, int], Learner]) -> Callable[..., Learner]:
    return lambda cfg, in_channels, n_way, image_size: build(cfg, in_channels)


#: model.algorithm -> builder(model config, input channels, n_way, image side).
ALGORITHMS: dict[str, Callable[[ModelConfig, int, int, int], Learner]] = {
    "protonet": _metric(_protonet),
    "matching": _metric(_matching),
    "maml": _maml_family(),
    "fomaml": _maml_family(first_order=True),
    "metasgd": _maml_family(learn_inner_lr=True),
    "anil": _maml_family(adapt=("head.",)),
    "reptile": _reptile,
    "meta_memory": _meta_memory,
}

#: Learners with an output layer of fixed width: they train and test with the same n_way.
FIXED_WAYS = ("maml", "fomaml", "metasgd", "anil", "reptile")


def build_learner(
    cfg: ModelConfig, in_channels: int, n_way: int = 0, image_size: int = 28
) -> Learner:
    return _lookup(ALGORITHMS, cfg.algorithm, "model.algorithm")(
        cfg, in_channels, n_way, image_size
    )


#: train.compile -> torch.compile's mode (None: do not compile).
COMPILE_MODES: dict[str, str | None] = {
    "off": None,
    "default": "default",
    "reduce-overhead": "reduce-overhead",  # CUDA graphs: fewest launches per step on a GPU
    "max-autotune": "max-autotune",
}


def build_meta_loss(
    learner: Learner, mode: str
) -> Callable[[EpisodeBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``learner.meta_loss``, compiled by ``torch.compile`` unless ``mode`` is ``"off"``.

    The whole meta-loss -- vmap over tasks, the inner gradient steps, the query loss -- becomes
    one graph (no graph breaks: ``tests/algorithms/test_compile.py``), and its backward one
    more. Compilation happens at the first call and again only if the shapes change.
    """
    compile_mode = _lookup(COMPILE_MODES, mode, "train.compile")
    if compile_mode is None:
        return learner.meta_loss
    return torch.compile(learner.meta_loss, mode=compile_mode)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MnemetaError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MnemetaError(
            f"device {name} asked for but this PyTorch sees no CUDA GPU; use --device cpu (or auto)"
        )
    return device


def _lookup(table: dict[str, T], name: str, key: str) -> T:
    if name not in table:
        raise MnemetaError(f"{key}={name!r} is unknown; choose one of {', '.join(sorted(table))}")
    return table[name]


def _choice(value: str, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise MnemetaError(f"{key}={value!r} is unknown; choose one of {', '.join(choices)}")
    return value


def pick_split(splits: dict[str, ClassImages], name: str, key: str) -> ClassImages:
    if name not in splits:
        raise MnemetaError(
            f"{key}={name!r} is not a split of this dataset; choose one of "
            f"{', '.join(sorted(splits))}"
        )
    return splits[name]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux: the CPU model, e.g. "AMD EPYC 7B13"
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.readlines()
        for line in lines:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
