"""``mnemeta.load``: a learner back from its checkpoint alone; checkpoints of mnemeta 0.1 too.

``tests/fixtures/v0_1/*.pt`` were written by mnemeta 0.1 (commit d126f9d, the last before the
per-learner configs) with tiny models: ``demo_glyphs_protonet`` with ``model.hidden=8``,
``data.image_size=16``, ``train.ways=5``, 2 steps (``protonet.pt``), the same with
``model.algorithm=maml``, ``model.eval_inner_steps=3``, ``train.meta_batch=2`` (``maml.pt``), and
``ntm_copy`` with ``model.controller=16``, ``model.memory_rows=8``, ``model.memory_width=4``
(``ntm.pt``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mnemeta
from mnemeta.checkpoint import load_checkpoint
from mnemeta.cli import main
from mnemeta.errors import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"
TINY = [
    "backbone.hidden=8",
    "data.image_size=16",
    "train.ways=5",
    "train.eval_every=0",
    "eval.episodes=5",
    "eval.batch_size=5",
]
MAML = ["model.algorithm=maml", "model.eval_inner_steps=3", "train.meta_batch=2"]


def _train(out: Path, *extra: str, steps: int = 3, resume: bool = False) -> int:
    args = ["train", "demo_glyphs_protonet", "--out", str(out), "--no-progress"]
    args += ["--device", "cpu"] + [a for s in [*TINY, *extra] for a in ("--set", s)]
    args += ["--set", f"train.steps={steps}"] + (["--resume"] if resume else [])
    return main(args)


def _support_and_queries(seed: int) -> tuple[mnemeta.Support, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 5, 1, 16, 16, generator=g)
    y = torch.arange(5).repeat(2, 1)
    return mnemeta.Support(x, y, n_way=5), torch.rand(2, 7, 1, 16, 16, generator=g)


def test_load_in_a_fresh_process_with_no_data_folder(tmp_path: Path) -> None:
    assert _train(tmp_path / "run", *MAML) == 0
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    # The same adaptation in this process, from the weights as trained ...
    learner = mnemeta.load(checkpoint)
    support, queries = _support_and_queries(0)
    with torch.no_grad():
        expected = learner.adapt(support)(queries)
    assert expected.shape == (2, 7, 5) and torch.isfinite(expected).all()
    # ... and in a fresh process that has no data and no MNEMETA_DATA.
    code = (
        "import sys, torch, mnemeta\n"
        "m = mnemeta.load(sys.argv[1])\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.rand(2, 5, 1, 16, 16, generator=g)\n"
        "s = mnemeta.Support(x, torch.arange(5).repeat(2, 1), n_way=5)\n"
        "q = torch.rand(2, 7, 1, 16, 16, generator=g)\n"
        "with torch.no_grad():\n"
        "    torch.save(m.adapt(s)(q), sys.argv[2])\n"
        "print(type(m).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MNEMETA_DATA"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(mnemeta.__file__).parents[1]), *sys.path])
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint), str(fresh / "logits.pt")],
        cwd=fresh,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "MAML"
    torch.testing.assert_close(torch.load(fresh / "logits.pt", weights_only=True), expected)


def test_load_gives_the_trained_weights_in_eval_mode(tmp_path: Path) -> None:
    assert _train(tmp_path / "run") == 0
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    learner = mnemeta.load(checkpoint)
    assert isinstance(learner, mnemeta.ProtoNet) and not learner.training
    saved = load_checkpoint(checkpoint)["model"]
    for name, value in learner.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_load_refuses_what_is_not_a_fitting_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        mnemeta.load(tmp_path / "nothing.pt")
    assert _train(tmp_path / "run") == 0
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    del state["model"][next(iter(state["model"]))]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="do not fit the model its config describes"):
        mnemeta.load(tmp_path / "cut.pt")


@pytest.mark.parametrize("name", ["protonet", "maml"])
def test_a_v0_1_checkpoint_loads_adapts_evaluates_and_resumes(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    learner = mnemeta.load(FIXTURES / f"{name}.pt")
    support, queries = _support_and_queries(1)
    with torch.no_grad():
        logits = learner.adapt(support)(queries)
    assert logits.shape == (2, 7, 5) and torch.isfinite(logits).all()
    if name == "maml":  # its 0.1 config said eval_inner_steps=3, eval_inner_lr=0 ("as training")
        assert (learner.eval_inner_steps, learner.eval_inner_lr) == (3, 0.4)
    out = tmp_path / "eval.json"
    assert (
        main(["evaluate", str(FIXTURES / f"{name}.pt"), "--episodes", "5", "--out", str(out)]) == 0
    )
    assert "5-way 1-shot test" in capsys.readouterr().out
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURES / f"{name}.pt", run / "checkpoint.pt")
    extra = MAML if name == "maml" else []
    assert _train(run, *extra, steps=4, resume=True) == 0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4


def test_a_v0_1_sequence_checkpoint_loads() -> None:
    ntm = mnemeta.load(FIXTURES / "ntm.pt")
    assert isinstance(ntm, mnemeta.MemoryAugmentedNetwork) and ntm.rows == 8
    logits, _ = ntm(torch.rand(3, 6, 9))  # copy task: 8 bits + the delimiter channel
    assert logits.shape == (3, 6, 8)
