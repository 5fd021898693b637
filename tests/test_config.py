from __future__ import annotations

import pytest

from mnemeta.config import apply_override, config_from_dict, load_config, preset_names
from mnemeta.errors import MnemetaError


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
        "protonet_omniglot_5w1s",
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
