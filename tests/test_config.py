from __future__ import annotations

import sys

import pytest

from mnemeta.config import (
    apply_override,
    config_from_dict,
    config_from_saved,
    load_config,
    preset_names,
)
from mnemeta.errors import ConfigError, MnemetaError

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name: str) -> None:
    config = load_config(name)
    assert config.name == name


def test_protonet_presets_follow_the_paper() -> None:
    c = load_config("protonet_omniglot_20w5s")
    assert (c.train.ways, c.train.shots, c.train.queries) == (60, 5, 5)
    assert (c.eval.ways, c.eval.shots, c.eval.queries, c.eval.episodes) == (20, 5, 15, 1000)
    assert (c.data.split, c.train.split, c.eval.split) == ("vinyals", "trainval", "test")


def test_overrides_are_parsed_by_type() -> None:
    c = load_config(
        "matching_omniglot_5w1s",
        ["train.steps=12", "train.lr=0.5", "model.fce=true", "data.root=/x"],
    )
    assert (c.train.steps, c.train.lr, c.model.fce, c.data.root) == (12, 0.5, True, "/x")


def test_unknown_key_suggests_the_right_one() -> None:
    c = load_config("protonet_omniglot_5w1s")
    with pytest.raises(MnemetaError, match="unknown key 'train.step'; did you mean train.steps"):
        apply_override(c, "train.step=3")


def test_wrong_value_type_names_the_key_and_type() -> None:
    c = load_config("protonet_omniglot_5w1s")
    with pytest.raises(MnemetaError, match="train.steps expects an integer; got 'many'"):
        apply_override(c, "train.steps=many")
    with pytest.raises(MnemetaError, match="expects key=value"):
        apply_override(c, "train.steps")


def test_file_values_are_type_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MnemetaError, match="train.ways expects an integer"):
        config_from_dict({"train": {"ways": "five"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nways=5")
    with pytest.raises(MnemetaError, match="not valid TOML"):
        load_config(str(bad))


def test_unknown_preset() -> None:
    with pytest.raises(MnemetaError, match="did you mean 'protonet_omniglot_5w1s'"):
        load_config("protonet_omniglot_5w1")


def test_a_key_the_learner_does_not_read_is_refused_with_the_keys_it_reads() -> None:
    # It trained a ProtoNet without a word before: model.inner_steps is MAML's.
    with pytest.raises(
        ConfigError,
        match=r"model.inner_steps is not read by protonet; it reads "
        r"model.algorithm, model.backbone, model.distance",
    ):
        load_config("demo_glyphs_protonet", ["model.inner_steps=3"])
    with pytest.raises(ConfigError, match="model.distance is not read by maml"):
        config_from_dict({"model": {"algorithm": "maml", "distance": "cosine"}})
    with pytest.raises(ConfigError, match="backbone.channels is not read by the conv4 backbone"):
        load_config("demo_glyphs_protonet", ["backbone.channels=1,2"])
    with pytest.raises(ConfigError, match="ntm takes no backbone"):
        load_config("ntm_copy", ["backbone.hidden=8"])
    with pytest.raises(ConfigError, match="ntm takes no backbone"):
        load_config("ntm_copy", ["model.backbone=conv4"])


def test_the_learner_chooses_the_model_section_and_overrides_may_change_it() -> None:
    c = load_config("demo_glyphs_protonet", ["model.algorithm=maml", "model.inner_steps=3"])
    assert type(c.model).__name__ == "MAMLConfig" and c.model.inner_steps == 3
    # The learner's own defaults, not a shared one: Reptile's inner Adam step is 1e-3.
    assert config_from_dict({"model": {"algorithm": "reptile"}}).model.inner_lr == 1e-3
    with pytest.raises(
        ConfigError, match="model.algorithm='mamll' is unknown; did you mean 'maml'"
    ):
        load_config("demo_glyphs_protonet", ["model.algorithm=mamll"])


def test_optional_values_are_explicit_and_lists_parse() -> None:
    c = load_config("maml_omniglot_5w1s")
    assert (c.model.eval_inner_steps, c.model.eval_inner_lr) == (3, None)  # None: as in training
    apply_override(c, "model.eval_inner_steps=none")
    apply_override(c, "model.eval_inner_lr=0.2")
    assert (c.model.eval_inner_steps, c.model.eval_inner_lr) == (None, 0.2)
    with pytest.raises(ConfigError, match="train.steps expects an integer; got 'none'"):
        apply_override(c, "train.steps=none")
    r = load_config("maml_omniglot_5w1s", ["model.backbone=resnet12", "backbone.channels=4,5,6,7"])
    assert r.backbone.channels == (4, 5, 6, 7)
    t = config_from_dict({"model": {"backbone": "resnet12"}, "backbone": {"channels": [8, 9]}})
    assert t.backbone.channels == (8, 9)
    with pytest.raises(ConfigError, match="backbone.channels expects a list of integers"):
        config_from_dict({"model": {"backbone": "resnet12"}, "backbone": {"channels": [8, "a"]}})


def test_a_config_written_by_mnemeta_0_1_is_translated() -> None:
    # mnemeta 0.1 saved one [model] of every learner's keys, 0 for "as in training", and
    # Conv-4's width as model.hidden.
    legacy = {
        "name": "old",
        "model": {
            "algorithm": "maml",
            "backbone": "conv4",
            "hidden": 8,
            "distance": "sqeuclidean",
            "fce": False,
            "scale": 10.0,
            "inner_lr": 0.4,
            "inner_steps": 1,
            "eval_inner_steps": 0,
            "eval_inner_lr": 0.0,
            "inner_batch": 10,
            "eval_inner_batch": 5,
            "strategy": "auto",
            "task_chunk": 0,
            "hops": 2,
            "controller": 100,
            "memory_rows": 128,
            "memory_width": 20,
            "read_heads": 1,
            "write_heads": 1,
            "shift_range": 1,
            "usage_decay": 0.95,
            "key_strength": True,
            "initial_strength": 10.0,
            "wipe_memory": True,
        },
    }
    c = config_from_saved(legacy, "checkpoint old.pt")
    assert type(c.model).__name__ == "MAMLConfig" and c.backbone.hidden == 8
    assert (c.model.eval_inner_steps, c.model.eval_inner_lr, c.model.task_chunk) == (
        None,
        None,
        None,
    )
    # Today's configs go through unchanged.
    assert config_from_saved(c.to_dict(), "x").to_dict() == c.to_dict()
