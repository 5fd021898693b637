"""From a :class:`~mnemeta.config.Config` to objects: explicit name -> builder tables.

The CLI's names (``data.dataset``, ``model.backbone``, ``model.algorithm``) resolve here and
nowhere else, so ``mnemeta list`` and the error for an unknown name read the same tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

import torch

from mnemeta.config import Config
from mnemeta.data.classes import ClassImages
from mnemeta.data.datasets import DataConfig
from mnemeta.episode import EpisodeBatch
from mnemeta.errors import ConfigError, DataError
from mnemeta.registry import BACKBONES, DATASETS, LEARNERS, BuildContext, LearnerSpec

T = TypeVar("T")

#: A built learner: an nn.Module that satisfies the MetaLearner protocol (episodic recipe) or a
#: sequence network (sequence recipe). The set is open — whatever LEARNERS holds — so its
#: static type is Any.
Learner: TypeAlias = Any


def build_splits(cfg: DataConfig, *, progress: bool = False) -> dict[str, ClassImages]:
    """The splits of the data set ``cfg.dataset`` names (``{}`` for generated sequence data)."""
    spec = DATASETS.get(cfg.dataset)
    assert spec.load is not None
    splits: dict[str, ClassImages] = spec.load(cfg, progress)
    return splits


def learner_spec(config: Config) -> LearnerSpec:
    return LEARNERS.get(config.model.algorithm)


def build_learner(
    config: Config, input_shape: tuple[int, ...], n_way: int = 0, *, classes: int = 0
) -> Learner:
    """The learner ``config.model`` describes, for inputs of ``input_shape`` (one example, e.g.
    ``(1, 28, 28)``), for learners with a fixed output layer ``n_way`` outputs, and for those
    that classify every training class, ``classes`` of them."""
    spec = learner_spec(config)
    backbone = None
    if spec.backbone:
        backbone_spec = BACKBONES.get(config.model.backbone)  # type: ignore[attr-defined]
        size = input_shape[0] if backbone_spec.takes == "channels" else math.prod(input_shape)

        def backbone(*, per_task_statistics: bool) -> Any:
            return backbone_spec.build(
                config.backbone, size, per_task_statistics=per_task_statistics
            )

    context = BuildContext(tuple(input_shape), n_way, backbone, classes, config.rl.discount)
    return spec.build(config.model, context)


def check_ways(config: Config, ways: int, fix: str) -> None:
    """A learner with a fixed output layer tests with the ways it trained with."""
    if learner_spec(config).fixed_ways and ways != config.train.ways:
        raise ConfigError(
            f"{config.model.algorithm} has a {config.train.ways}-way output layer, so it "
            f"cannot be evaluated {ways}-way; {fix}"
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
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name} asked for but this PyTorch sees no CUDA GPU; use --device cpu (or auto)"
        )
    return device


def _lookup(table: dict[str, T], name: str, key: str) -> T:
    if name not in table:
        raise ConfigError(f"{key}={name!r} is unknown; choose one of {', '.join(sorted(table))}")
    return table[name]


def pick_split(splits: dict[str, ClassImages], name: str, key: str) -> ClassImages:
    if name not in splits:
        raise DataError(
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
