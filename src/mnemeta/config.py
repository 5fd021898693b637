"""Run configuration: one dataclass per section, loaded from TOML, overridden by ``--set``.

A config file (or a named preset shipped in ``mnemeta/presets/``) gives the values that differ
from the defaults; ``--set section.key=value`` overrides single values. Every key and every
value's type is checked, so a typo fails before any work starts, with a one-line message.

The ``[model]`` section is the chosen learner's own config: ``model.algorithm`` names the
learner (see ``mnemeta list``) and picks its dataclass from :data:`mnemeta.registry.LEARNERS`,
so a key that learner does not read is an error that lists the keys it does read. Learners that
embed images name ``model.backbone``, whose own keys live in ``[backbone]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import mnemeta.algorithms
import mnemeta.nn  # noqa: F401  (fills BACKBONES)
from mnemeta.checks import check_values, checked
from mnemeta.data.datasets import DataConfig
from mnemeta.errors import ConfigError
from mnemeta.registry import BACKBONES, LEARNERS, EpisodicConfig, LearnerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass
class SequenceConfig:
    """The sequence tasks of the memory-augmented networks."""

    bits: int = checked(8, ge=1)  # copy task: width of each random vector (Graves et al.: 8)
    min_length: int = checked(1, ge=1)  # copy task: training lengths, uniform in [min, max]
    max_length: int = checked(20, ge=1)
    eval_max_length: int = checked(
        120, ge=1
    )  # copy task: test lengths up to this (10, 20, 30, 40, 50, 80, 120)
    classes: int = checked(
        5, ge=2
    )  # one-shot episodes: classes per episode (Santoro et al.: 5 or 15)
    instances: int = checked(10, ge=1)  # ... and drawings of each, so 50 steps an episode

    def check_relations(self, prefix: str) -> None:
        if self.min_length > self.max_length:
            raise ConfigError(
                f"{prefix}min_length={self.min_length} is above {prefix}max_length="
                f"{self.max_length}; set min_length <= max_length"
            )


@dataclass
class RLConfig:
    """The meta-RL task families (``data.dataset`` names one: ``mnemeta list``)."""

    # K: trajectories of each task per update, run side by side (the paper: 20 for 2D
    # navigation, 20 for HalfCheetah; RL²: parallel trials of each task).
    trajectories: int = checked(20, ge=1)
    horizon: int = checked(100, ge=1)  # H: 100 for 2D navigation, 200 for HalfCheetah and ML1
    discount: float = checked(0.99, ge=0, le=1)  # γ of maml_rl and of learn2learn's examples
    # navigation2d: -distance (the reference code) or -distance² (the paper's text).
    reward: str = checked("distance", choices=("distance", "squared_distance"))
    # navigation2d: displacement = clip(action_scale * action, ±0.1); 0.1 is maml_rl's runs.
    action_scale: float = checked(1.0, gt=0)
    task: str = "reach-v3"  # metaworld_ml1: the ML1 task (reach-v3, push-v3, pick-place-v3)


@dataclass
class TrainConfig:
    split: str = "trainval"  # the classes meta-training draws from
    ways: int = checked(60, ge=2)  # Snell et al.: more ways in training than in testing helps
    shots: int = checked(1, ge=1)  # ... and the same shots as at test time
    queries: int = checked(5, ge=1)
    meta_batch: int = checked(1, ge=1)  # episodes per optimiser step
    steps: int = checked(4000, ge=1)  # optimiser steps
    optimizer: str = checked(
        "adam", choices=("adam", "sgd", "rmsprop")
    )  # adam | sgd (Reptile's surrogate) | rmsprop (NTM/MANN papers)
    lr: float = checked(1e-3, gt=0)  # Adam, as in the paper
    lr_schedule: str = checked(
        "step", choices=("step", "linear")
    )  # step | linear (annealed to 0 at the last step, as Reptile)
    lr_decay: float = checked(0.5, gt=0, le=1)  # step: multiply the learning rate by this ...
    lr_decay_every: int = checked(
        2000, ge=1
    )  # ... every this many steps (Snell et al.: halve every 2000)
    grad_clip: float = checked(0.0, ge=0)  # max gradient norm; 0 disables
    # torch.compile the meta-loss: off | default | reduce-overhead (CUDA graphs) | max-autotune.
    # Meant for strategy vmap on a GPU (not measured there yet; on a 2-core CPU the eager loop
    # is faster: benchmarks/results/speed_maml.md); compiling takes minutes once per run.
    compile: str = checked("off", choices=("off", "default", "reduce-overhead", "max-autotune"))
    max_minutes: float = checked(
        0.0, ge=0
    )  # stop training after this much training time (across resumes)
    # Log (and print) every this many steps; none: about 100 points per run, whatever its length.
    log_every: int | None = checked(None, ge=1)
    eval_every: int = checked(1000, ge=0)  # validation episodes every this many steps; 0 disables
    checkpoint_every: int = checked(500, ge=1)


@dataclass
class EvalConfig:
    split: str = "test"
    ways: int = checked(5, ge=2)
    shots: int = checked(1, ge=1)
    queries: int = checked(15, ge=1)
    episodes: int = checked(1000, ge=1)  # the standard 1000 test episodes with a 95% CI
    seed: int = 2024  # fixes the evaluation episodes: every checkpoint sees the same ones
    batch_size: int = checked(50, ge=1)  # episodes per forward pass
    val_split: str = "val"  # for evaluation during training (see README: overlaps trainval)
    val_episodes: int = checked(200, ge=1)


DEFAULT_ALGORITHM = "protonet"


def _default_model() -> LearnerConfig:
    return _learner_config(DEFAULT_ALGORITHM)


def _default_backbone() -> Any:
    return _backbone_config(_default_model())


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    out_dir: str = ""  # empty: runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    # The learner's own dataclass (ProtoNetConfig, MAMLConfig, ...), chosen by model.algorithm.
    model: LearnerConfig = field(default_factory=_default_model)
    # The backbone's own dataclass, chosen by model.backbone; None for learners without one.
    backbone: Any = field(default_factory=_default_backbone)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def check_relations(self, prefix: str) -> None:
        """Token ids go to a backbone that takes them, and only there; and they are the
        tokens of the encoder that backbone runs."""
        name = self.model.backbone if isinstance(self.model, EpisodicConfig) else None
        takes = BACKBONES.get(name).takes if name is not None else None
        if takes == "tokens" and self.data.inputs != "tokens":
            raise ConfigError(
                f'the {name} backbone reads token ids, but data.inputs="{self.data.inputs}"; '
                'set data.inputs="tokens"'
            )
        if self.data.inputs == "tokens" and takes != "tokens":
            backbones = ", ".join(b.name for b in BACKBONES if b.takes == "tokens")
            raise ConfigError(
                f'data.inputs="tokens" needs a backbone that reads token ids ({backbones}); '
                f"{self.model.algorithm} with {name or 'no backbone'} does not"
            )
        encoder = getattr(self.backbone, "encoder", None)
        if takes == "tokens" and encoder != self.data.encoder:
            raise ConfigError(
                f"backbone.encoder={encoder!r} but the data are tokenised by "
                f"data.encoder={self.data.encoder!r}; set both to the same encoder"
            )


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
            raise ConfigError(
                f"config file {source} does not exist; give a path to a .toml file "
                "or a preset name from `mnemeta list`"
            )
        text, origin = path.read_text(), str(path)
    elif source in preset_names():
        text, origin = preset_text(source), f"preset {source}"
    else:
        close = difflib.get_close_matches(source, preset_names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown preset {source!r}; {hint}`mnemeta list` shows the presets, or give a "
            ".toml file"
        )
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin} is not valid TOML ({e}); fix the file") from None
    return config_from_dict(raw, origin, overrides)


def config_from_dict(
    raw: dict[str, Any], origin: str = "config", overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """A config from nested ``raw`` values (a TOML file's), then ``key=value`` overrides.

    The learner (``model.algorithm``) and its backbone are chosen first, from the overrides if
    they name one, else from ``raw``: they decide which keys ``[model]`` and ``[backbone]`` have.
    """
    algorithm = _chosen(raw, overrides, "model.algorithm") or DEFAULT_ALGORITHM
    model = _learner_config(algorithm)
    backbone = _chosen(raw, overrides, "model.backbone")
    if isinstance(model, EpisodicConfig):
        model.backbone = backbone or model.backbone
    elif backbone:
        raise ConfigError(
            f"{origin}: model.backbone={backbone!r}: {algorithm} takes no backbone; remove the key"
        )
    config = Config(model=model, backbone=_backbone_config(model))
    for key, value in _flatten(raw):
        if key not in _CHOOSERS:
            set_value(config, key, value, origin)
    for item in overrides:
        if item.partition("=")[0].strip() not in _CHOOSERS:
            apply_override(config, item)
    check_values(config)
    return config


#: The keys that choose which dataclasses the config has; applied before all others.
_CHOOSERS = ("model.algorithm", "model.backbone")


def config_from_saved(raw: dict[str, Any], origin: str) -> Config:
    """The config stored in a checkpoint, also one written by mnemeta 0.1 (translated)."""
    return config_from_dict(translate_legacy(raw), origin)


#: mnemeta 0.1 wrote "0" for "as in training" / "the whole meta-batch"; now they are None.
_LEGACY_ZERO_MEANS_NONE = ("eval_inner_steps", "eval_inner_lr", "task_chunk")


def translate_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    """mnemeta 0.1's config (one ``[model]`` of every learner's keys, no ``[backbone]``) in
    today's shape: the keys the learner reads, explicit ``None`` for the 0 sentinels, and
    Conv-4's ``hidden`` under ``[backbone]``. Today's configs are returned unchanged."""
    model = raw.get("model")
    if "backbone" in raw or not isinstance(model, dict) or "hidden" not in model:
        return raw
    spec = LEARNERS.get(str(model.get("algorithm", DEFAULT_ALGORITHM)))
    translated: dict[str, Any] = {}
    for key in spec.key_names():
        if key in model:
            value = model[key]
            if key in _LEGACY_ZERO_MEANS_NONE and value == 0:
                value = None
            translated[key] = value
    out = {**raw, "model": translated}
    if spec.backbone:
        out["backbone"] = {"hidden": model["hidden"]}
    return out


def apply_override(config: Config, item: str) -> None:
    """Apply one ``section.key=value`` from the command line; the value is parsed by type."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"--set expects key=value, e.g. train.steps=100; got {item!r}")
    key = key.strip()
    target, name = _locate(config, key, "--set")
    kind, optional = _field_type(type(target), name)
    set_value(config, key, _parse(text.strip(), kind, optional, key), "--set")


