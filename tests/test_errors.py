"""One error hierarchy: the same kind of mistake raises the same class wherever it is made.

A wrong setting or argument is a :class:`ConfigError` (from a learner, a backbone, a sampler or
the task memory alike); data that is missing, damaged or too small for what is asked is a
:class:`DataError`; a bad checkpoint a :class:`CheckpointError`; a task memory's files, locks
and records a :class:`StoreError`. Each case checks the *exact* class, so a site that falls
back to a plain ``MnemetaError`` (or to a ``ValueError``) fails here. The last test reads the
source, so that a new ``raise ValueError(...)`` cannot erode the hierarchy unnoticed.
"""

from __future__ import annotations

import ast
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import mnemeta
from mnemeta import (
    MAML,
    MLP,
    CheckpointError,
    Classifier,
    ClassImages,
    ConfigError,
    Conv4,
    DataError,
    EpisodeBatch,
    EpisodeSampler,
    MemoryAugmentedAdaptation,
    MetaMemoryNet,
    MnemetaError,
    ProtoNet,
    Reptile,
    ResNet12,
    StoreError,
)
from mnemeta.algorithms.task_embedding import match_classes
from mnemeta.checkpoint import load_checkpoint, save_checkpoint
from mnemeta.cli import main
from mnemeta.data.download import safe_extract_zip
from mnemeta.data.omniglot import load_omniglot
from mnemeta.data.sequences import OneShotSequenceSampler
from mnemeta.store import RecordNotFound, TaskMemory

SRC = Path(__file__).resolve().parents[1] / "src" / "mnemeta"

Case = Callable[[Path], object]


def classes(n: int = 6, per_class: int = 4, size: int = 8) -> ClassImages:
    """``n`` classes of ``per_class`` blank ``1 x size x size`` images."""
    return ClassImages(
        images=torch.zeros(n, per_class, 1, size, size, dtype=torch.uint8),
        counts=torch.full((n,), per_class, dtype=torch.long),
        names=tuple(f"c{i}" for i in range(n)),
    )


def store(tmp: Path, dim: int = 4) -> Path:
    """A task memory of ``dim``-vectors at ``tmp/mem`` holding one record (id 1)."""
    with TaskMemory(tmp / "mem", dim=dim) as m:
        m.add(torch.ones(dim))
    return tmp / "mem"


def truncated_checkpoint(tmp: Path) -> Path:
    path = tmp / "ck.pt"
    save_checkpoint(path, {"config": "{}", "step": 1, "model": {"w": torch.randn(1000)}})
    path.write_bytes(path.read_bytes()[:1500])
    return path


def classifier() -> Classifier:
    return Classifier(nn.Flatten(), 4, 2)


def raises_exactly(family: type[MnemetaError], case: Case, tmp_path: Path) -> MnemetaError:
    with pytest.raises(MnemetaError) as e:
        case(tmp_path)
    assert type(e.value) is family, f"{type(e.value).__name__}: {e.value}"
    assert str(e.value)  # a message that says what was wrong
    return e.value


# A bad setting or argument, wherever it is given.
CONFIG_CASES: dict[str, Case] = {
    "ProtoNet distance": lambda _: ProtoNet(nn.Flatten(), distance="manhattan"),
    "MAML strategy": lambda _: MAML(classifier(), strategy="parallel"),
    "MAML negative inner_steps": lambda _: MAML(classifier(), inner_steps=-1),
    "Reptile strategy": lambda _: Reptile(classifier(), strategy="parallel"),
    "Reptile negative inner_steps": lambda _: Reptile(classifier(), inner_steps=-1),
    "MetaMemoryNet negative hops": lambda _: MetaMemoryNet(nn.Flatten(), 4, hops=-1),
    "memory adaptation k": lambda _: MemoryAugmentedAdaptation(
        MAML(classifier()), object(), k=0, encoder=nn.Flatten()
    ),
    "Conv4 on a too small image": lambda _: Conv4(1, 8).out_features((1, 8, 8)),
    "ResNet12 on a too small image": lambda _: ResNet12(1, (4, 4, 4, 4)).out_features((1, 8, 8)),
    "ResNet12 no widths": lambda _: ResNet12(1, ()),
    "MLP wrong in_features": lambda _: MLP(4, (8,), 2).out_features((5,)),
    "EpisodeSampler zero ways": lambda _: EpisodeSampler(classes(), ways=0, shots=1, queries=1),
    "sequence sampler zero classes": lambda _: OneShotSequenceSampler(classes(), classes=0),
    "load_omniglot image_size": lambda tmp: load_omniglot(tmp, image_size=0),
    "TaskMemory dim": lambda tmp: TaskMemory(tmp / "new", dim=0),
    "TaskMemory index kind": lambda tmp: TaskMemory(tmp / "new", dim=4, index="kdtree"),
    "TaskMemory search k": lambda tmp: TaskMemory(store(tmp), read_only=True).search(
        torch.ones(4), k=0
    ),
    "TaskMemory info type": lambda tmp: TaskMemory(store(tmp)).add(torch.ones(4), info=[1]),
}


