"""Run configuration: one dataclass per section, loaded from TOML, overridden by ``--set``.

A config file (or a named preset shipped in ``mnemeta/presets/``) gives the values that differ
from the defaults below; ``--set section.key=value`` overrides single values. Every key and
every value's type is checked, so a typo fails before any work starts, with a one-line message.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mnemeta.errors import MnemetaError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass
class DataConfig:
    dataset: str = "omniglot"  # omniglot | glyphs (synthetic, embedded: needs no download)
    root: str = ""  # empty: $MNEMETA_DATA/omniglot
    split: str = (
        "vinyals"  # vinyals: 1200/423 characters x 4 rotations; lake: background/evaluation
    )
    image_size: int = 28  # the paper's 28x28 for Omniglot
    download: bool = False  # fetch the official zips if the data is missing
    cache_dir: str = ""  # empty: next to the data


@dataclass
class ModelConfig:
    # protonet | matching | meta_memory | maml | fomaml | metasgd | anil | reptile |
    # ntm | mann | lstm (sequence models, recipes/sequence_train.py)
    algorithm: str = "protonet"
    backbone: str = "conv4"
    hidden: int = 64  # channels of each Conv-4 block
    distance: str = "sqeuclidean"  # protonet: sqeuclidean (the paper's) | cosine
    fce: bool = False  # matching: full-context embeddings
    scale: float = 10.0  # matching: multiplies the cosine before the softmax
    # --- optimisation-based learners (maml, fomaml, metasgd, anil, reptile) ---
    inner_lr: float = 0.4  # α (Meta-SGD: its initial value); Reptile: inner Adam step size
    inner_steps: int = 1  # inner steps in meta-training
    eval_inner_steps: int = 0  # inner steps at test time; 0: as in training
    eval_inner_lr: float = 0.0  # α at test time; 0: as in training
    inner_batch: int = 10  # reptile: inner mini-batch size
    eval_inner_batch: int = 5  # reptile: the same at test time
    strategy: str = "auto"  # auto (vmap on GPU, loop on CPU) | vmap | loop
    task_chunk: int = 0  # tasks per vmap call; 0: the whole meta-batch
    hops: int = 2  # meta_memory: reasoning hops of attention over the support memory
    # --- memory-augmented networks (ntm, mann, lstm) ---
    controller: int = 100  # LSTM units: Graves's copy task 100, Santoro's MANN 200
    memory_rows: int = 128  # N, both papers
    memory_width: int = 20  # W: copy task 20, MANN 40
    read_heads: int = 1  # copy task 1, MANN 4
    write_heads: int = 1  # NTM only; an LRUA head writes with its read key
    shift_range: int = 1  # NTM location shifts -R..R; copying needs only +-1
    usage_decay: float = 0.95  # LRUA's gamma
    key_strength: bool = True  # LRUA: learn beta for the reads (False: the paper's beta = 1)
    initial_strength: float = (
        10.0  # LRUA: beta at initialisation (softplus(0) = 0.69 trains slowly)
    )
    wipe_memory: bool = True  # MANN: wipe the memory between episodes (False: Santoro's no-wipe)


@dataclass
class SequenceConfig:
    """The sequence tasks of the memory-augmented networks."""

    bits: int = 8  # copy task: width of each random vector (Graves et al.: 8)
    min_length: int = 1  # copy task: training lengths, uniform in [min, max]
    max_length: int = 20
    eval_max_length: int = 120  # copy task: test lengths up to this (10, 20, 30, 40, 50, 80, 120)
    classes: int = 5  # one-shot episodes: classes per episode (Santoro et al.: 5 or 15)
    instances: int = 10  # ... and drawings of each, so 50 steps an episode


@dataclass
class TrainConfig:
    split: str = "trainval"  # the classes meta-training draws from
    ways: int = 60  # Snell et al.: more ways in training than in testing helps
    shots: int = 1  # ... and the same shots as at test time
    queries: int = 5
    meta_batch: int = 1  # episodes per optimiser step
    steps: int = 4000  # optimiser steps
    optimizer: str = "adam"  # adam | sgd (Reptile's surrogate) | rmsprop (NTM/MANN papers)
    lr: float = 1e-3  # Adam, as in the paper
    lr_schedule: str = "step"  # step | linear (annealed to 0 at the last step, as Reptile)
    lr_decay: float = 0.5  # step: multiply the learning rate by this ...
    lr_decay_every: int = 2000  # ... every this many steps (Snell et al.: halve every 2000)
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    # torch.compile the meta-loss: off | default | reduce-overhead (CUDA graphs) | max-autotune.
    # Pays off with strategy vmap on a GPU; compiling takes ~1-2 min once per run.
    compile: str = "off"
    max_minutes: float = 0.0  # stop training after this much training time (across resumes)
    log_every: int = 50
    eval_every: int = 1000  # validation episodes every this many steps; 0 disables
    checkpoint_every: int = 500


@dataclass
class EvalConfig:
    split: str = "test"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    episodes: int = 1000  # the standard 1000 test episodes with a 95% CI
    seed: int = 2024  # fixes the evaluation episodes: every checkpoint sees the same ones
    batch_size: int = 50  # episodes per forward pass
    val_split: str = "val"  # for evaluation during training (see README: overlaps trainval)
    val_episodes: int = 200


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    out_dir: str = ""  # empty: runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")


def preset_names() -> list[str]:
    files = resources.files("mnemeta") / "presets"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    return (resources.files("mnemeta") / "presets" / f"{name}.toml").read_text()


def load_config(source: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset name or a ``.toml`` path, then ``key=value`` overrides, validated."""
    if source.endswith(".toml") or Path(source).is_file():
        path = Path(source)
        if not path.is_file():
            raise MnemetaError(
                f"config file {source} does not exist; give a path to a .toml file "
                "or a preset name from `mnemeta list`"
            )
        text, origin = path.read_text(), str(path)
    elif source in preset_names():
        text, origin = preset_text(source), f"preset {source}"
    else:
        close = difflib.get_close_matches(source, preset_names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MnemetaError(
            f"unknown preset {source!r}; {hint}`mnemeta list` shows the presets, or give a "
            ".toml file"
        )
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MnemetaError(f"{origin} is not valid TOML ({e}); fix the file") from None
    config = config_from_dict(raw, origin)
    for item in overrides:
        apply_override(config, item)
    return config


def config_from_dict(raw: dict[str, Any], origin: str = "config") -> Config:
    config = Config()
    for key, value in _flatten(raw):
        set_value(config, key, value, origin)
    return config


def apply_override(config: Config, item: str) -> None:
    """Apply one ``section.key=value`` from the command line; the value is parsed by type."""
    key, sep, text = item.partition("=")
    if not sep:
        raise MnemetaError(f"--set expects key=value, e.g. train.steps=100; got {item!r}")
    target, name = _locate(config, key.strip(), "--set")
    kind = type(getattr(target, name))
    set_value(config, key.strip(), _parse(text.strip(), kind, key.strip()), "--set")


def set_value(config: Config, key: str, value: Any, origin: str) -> None:
    target, name = _locate(config, key, origin)
    current = getattr(target, name)
    kind = type(current)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise MnemetaError(
            f"{origin}: {key} expects {_kind_name(kind)}, got {value!r}; "
            f"e.g. {key}={json.dumps(current)}"
        )
    setattr(target, name, value)


def _locate(config: Config, key: str, origin: str) -> tuple[Any, str]:
    parts = key.split(".")
    target: Any = config
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        if part not in names:
            known = _all_keys(config)
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise MnemetaError(
                f"{origin}: unknown key {key!r}; {hint}`mnemeta train PRESET --print-config` lists "
                "every key"
            )
        if i < len(parts) - 1:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise MnemetaError(
                    f"{origin}: {'.'.join(parts[: i + 1])} is a value, not a section"
                )
        elif dataclasses.is_dataclass(getattr(target, part)):
            raise MnemetaError(f"{origin}: {key} is a section; set one of its keys, e.g. {key}.…")
    return target, parts[-1]


def _all_keys(config: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _flatten(raw: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in raw.items():
        if isinstance(v, dict):
            items += _flatten(v, f"{prefix}{k}.")
        else:
            items.append((prefix + k, v))
    return items


def _parse(text: str, kind: type, key: str) -> Any:
    try:
        if kind is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise MnemetaError(f"--set: {key} expects {_kind_name(kind)}; got {text!r}") from None
    return text


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, kind.__name__
    )
