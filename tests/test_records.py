"""Every recorded figure is backed by a results file that says how it was made.

The README's results table may quote only numbers that are in a JSON or CSV file under
``benchmarks/results/``; every such JSON carries the command that wrote it, the machine and
the date; and that command is quoted verbatim in one of the records (``results/*.md``), so a
record cannot name one command while its file was written by another. Reads text files only:
no data, no torch, well under a second.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"

# A figure as printed: digits with optional thousands separators ("19,280") and decimals.
# Not part of a word or of a longer number on either side ("5w1s", "10⁶", "v2.1" stay out).
# A minus sign (U+2212, or "-") counts when it stands right before the digits and after no word
# character: "−11.97" is negative, the "-" of "20-40" is a range.
NUMBER = re.compile(r"(?<![\w.,])([\u2212-](?=\d))?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w]|,\d{3})")
ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
CSV_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Figure:
    text: str  # as printed, e.g. "19,280" or "0.574"
    value: float
    decimals: int

    def matches(self, number: float) -> bool:
        """True when ``number`` prints as this figure at its precision (half a unit in the last
        printed place either way; the 1e-9 absorbs float32 values stored as decimals)."""
        return abs(number - self.value) <= 0.5 * 10.0 ** (-self.decimals) + 1e-9


def figures(text: str) -> list[Figure]:
    """The numbers printed in ``text``, in order."""
    out = []
    for m in NUMBER.finditer(text):
        sign, whole, fraction = m.group(1) or "", m.group(2), m.group(3) or ""
        value = float(whole.replace(",", "") + fraction)
        out.append(
            Figure(
                sign + whole + fraction,
                -value if sign else value,
                len(fraction) - 1 if fraction else 0,
            )
        )
    return out


def json_numbers(node: Any) -> list[float]:
    """Every number value in a parsed JSON document. Strings are left out on purpose: a
    hand-written note in a JSON (``task_memory_experiments.json``'s ``notes``) must not back
    the figures it quotes."""
    if isinstance(node, bool):
        return []
    if isinstance(node, int | float):
        return [float(node)]
    if isinstance(node, dict):
        return [x for value in node.values() for x in json_numbers(value)]
    if isinstance(node, list):
        return [x for value in node for x in json_numbers(value)]
    return []


def csv_numbers(path: Path) -> list[float]:
    """Every numeric cell of a CSV (empty cells and column names skipped)."""
    with path.open(newline="") as f:
        return [float(c) for row in csv.reader(f) for c in row if CSV_NUMBER.fullmatch(c)]


@cache
def results_numbers() -> dict[str, list[float]]:
    """File name → the numbers in it, for every JSON and CSV under benchmarks/results."""
    numbers = {p.name: json_numbers(json.loads(p.read_text())) for p in RESULTS.glob("*.json")}
    numbers.update({p.name: csv_numbers(p) for p in RESULTS.glob("*.csv")})
    return numbers


def readme_results_rows() -> list[tuple[str, str]]:
    """``(what, result)`` cells of each row of the README's "## Results" table."""
    text = README.read_text()
    start = text.index("\n## Results\n")
    end = text.find("\n## ", start + 1)
    lines = [ln for ln in text[start:end].splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    header, body = cells[0], [c for c in cells[1:] if not set("".join(c)) <= set("-: ")]
    what, result = header.index("what"), header.index("result")
    return [(row[what], row[result]) for row in body]


def provenance_blocks(data: Any) -> list[dict[str, Any]] | None:
    """Where a results JSON keeps its command, machine and date: at the top, in a top-level
    ``header``, or (a file written section by section) in each section's ``header``."""
    if not isinstance(data, dict):
        return None
    if "command" in data or "argv" in data:
        return [data]
    if isinstance(data.get("header"), dict):
        return [data["header"]]
    sections = [v for v in data.values() if isinstance(v, dict)]
    if sections and all(isinstance(s.get("header"), dict) for s in sections):
        return [s["header"] for s in sections]
    return None


def command_of(block: dict[str, Any]) -> str:
    command = block.get("command", block.get("argv"))
    return " ".join(command) if isinstance(command, list) else str(command or "")


def squeeze(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- the parser and the matcher


def test_figures_reads_separators_decimals_and_skips_words() -> None:
    parsed = figures("**19,280 episodes/s**; 0.37 / 0.56 ms, 0.994 (IVF) at 10⁶, 5w1s, 1st")
    assert [(f.text, f.value, f.decimals) for f in parsed] == [
        ("19,280", 19280.0, 0),
        ("0.37", 0.37, 2),
        ("0.56", 0.56, 2),
        ("0.994", 0.994, 3),
    ]


def test_a_minus_sign_counts_and_a_range_is_no_sign() -> None:
    parsed = figures("**\u221211.97 ± 2.96**, -0.49; 20-40 steps")
    assert [(f.text, f.value) for f in parsed] == [
        ("\u221211.97", -11.97),
        ("2.96", 2.96),
        ("-0.49", -0.49),
        ("20", 20.0),
        ("40", 40.0),
    ]
    assert parsed[0].matches(-11.966) and not parsed[0].matches(11.966)


def test_a_figure_matches_only_at_its_printed_precision() -> None:
    (f,) = figures("98.40")
    assert f.matches(98.39601135253906)  # protonet_omniglot_5w1s_cpu.json's test mean
    assert not f.matches(98.3939)  # would print 98.39
    assert not f.matches(98.4061)  # would print 98.41
    (g,) = figures("297")
    assert g.matches(297.29998779296875) and not g.matches(297.6)
    (h,) = figures("14,898")
    assert h.matches(14898) and not h.matches(14899)


# ---------------------------------------------------------------- the records

ROWS = readme_results_rows()


def test_the_readme_results_table_is_found() -> None:
    # Guards the parametrised test below against passing on an empty table.
    assert len(ROWS) >= 10
    assert any(f.text == "98.40" for _, result in ROWS for f in figures(result))


@pytest.mark.parametrize(("what", "result"), ROWS, ids=[what[:40] for what, _ in ROWS])
def test_every_figure_in_the_readme_results_table_is_in_a_results_file(
    what: str, result: str
) -> None:
    numbers = results_numbers()
    unbacked = [
        f.text
        for f in figures(result)
        if not any(f.matches(x) for values in numbers.values() for x in values)
    ]
    assert not unbacked, (
        f"README results row {what!r}: {', '.join(unbacked)} in {result!r} is in no JSON or CSV "
        f"under benchmarks/results/ (record the file that holds it, or remove the figure)"
    )


JSONS = sorted(RESULTS.glob("*.json"))


def test_there_are_results_files() -> None:
    assert len(JSONS) >= 10  # the glob found the folder


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
def test_every_results_json_says_command_machine_and_date(path: Path) -> None:
    blocks = provenance_blocks(json.loads(path.read_text()))
    assert blocks, f"{path.name}: no command/argv, machine and date (at the top or in a header)"
    for block in blocks:
        missing = [
            key
            for key, ok in (
                ("command", command_of(block).strip() != ""),
                ("machine", str(block.get("machine", "")).strip() != ""),
                ("date", bool(ISO_DATE.search(str(block.get("date", ""))))),
            )
            if not ok
        ]
        assert not missing, f"{path.name}: {', '.join(missing)} missing or empty in {block}"


RECORDS = squeeze("\n".join(p.read_text() for p in sorted(RESULTS.glob("*.md"))))


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
def test_the_command_inside_each_results_json_is_quoted_in_a_record(path: Path) -> None:
    for block in provenance_blocks(json.loads(path.read_text())) or []:
        command = squeeze(command_of(block))
        assert command in RECORDS, (
            f"{path.name} was written by `{command}`, which no benchmarks/results/*.md quotes; "
            "the record must name the command that wrote its file (say where it was copied)"
        )


def test_every_results_file_a_record_names_exists() -> None:
    named = set(re.findall(r"`([\w.-]+\.(?:json|csv|png))`", RECORDS))
    run_folder_files = {"result.json", "metrics.csv", "config.json"}  # inside runs/<name>/
    missing = sorted(n for n in named - run_folder_files if not (RESULTS / n).is_file())
    assert not missing, f"records name files that are not in benchmarks/results/: {missing}"


def test_every_results_file_holds_numbers() -> None:
    # A file whose numbers were not read would back nothing; the README test would then blame
    # the figure, not the reader.
    empty = [name for name, values in results_numbers().items() if not values]
    assert not empty, f"no numbers read from {empty}"
