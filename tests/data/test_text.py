"""Reading labelled text (CSV / TSV / JSONL, CLINC150) and splitting its classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnemeta.data.text import (
    LabelledTexts,
    intent_description,
    k_shot,
    read_clinc150,
    read_labelled_file,
    split_domains,
    split_labels,
    write_labelled_csv,
)
from mnemeta.errors import DataError


def test_csv_quoting_as_the_csv_module_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "intents.csv"
    path.write_text(
        'text,label\n"hello, world",greet\n"she said ""hi""",greet\n"two\nlines",other\n',
        encoding="utf-8",
    )
    data = read_labelled_file(path)
    assert data.texts == ("hello, world", 'she said "hi"', "two\nlines")
    assert data.labels == ("greet", "greet", "other")


def test_tsv_jsonl_and_named_columns(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text("utterance\tintent\nbook a flight\ttravel\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(
        '{"utterance": "book a flight", "intent": "travel"}\n\n'
        '{"utterance": "café au lait", "intent": "food"}\n',
        encoding="utf-8",
    )
    tsv = read_labelled_file(tmp_path / "a.tsv", text_column="utterance", label_column="intent")
    assert (tsv.texts, tsv.labels) == (("book a flight",), ("travel",))
    jsonl = read_labelled_file(tmp_path / "a.jsonl", text_column="utterance", label_column="intent")
    assert jsonl.texts == ("book a flight", "café au lait")


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("text,label\nhi,greet\n".encode("utf-8-sig"))
    assert read_labelled_file(path).labels == ("greet",)


def test_csv_round_trip(tmp_path: Path) -> None:
    data = LabelledTexts(("a, b", 'say "x"', "line\nbreak"), ("one", "two", "one"))
    write_labelled_csv(tmp_path / "out.csv", data)
    back = read_labelled_file(tmp_path / "out.csv")
    assert (back.texts, back.labels) == (data.texts, data.labels)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "sentence,label\nhi,greet\n", "no column 'text' .*'sentence'.*data.text_column"),
        ("a.csv", "text,label\nhi,greet\n,greet\n", "line 3: empty text"),
        ("a.csv", "text,label\nhi,\n", "line 2: empty label"),
        ("a.csv", "", "empty file"),
        ("a.csv", "text,label\n", "no rows"),
        ("a.jsonl", '{"text": "hi", "label": "x"}\nnot json\n', "line 2: not JSON"),
        ("a.jsonl", '["hi", "x"]\n', "line 1: expected a JSON object"),
        ("a.xlsx", "whatever", "unknown text file type '.xlsx'; use .csv, .tsv or .jsonl"),
    ],
)
def test_bad_files_are_one_line_errors(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        read_labelled_file(path)
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_utf8_names_the_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,food\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 \(byte 14, line 2\); save the file as UTF-8"):
        read_labelled_file(path)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_labelled_file(tmp_path / "none.csv")


def _clinc(tmp_path: Path) -> Path:
    def pairs(intents: list[str], n: int) -> list[list[str]]:
        return [[f"{i} utterance {j}", i] for i in intents for j in range(n)]

    intents = [f"intent_{d}{i}" for d in "abcde" for i in range(3)]
    full = {
        "train": pairs(intents, 4),
        "val": pairs(intents, 1),
        "test": pairs(intents, 2),
        "oos_train": [["x", "oos"]],
        "oos_val": [["y", "oos"]],
        "oos_test": [["what is the meaning of life", "oos"], ["sing", "oos"]],
    }
    (tmp_path / "data_full.json").write_text(json.dumps(full), encoding="utf-8")
    domains = {d: [f"intent_{d}{i}" for i in range(3)] for d in "abcde"}
    (tmp_path / "domains.json").write_text(json.dumps(domains), encoding="utf-8")
    return tmp_path


def test_clinc150_reader(tmp_path: Path) -> None:
    data = read_clinc150(_clinc(tmp_path))
    assert len(data.splits["train"]) == 60 and len(data.splits["test"]) == 30
    assert data.out_of_scope["test"] == ("what is the meaning of life", "sing")
    assert data.domains["a"] == ("intent_a0", "intent_a1", "intent_a2")
    assert len(data.intents) == 15 and len(data.all_in_scope()) == 15 * 7


def test_clinc150_missing_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CLINC150 not found .*--data PATH"):
        read_clinc150(tmp_path)


def test_domain_split_is_seeded_and_disjoint() -> None:
    domains = {d: [d + "1"] for d in "abcdefghij"}
    split = split_domains(domains, test=3, val=1, seed=0)
    assert split == split_domains(domains, test=3, val=1, seed=0)
    assert split != split_domains(domains, test=3, val=1, seed=1)
    assert (len(split["test"]), len(split["val"]), len(split["train"])) == (3, 1, 6)
    assert sorted(split["test"] + split["val"] + split["train"]) == sorted(domains)
    with pytest.raises(DataError, match="cannot be split into 6 test, 4 val"):
        split_domains(domains, test=6, val=4, seed=0)


def test_label_split_fractions() -> None:
    labels = [f"l{i}" for i in range(10)]
    split = split_labels(labels, test=0.3, val=0.1, seed=0)
    assert (len(split["test"]), len(split["val"]), len(split["train"])) == (3, 1, 6)
    assert set(split["test"]).isdisjoint(split["train"])


def test_k_shot_is_seeded_per_label_and_names_a_short_label() -> None:
    texts = LabelledTexts(tuple(f"t{i}" for i in range(12)), tuple("abc"[i % 3] for i in range(12)))
    two = k_shot(texts, 2, seed=0)
    assert two == k_shot(texts, 2, seed=0)
    assert sorted(two.labels) == ["a", "a", "b", "b", "c", "c"]
    pairs = zip(two.texts, two.labels, strict=True)
    assert all(texts.labels[int(t[1:])] == label for t, label in pairs)
    with pytest.raises(DataError, match="label 'a' has 4 examples, fewer than k=5"):
        k_shot(texts, 5, seed=0)


@pytest.mark.parametrize(
    ("label", "words"),
    [
        ("credit_limit_change", "credit limit change"),
        ("whatIsMyName", "what is my name"),
        ("book-flight", "book flight"),
        ("transfer", "transfer"),
    ],
)
def test_intent_description(label: str, words: str) -> None:
    assert intent_description(label) == words
