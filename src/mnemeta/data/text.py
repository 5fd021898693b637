"""Labelled text: a user's CSV / TSV / JSONL file, and CLINC150 (Larson et al., EMNLP 2019).

Everything here is plain Python and reads text only; turning the texts into embeddings is
:mod:`mnemeta.data.embeddings`, and grouping those into classes for episodes is
:func:`mnemeta.data.text_classes.group_by_label`.

File formats (chosen by the file's extension):

* ``.csv`` — comma-separated with a header row, quoting as Python's ``csv`` module reads it
  (fields with commas, quotes or newlines inside double quotes, ``""`` for a quote);
* ``.tsv`` — the same with tabs;
* ``.jsonl`` — one JSON object per line.

The text and label columns are named (``text`` and ``label`` by default). Files must be UTF-8;
a byte-order mark is accepted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mnemeta.errors import DataError
from mnemeta.io import atomic_write_text

FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None}

#: CLINC150's out-of-scope label in data_full.json.
OUT_OF_SCOPE = "oos"


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with one label each.

    Attributes:
        texts: the utterances, in file order.
        labels: one label per text.
        source: where they came from, for error messages.
    """

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"{self.source or 'labelled texts'}: {len(self.texts)} texts but "
                f"{len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def label_names(self) -> list[str]:
        """The distinct labels, sorted."""
        return sorted(set(self.labels))

    def only(self, labels: Iterable[str]) -> LabelledTexts:
        """The texts whose label is one of ``labels``, in file order."""
        keep = set(labels)
        rows = [i for i, label in enumerate(self.labels) if label in keep]
        return LabelledTexts(
            tuple(self.texts[i] for i in rows), tuple(self.labels[i] for i in rows), self.source
        )

    def __add__(self, other: LabelledTexts) -> LabelledTexts:
        return LabelledTexts(
            self.texts + other.texts, self.labels + other.labels, self.source or other.source
        )


_COLUMN_FLAGS = "--set data.text_column=NAME and data.label_column=NAME"


def read_labelled_file(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    column_flags: str = _COLUMN_FLAGS,
) -> LabelledTexts:
    """Read a ``.csv``, ``.tsv`` or ``.jsonl`` file of labelled texts.

    ``column_flags``: how the caller's user names the columns, for the error message.

    Raises:
        DataError: the file is missing, not UTF-8, of an unknown extension, lacks a named column,
            or has a row with an empty text or label. The message names the file, the row and
            the fix.
    """
    texts, labels = read_text_file(
        path, text_column=text_column, label_column=label_column, column_flags=column_flags
    )
    assert labels is not None
    return LabelledTexts(tuple(texts), tuple(labels), str(path))