@pytest.mark.parametrize("case", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_a_bad_setting_is_a_config_error(case: Case, tmp_path: Path) -> None:
    error = raises_exactly(ConfigError, case, tmp_path)
    assert isinstance(error, ValueError)  # code written against the built-in type still works


# Data that is missing, damaged, of the wrong shape, or too small for what is asked.
DATA_CASES: dict[str, Case] = {
    "more shots + queries than a class has": lambda _: EpisodeSampler(
        classes(per_class=4), ways=2, shots=3, queries=2
    ),
    "more ways than the split has": lambda _: EpisodeSampler(
        classes(n=6), ways=10, shots=1, queries=1
    ),
    "more instances than a class has": lambda _: OneShotSequenceSampler(
        classes(per_class=4), classes=2, instances=5
    ),
    "EpisodeBatch shapes disagree": lambda _: EpisodeBatch(
        torch.zeros(2, 5, 4), torch.zeros(2, 5), torch.zeros(3, 5, 4), torch.zeros(3, 5), n_way=5
    ),
    "ClassImages neither uint8 images nor float32 features": lambda _: ClassImages(
        torch.zeros(2, 3, 1, 4, 4, dtype=torch.int16), torch.full((2,), 3), ("a", "b")
    ),
    "prototypes of another shape": lambda _: match_classes(torch.ones(5, 4), torch.ones(3, 4)),
    "no Omniglot folder": lambda tmp: load_omniglot(tmp / "nowhere"),
    "a damaged zip": lambda tmp: (
        (tmp / "a.zip").write_bytes(b"PK\x03\x04 not really"),
        safe_extract_zip(tmp / "a.zip", tmp / "out"),
    ),
    "non-finite embedding": lambda tmp: TaskMemory(store(tmp)).add(torch.full((4,), torch.nan)),
}


@pytest.mark.parametrize("case", DATA_CASES.values(), ids=DATA_CASES.keys())
def test_bad_data_is_a_data_error(case: Case, tmp_path: Path) -> None:
    error = raises_exactly(DataError, case, tmp_path)
    assert isinstance(error, ValueError)


def test_an_unsafe_zip_member_is_a_data_error(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../escape.txt", "x")
    raises_exactly(DataError, lambda tmp: safe_extract_zip(tmp / "evil.zip", tmp / "o"), tmp_path)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "o").exists()


CHECKPOINT_CASES: dict[str, Case] = {
    "truncated, read": lambda tmp: load_checkpoint(truncated_checkpoint(tmp)),
    "truncated, loaded": lambda tmp: mnemeta.load(truncated_checkpoint(tmp)),
    "missing": lambda tmp: load_checkpoint(tmp / "nope.pt"),
    "foreign": lambda tmp: (
        torch.save({"weights": torch.ones(1)}, tmp / "other.pt"),
        load_checkpoint(tmp / "other.pt"),
    ),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES.values(), ids=CHECKPOINT_CASES.keys())
def test_a_bad_checkpoint_is_a_checkpoint_error(case: Case, tmp_path: Path) -> None:
    raises_exactly(CheckpointError, case, tmp_path)


def closed(tmp: Path) -> None:
    m = TaskMemory(store(tmp))
    m.close()
    m.search(torch.ones(4))


def not_a_store(tmp: Path) -> None:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("not a task memory")
    TaskMemory(tmp / "notes", dim=4)


# The task memory's files, handles and records, and vectors that do not fit the store.
STORE_CASES: dict[str, Case] = {
    "opened with another dim": lambda tmp: TaskMemory(store(tmp, dim=4), dim=8),
    "opened with another index kind": lambda tmp: TaskMemory(store(tmp), index="hnsw"),
    "an embedding of another dim": lambda tmp: TaskMemory(store(tmp, dim=4)).add(torch.ones(8)),
    "a query of another dim": lambda tmp: TaskMemory(store(tmp, dim=4)).search(torch.ones(8)),
    "a folder that is not a store": not_a_store,
    "read-only add": lambda tmp: TaskMemory(store(tmp), read_only=True).add(torch.ones(4)),
    "no store to open read-only": lambda tmp: TaskMemory(tmp / "absent", read_only=True),
    "a closed handle": closed,
    "export into a non-empty folder": lambda tmp: TaskMemory(store(tmp)).export(tmp),
}


@pytest.mark.parametrize("case", STORE_CASES.values(), ids=STORE_CASES.keys())
def test_a_store_problem_is_a_store_error(case: Case, tmp_path: Path) -> None:
    raises_exactly(StoreError, case, tmp_path)


def test_a_missing_record_is_a_store_error_and_a_key_error(tmp_path: Path) -> None:
    with TaskMemory(store(tmp_path), read_only=True) as m, pytest.raises(RecordNotFound) as e:
        m.get(7)
    assert isinstance(e.value, StoreError) and isinstance(e.value, KeyError)


def test_the_families_are_distinct_and_all_mnemeta_errors() -> None:
    families = (ConfigError, DataError, CheckpointError, StoreError)
    for a in families:
        assert issubclass(a, MnemetaError)
        assert not any(issubclass(a, b) for b in families if b is not a)
    # ConfigError and DataError stay ValueErrors for `except ValueError` written before them.
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)


