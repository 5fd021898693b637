from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mnemeta.checkpoint import load_checkpoint, save_checkpoint
from mnemeta.errors import MnemetaError


def test_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"config": "{}", "step": 3, "model": {"w": torch.ones(2)}})
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"config": "{}", "step": 1, "model": {"w": torch.randn(1000)}})
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(MnemetaError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_foreign_and_missing_files(tmp_path: Path) -> None:
    foreign = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(MnemetaError, match="not a mnemeta checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(MnemetaError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mnemeta-checkpoint", "version": 1, "x": Path("/")}, evil)
    with pytest.raises(MnemetaError, match="could run code"):
        load_checkpoint(evil)


def test_failed_write_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"config": "{}", "step": 1})

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"config": "{}", "step": 2, "bad": Boom()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