def read_text_file(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    labels: str = "required",
    column_flags: str = _COLUMN_FLAGS,
) -> tuple[list[str], list[str] | None]:
    """The texts of a ``.csv``, ``.tsv`` or ``.jsonl`` file and their labels.

    ``labels``: ``"required"`` (a missing label column is an error) or ``"optional"`` (then the
    labels are None when the file has no such column: texts to classify). Errors as
    :func:`read_labelled_file`'s.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(
            f"{path}: unknown text file type {path.suffix or '(none)'!r}; use .csv, .tsv or "
            ".jsonl (a header row / one JSON object per line, with columns "
            f"{text_column!r} and {label_column!r})"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file; give the path of a .csv, .tsv or .jsonl file")
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 (byte {e.start}, line {line}); save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror})") from None
    delimiter = FORMATS[suffix]
    # A CSV's columns are known from its header, a JSONL's from its first object.
    columns, rows = (
        _jsonl_rows(content, path) if delimiter is None else _csv_rows(content, delimiter, path)
    )
    texts: list[str] = []
    found_labels: list[str] = []
    wanted = [text_column, label_column]
    if columns is not None:
        if labels == "optional" and label_column not in columns:
            wanted = [text_column]
        missing = [c for c in wanted if c not in columns]
        if missing:
            found = ", ".join(map(repr, columns)) or "none"
            raise DataError(
                f"{path}: no column {missing[0]!r} (it has {found}); name the columns with "
                f"{column_flags}"
            )
    need = " and ".join(map(repr, wanted))
    for line, row in rows:
        for what, column in zip(("text", "label"), wanted, strict=False):
            value = row.get(column)
            if value is None or not str(value).strip():
                raise DataError(
                    f"{path}, line {line}: empty {what}; every row needs a non-empty {need}"
                )
        texts.append(str(row[text_column]).strip())
        if len(wanted) == 2:
            found_labels.append(str(row[label_column]).strip())
    if not texts:
        raise DataError(f"{path}: no rows; the file needs a header row and labelled texts")
    return texts, (found_labels if len(wanted) == 2 else None)


Rows = list[tuple[int, dict[str, str]]]  # (line number, the row's fields)


def _csv_rows(content: str, delimiter: str, path: Path) -> tuple[list[str], Rows]:
    """The header's columns and the rows."""
    reader = csv.DictReader(content.splitlines(keepends=True), delimiter=delimiter)
    try:
        rows = [(reader.line_num, dict(row)) for row in reader]
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: {e}; check the quoting") from None
    if reader.fieldnames is None:
        raise DataError(f"{path}: empty file; it needs a header row and labelled texts")
    return list(reader.fieldnames), rows


def _jsonl_rows(content: str, path: Path) -> tuple[list[str] | None, Rows]:
    """The first object's keys (None without any object) and the rows."""
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {row!r:.40}")
        rows.append((number, row))
    return (list(rows[0][1]) if rows else None), rows