# --------------------------------------------------------------------------- the CLI
def cli_cases(tmp: Path) -> dict[str, tuple[list[str], type[MnemetaError], str]]:
    """Per family, a command that fails with it, and a piece of the message."""
    mem = store(tmp)
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("not a task memory")
    out = str(tmp / "run")
    demo = ["train", "demo_glyphs_protonet", "--out", out, "--no-progress"]
    return {
        "config: a learner's argument": (
            [*demo, "--set", "model.distance=manhattan"],
            ConfigError,
            "model.distance='manhattan' is unknown",
        ),
        "config: a memory flag": (
            ["memory", "search", str(mem), "--id", "1", "--k", "0"],
            ConfigError,
            "--k 0 must be at least 1",
        ),
        "data: no such folder": (
            ["train", "protonet_omniglot_5w1s", "--data", str(tmp / "nowhere"), "--out", out],
            DataError,
            "nowhere",
        ),
        "data: too few examples": (
            [*demo, "--set", "train.shots=15", "--set", "train.queries=10"],
            DataError,
            "shots + queries = 15 + 10 = 25",
        ),
        "data: a missing input file": (
            ["memory", "add", str(mem), "--embedding-file", str(tmp / "e.safetensors")],
            DataError,
            "does not exist",
        ),
        "checkpoint: truncated": (
            ["evaluate", str(truncated_checkpoint(tmp))],
            CheckpointError,
            "truncated or corrupt",
        ),
        "store: not a task memory": (
            ["memory", "info", str(tmp / "notes")],
            StoreError,
            "is not a mnemeta task memory",
        ),
    }


CLI_IDS = [
    "config: a learner's argument",
    "config: a memory flag",
    "data: no such folder",
    "data: too few examples",
    "data: a missing input file",
    "checkpoint: truncated",
    "store: not a task memory",
]


@pytest.mark.parametrize("name", CLI_IDS)
def test_the_cli_prints_one_line_and_exits_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = cli_cases(tmp_path)
    assert sorted(cases) == sorted(CLI_IDS)  # every case is run
    args, family, message = cases[name]
    code = main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and captured.out == ""
    assert err.startswith("error: ") and "\n" not in err and message in err
    assert not (tmp_path / "run").exists()  # nothing half-written
    # --debug lets the same error through: it is of its family, not a plain MnemetaError.
    with pytest.raises(MnemetaError) as e:
        main(["--debug", *args])
    assert type(e.value) is family and f"error: {e.value}" == err