def set_value(config: Config, key: str, value: Any, origin: str) -> None:
    target, name = _locate(config, key, origin)
    kind, optional = _field_type(type(target), name)
    if value is None and optional:
        setattr(target, name, None)
        return
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is tuple and isinstance(value, list | tuple):
        value = tuple(value)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            value = None  # reported below
    if type(value) is not kind:
        example = json.dumps(getattr(target, name))
        raise ConfigError(
            f"{origin}: {key} expects {_kind_name(kind, optional)}, got {value!r}; "
            f"e.g. {key}={example}"
        )
    if key in _CHOOSERS and value != getattr(target, name):
        raise ConfigError(
            f"{origin}: {key}={value!r} cannot change an existing config (it is "
            f"{getattr(target, name)!r}); build the config with config_from_dict"
        )
    setattr(target, name, value)


def _chosen(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], key: str) -> str:
    """The value of ``key`` the config ends with: the last override naming it, else ``raw``'s."""
    for item in reversed(overrides):
        k, sep, text = item.partition("=")
        if sep and k.strip() == key:
            return text.strip()
    section, name = key.split(".")
    value = raw.get(section, {}).get(name, "") if isinstance(raw.get(section), dict) else ""
    if not isinstance(value, str):
        raise ConfigError(f'{key} expects a string, got {value!r}; e.g. {key}="protonet"')
    return value