def write_labelled_csv(path: str | Path, texts: LabelledTexts) -> None:
    """Write ``texts`` as a ``text,label`` CSV that :func:`read_labelled_file` reads back."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(zip(texts.texts, texts.labels, strict=True))
    atomic_write_text(Path(path), buffer.getvalue())


@dataclass(frozen=True)
class Clinc150:
    """CLINC150's ``data_full.json`` and ``domains.json``.

    Attributes:
        splits: ``train`` (100 per intent), ``val`` (20), ``test`` (30): the in-scope queries.
        out_of_scope: ``train`` (100), ``val`` (100), ``test`` (1,000): out-of-scope queries.
        domains: domain -> its 15 intents, as ``domains.json`` lists them.
    """

    splits: dict[str, LabelledTexts]
    out_of_scope: dict[str, tuple[str, ...]]
    domains: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def intents(self) -> list[str]:
        return sorted(i for intents in self.domains.values() for i in intents)

    def all_in_scope(self) -> LabelledTexts:
        """train + val + test: every in-scope utterance (150 per intent)."""
        return self.splits["train"] + self.splits["val"] + self.splits["test"]


def find_clinc150(root: str | Path | None = None) -> Path:
    """The CLINC150 folder: ``root``, else ``$MNEMETA_DATA/clinc150``, else ``./data/clinc150``."""
    candidates = [Path(root)] if root else []
    if not root:
        if os.environ.get("MNEMETA_DATA"):
            candidates.append(Path(os.environ["MNEMETA_DATA"]) / "clinc150")
        candidates.append(Path("data") / "clinc150")
    for candidate in candidates:
        folder = candidate if candidate.name != "data_full.json" else candidate.parent
        if (folder / "data_full.json").is_file():
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"CLINC150 not found (looked in {where}); give the folder holding data_full.json and "
        "domains.json with --data PATH (or --set data.root=PATH), or set MNEMETA_DATA to its "
        "parent; the files are at https://github.com/clinc/oos-eval (data/)"
    )


def read_clinc150(root: str | Path | None = None) -> Clinc150:
    """Read CLINC150 from its folder (see :func:`find_clinc150`)."""
    folder = find_clinc150(root)
    try:
        full = json.loads((folder / "data_full.json").read_text(encoding="utf-8"))
        domains_file = folder / "domains.json"
        domains = (
            json.loads(domains_file.read_text(encoding="utf-8")) if domains_file.is_file() else {}
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(
            f"{folder}: CLINC150 files cannot be read ({e}); fetch them again"
        ) from None
    missing = [k for k in ("train", "val", "test", "oos_test") if k not in full]
    if missing:
        raise DataError(
            f"{folder / 'data_full.json'}: no {missing[0]!r} list; is it data_full.json?"
        )
    splits = {}
    for name in ("train", "val", "test"):
        pairs = full[name]
        splits[name] = LabelledTexts(
            tuple(t for t, _ in pairs), tuple(label for _, label in pairs), f"CLINC150 {name}"
        )
    oos = {
        name: tuple(t for t, _ in full.get(f"oos_{name}", [])) for name in ("train", "val", "test")
    }
    if not domains:  # data_full.json alone: one domain holding every intent
        domains = {"all": sorted(set(splits["train"].labels))}
    return Clinc150(splits, oos, {d: tuple(i) for d, i in domains.items()})


def split_domains(
    domains: Mapping[str, Sequence[str]], *, test: int, val: int, seed: int
) -> dict[str, list[str]]:
    """A seeded split of whole domains: ``{"train", "val", "test"}`` -> sorted domain names.

    Meta-training sees the train domains' intents only; the test intents belong to domains it
    never saw (the harder transfer: "banking" intents do not help with "travel" ones as much
    as other banking intents would).
    """
    names = sorted(domains)
    if test + val >= len(names):
        raise DataError(
            f"{len(names)} domains cannot be split into {test} test, {val} val and at least one "
            "train domain; lower data.test_domains or data.val_domains"
        )
    return _seeded_split(names, test, val, seed)


def split_labels(
    labels: Sequence[str], *, test: float, val: float, seed: int
) -> dict[str, list[str]]:
    """A seeded split of the labels themselves into train / val / test fractions."""
    names = sorted(set(labels))
    n_test, n_val = round(test * len(names)), round(val * len(names))
    if n_test < 1 or n_test + n_val >= len(names):
        raise DataError(
            f"{len(names)} labels cannot be split into {n_test} test, {n_val} val and at least "
            "one train label; change data.test_fraction / data.val_fraction or add labels"
        )
    return _seeded_split(names, n_test, n_val, seed)


def _seeded_split(names: list[str], test: int, val: int, seed: int) -> dict[str, list[str]]:
    """``names`` shuffled by ``seed``: the first ``test`` are test, the next ``val`` val, the
    rest train; each part sorted."""
    order = random.Random(seed).sample(names, len(names))
    return {
        "test": sorted(order[:test]),
        "val": sorted(order[test : test + val]),
        "train": sorted(order[test + val :]),
    }


def k_shot(texts: LabelledTexts, k: int, *, seed: int) -> LabelledTexts:
    """``k`` texts of every label, drawn without replacement with a seeded generator.

    The selection of the standard few-shot intent protocol: the same seed gives the same
    examples in any process (plain ``random.Random``, no torch), so mnemeta's methods and an
    outside baseline (SetFit) see identical support sets.
    """
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(texts.labels):
        by_label.setdefault(label, []).append(i)
    rng = random.Random(seed)
    rows: list[int] = []
    for label in sorted(by_label):
        if len(by_label[label]) < k:
            raise DataError(
                f"label {label!r} has {len(by_label[label])} examples, fewer than k={k}; "
                "lower k or add examples"
            )
        rows.extend(rng.sample(by_label[label], k))
    return LabelledTexts(
        tuple(texts.texts[i] for i in rows), tuple(texts.labels[i] for i in rows), texts.source
    )


def intent_description(label: str) -> str:
    """A label as words, for zero-shot prototypes: ``"credit_limit_change"`` -> ``"credit limit
    change"``. Dashes, underscores and dots become spaces; camelCase is split."""

    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label)
    return re.sub(r"[_\-./]+", " ", words).strip().lower()