# --------------------------------------------------------------------------- the source
# `raise ValueError(...)` / `raise TypeError(...)` kept on purpose: each is an internal invariant
# that only a bug in mnemeta's own code can break, or control flow that never leaves its
# function. Keyed by (file under src/mnemeta, enclosing function, exception).
ALLOWED_BUILTIN = {
    # Raised inside the try of the same function and caught a few lines below, where it becomes
    # the ConfigError that names the key: it never reaches a user.
    ("config.py", "_parse", "ValueError"),
    # The registries are filled at import by mnemeta's own modules: a config that is not a
    # dataclass, or two entries of one name, is a bug of the package, found by its first import.
    ("registry.py", "Entry.__post_init__", "TypeError"),
    ("registry.py", "Registry.register", "ValueError"),
    # TaskMemory hands the index ids that SQLite assigned in increasing order; an id that does
    # not grow means the index and the database went out of step, a bug, not a user's error.
    ("store/index.py", "VectorIndex.add", "ValueError"),
    # Reading a key-value memory before any write is a call-order bug of the learner using it.
    ("memory/key_value.py", "read", "ValueError"),
    # The network sizes its head layer from the memory's raw_size: a raw tensor of another
    # width is a bug of the calling code, not of a setting.
    ("memory/interface.py", "check_raw", "ValueError"),
}
PENDING_BUILTIN: set[tuple[str, str, str]] = set()
# A plain MnemetaError where no family fits (none today: an interrupt is TrainingInterrupted).
ALLOWED_PLAIN: set[tuple[str, str]] = set()


class _Sites(ast.NodeVisitor):
    """Collect ``raise ValueError/TypeError`` sites and direct uses of ``MnemetaError`` (a
    call, or a class deriving from it) with the name of the enclosing function or class."""

    def __init__(self, rel: str) -> None:
        self.rel, self.scope = rel, []
        self.builtin: list[tuple[str, str, str]] = []
        self.plain: list[tuple[str, str]] = []

    def _enter(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(b, ast.Name) and b.id == "MnemetaError" for b in node.bases
        ):
            self.plain.append((self.rel, ".".join([*self.scope, node.name])))
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _enter

    def visit_Raise(self, node: ast.Raise) -> None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(exc, ast.Name) and exc.id in ("ValueError", "TypeError"):
            self.builtin.append((self.rel, ".".join(self.scope), exc.id))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "MnemetaError":
            self.plain.append((self.rel, ".".join(self.scope)))
        self.generic_visit(node)


def test_no_builtin_or_plain_user_errors_remain_in_the_source() -> None:
    builtin: Counter[tuple[str, str, str]] = Counter()
    plain: Counter[tuple[str, str]] = Counter()
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 40  # the walk found the package, not an empty folder
    for path in files:
        rel = path.relative_to(SRC).as_posix()
        if rel == "errors.py":  # where the hierarchy is defined
            continue
        sites = _Sites(rel)
        sites.visit(ast.parse(path.read_text(), filename=str(path)))
        builtin.update(sites.builtin)
        plain.update(sites.plain)
    allowed = ALLOWED_BUILTIN | PENDING_BUILTIN
    stray = sorted(set(builtin) - allowed)
    assert not stray, (
        f"raise one of mnemeta.errors' families instead (ConfigError, DataError, "
        f"CheckpointError, StoreError), or justify the site in ALLOWED_BUILTIN: {stray}"
    )
    stray_plain = sorted(set(plain) - ALLOWED_PLAIN)
    assert not stray_plain, f"raise (or derive from) a family, not MnemetaError: {stray_plain}"
    # An entry that matches nothing any more would quietly allow the next such site.
    assert sorted(allowed - set(builtin)) == [], "delete the stale allow-list entries"
    assert sorted(ALLOWED_PLAIN - set(plain)) == [], "delete the stale allow-list entries"
