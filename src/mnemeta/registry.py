"""The tables that turn a config's names into objects: learners, backbones, datasets, memories.

Each learner, backbone, dataset and differentiable memory declares itself in its own module —
its name, its config dataclass (its own keys, each default's reason in a comment) and its
builder — with ``LEARNERS.register(...)`` and so on. The CLI, ``mnemeta list``, config checking
and the contract suite read these tables and nothing else, so adding a learner means adding its
module (and a preset), not editing a switch somewhere else.

A table is a plain dict filled when mnemeta's own modules are imported (``import
mnemeta.algorithms`` fills ``LEARNERS``): no entry points, no plugin discovery.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mnemeta.errors import ConfigError

E = TypeVar("E", bound="Entry")


@dataclass(frozen=True)
class Entry:
    """What every table holds: a name, the dataclass of its keys, and a one-line summary."""

    name: str
    config: type[Any]
    summary: str

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config):
            raise TypeError(f"{self.name}: config must be a dataclass, got {self.config!r}")

    def key_names(self) -> list[str]:
        """The keys its config reads, in declaration order."""
        return [f.name for f in dataclasses.fields(self.config)]


@dataclass
class LearnerConfig:
    """The base of every learner's config: ``algorithm`` names the learner that reads it."""

    algorithm: str = ""


@dataclass
class EpisodicConfig(LearnerConfig):
    """The base of the learners that embed images with a backbone (``[backbone]`` has its keys)."""

    backbone: str = "conv4"  # Conv-4: the backbone of every Omniglot paper reproduced here


@dataclass(frozen=True)
class BuildContext:
    """What a learner's builder needs to know about the data it will see.

    Attributes:
        input_shape: the shape of one input, e.g. ``(1, 28, 28)`` for Omniglot images, or
            ``(inputs,)`` for one step of a sequence.
        outputs: the width of a fixed output layer: ``n_way`` for the learners whose head has
            one (MAML family), the output size of a sequence model; 0 where nothing is fixed.
        classes: the number of classes in the training split, for learners that train one
            classifier over all of them (Baseline++); 0 where unknown.
        backbone: builds the configured backbone; ``per_task_statistics=True`` gives batch norm
            the statistics of each task's batch and no running statistics (the MAML paper's
            choice), ``False`` keeps running statistics for evaluation (metric learners).
            ``None`` for learners that take no backbone.
        discount: the RL learners' γ (``[rl] discount``): the environment's, not the
            learner's, so it lives in ``[rl]``.
    """

    input_shape: tuple[int, ...]
    outputs: int = 0
    backbone: Callable[..., Any] | None = None
    classes: int = 0
    discount: float = 0.99

    def build_backbone(self, *, per_task_statistics: bool) -> Any:
        if self.backbone is None:
            raise ConfigError("this learner needs a backbone, but none was configured")
        return self.backbone(per_task_statistics=per_task_statistics)


@dataclass(frozen=True)
class LearnerSpec(Entry):
    """A meta-learner the CLI can build and train.

    Attributes:
        build: ``build(config, context) -> nn.Module``, the learner (a MetaLearner for the
            episodic recipe, a sequence network for the sequence recipe).
        recipe: the loop that trains it: ``"episodic"`` (recipes/meta_train.py),
            ``"sequence"`` (recipes/sequence_train.py) or ``"rl"`` (recipes/rl_train.py; the
            learner is a :class:`~mnemeta.algorithms.meta_rl.MetaRLLearner`, built with
            ``input_shape = (observation_size,)`` and ``outputs = action_size``).
        fixed_ways: it has an output layer of fixed width, so it trains and tests with the
            same number of ways.
        backbone: it takes a backbone (``model.backbone`` and the ``[backbone]`` section).
    """

    build: Callable[[Any, BuildContext], Any] = dataclasses.field(default=lambda c, x: None)
    recipe: str = "episodic"
    fixed_ways: bool = False
    backbone: bool = True


@dataclass(frozen=True)
class BackboneSpec(Entry):
    """A feature extractor: ``build(config, size, per_task_statistics=...)``.

    Attributes:
        takes: what ``size`` is: ``"channels"``, the first dimension of the input (a Conv-4's
            image channels), ``"features"``, the number of values in one input (a backbone
            over flat feature vectors such as sentence embeddings), or ``"tokens"``, the length
            of one input's int64 token ids (a backbone that runs a sentence encoder;
            ``data.inputs = "tokens"``).
    """

    build: Callable[..., Any] = dataclasses.field(default=lambda *a, **k: None)
    takes: str = "channels"


@dataclass(frozen=True)
class DatasetSpec(Entry):
    """A data set: ``load(data_config, progress) -> {split name: data}``. ``kind`` is
    ``"classes"`` (images grouped by class, for episodes), ``"sequences"`` (generated) or
    ``"environment"``: a family of RL tasks, built by ``environment(rl_config, device)`` as a
    :class:`~mnemeta.rl.environment.TaskEnvironment` (``load`` is unused)."""

    load: Callable[..., Any] | None = None
    kind: str = "classes"
    environment: Callable[..., Any] | None = None


@dataclass(frozen=True)
class MemorySpec(Entry):
    """A differentiable memory for the memory-augmented networks (see mnemeta.memory)."""

    build: Callable[..., Any] = dataclasses.field(default=lambda *a, **k: None)


class Registry(Generic[E]):
    """A name -> entry table whose lookups fail with the choices and a "did you mean"."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key
        self._entries: dict[str, E] = {}

    def register(self, entry: E) -> E:
        if entry.name in self._entries:
            raise ValueError(f"a {self.kind} named {entry.name!r} is registered twice")
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str) -> E:
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{self.key}={name!r} is unknown; {hint}choose one of {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)


LEARNERS: Registry[LearnerSpec] = Registry("learner", "model.algorithm")
BACKBONES: Registry[BackboneSpec] = Registry("backbone", "model.backbone")
DATASETS: Registry[DatasetSpec] = Registry("dataset", "data.dataset")
MEMORIES: Registry[MemorySpec] = Registry("memory", "memory")