def _learner_config(algorithm: str) -> LearnerConfig:
    config = LEARNERS.get(algorithm).config(algorithm=algorithm)
    assert isinstance(config, LearnerConfig)
    return config


def _backbone_config(model: LearnerConfig) -> Any:
    if not isinstance(model, EpisodicConfig):
        return None
    return BACKBONES.get(model.backbone).config()


def _locate(config: Config, key: str, origin: str) -> tuple[Any, str]:
    parts = key.split(".")
    if parts[0] == "backbone" and config.backbone is None:
        raise ConfigError(
            f"{origin}: {key}: {config.model.algorithm} takes no backbone; remove the "
            "[backbone] section"
        )
    target: Any = config
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        if part not in names:
            raise ConfigError(_unknown_key(config, key, parts[:i], origin))
        if i < len(parts) - 1:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"{origin}: {'.'.join(parts[: i + 1])} is a value, not a section")
        elif dataclasses.is_dataclass(getattr(target, part)):
            raise ConfigError(f"{origin}: {key} is a section; set one of its keys, e.g. {key}.…")
    return target, parts[-1]


def _unknown_key(config: Config, key: str, section: list[str], origin: str) -> str:
    if section == ["model"]:
        reads = ", ".join(f"model.{k}" for k in LEARNERS.get(config.model.algorithm).key_names())
        return (
            f"{origin}: {key} is not read by {config.model.algorithm}; it reads {reads} "
            "(remove the key, or choose a learner that reads it: `mnemeta list`)"
        )
    if section == ["backbone"]:
        name = getattr(config.model, "backbone", "")
        reads = ", ".join(f"backbone.{k}" for k in BACKBONES.get(name).key_names())
        return f"{origin}: {key} is not read by the {name} backbone; it reads {reads}"
    close = difflib.get_close_matches(key, _all_keys(config), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"{origin}: unknown key {key!r}; {hint}`mnemeta train PRESET --print-config` lists "
        "every key"
    )


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_type(cls: type, name: str) -> tuple[type, bool]:
    """(the value's type, whether None is allowed) from the dataclass field's annotation."""
    hint = _hints(cls)[name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    origin = typing.get_origin(hint)
    return (origin if origin is not None else hint), optional


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
        elif v is None and not prefix and k == "backbone":
            continue  # a saved config of a learner without a backbone
        else:
            items.append((prefix + k, v))
    return items


def _parse(text: str, kind: type, optional: bool, key: str) -> Any:
    if optional and text.lower() in ("none", "null"):
        return None
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
        if kind is tuple:
            return tuple(int(v) for v in text.strip("[]()").split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--set: {key} expects {_kind_name(kind, optional)}; got {text!r}"
        ) from None
    return text


def _kind_name(kind: type, optional: bool = False) -> str:
    name = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        tuple: "a list of integers, e.g. 64,160,320,640",
    }.get(kind, kind.__name__)
    return f"{name} or none" if optional else name
