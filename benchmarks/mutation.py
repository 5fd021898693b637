"""Mutation testing of mnemeta's core with mutmut: the score per package and what survived.

    pip install -e '.[dev,mutation]'
    nice -n 15 python benchmarks/mutation.py [--packages memory nn sampler store algorithms] \
        [--jobs 1] [--max-minutes 100] [--resume]

Long (minutes to hours on a 2-core CPU), so never part of CI or of the default test suite.

Each package is mutated against the tests that are about it (``PACKAGES`` below), in a scratch
project ``.mutation/<package>/`` of its own: mutmut keeps one ``mutants/`` folder and one
test-selection fingerprint per project, so running the packages side by side in one folder would
make each run throw away the previous one's results. The scratch project links ``src`` and
``tests`` to this checkout and gets this checkout's ``pyproject.toml`` with the ``[tool.mutmut]``
table narrowed to the package (its shared settings, e.g. the per-mutant timeout, stay in
``pyproject.toml``). mutmut copies the sources into ``mutants/src``, mutates them there and runs
the tests against that copy; ``PYTHONPATH`` points there too, so the worker processes that the
store's durability tests start import the mutants as well.

The results are merged into ``benchmarks/results/mutation.json`` (one entry per package, each
with its own command, machine, date and commit) and rendered into ``mutation.md``. A surviving
mutant is looked up in ``benchmarks/mutation_equivalent.toml`` by file, function and the changed
source lines (not by mutmut's numbered name, which shifts whenever a function gains a mutant),
so a judgement made once is kept by every re-run for as long as that line is unchanged:

    [[mutant]]
    file = "src/mnemeta/memory/lrua.py"
    function = "LRUAMemory.forward"
    original = "usage = self.gamma * usage + read + write"   # the line as it stands, stripped
    mutated = "usage = self.gamma / usage + read + write"    # the mutant's line, stripped
    verdict = "equivalent"   # or "needs a test"
    why = "..."              # why nothing observable changes, or which test should kill it

Score per package = killed / (mutants - equivalent), where killed counts the mutants whose tests
failed, timed out or crashed; a mutant that no selected test reaches ("no tests") counts as not
killed. The target is >= 90%.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".mutation"
RESULTS = ROOT / "benchmarks" / "results"
EQUIVALENT_FILE = ROOT / "benchmarks" / "mutation_equivalent.toml"


@dataclass(frozen=True)
class Package:
    mutate: tuple[str, ...]  # globs of files to mutate, relative to the checkout
    tests: tuple[str, ...]  # pytest arguments that select the package's tests
    why: str  # why these tests


# test_compile.py checks that the compiled meta-loss is one graph; mutmut's trampoline in front of
# every mutated function reads a ContextVar, which dynamo cannot trace, so under mutmut that test
# fails on the unmutated code and mutmut would refuse to start. Its eager-gradient half is what
# test_maml.py checks on the same learners.
NO_COMPILE = "--ignore=tests/algorithms/test_compile.py"
# The inner optimiser's one-graph check fails under mutmut for the same reason.
NO_INNER_OPTIM_COMPILE = (
    "--deselect=tests/algorithms/test_inner_optim.py::test_compiles_to_one_graph"
)

# Smallest first: the order in which `--packages all` runs them.
PACKAGES: dict[str, Package] = {
    "sampler": Package(
        ("src/mnemeta/data/sampler.py",),
        ("tests/data/test_sampler.py",),
        "the sampler's own tests",
    ),
    "memory": Package(
        ("src/mnemeta/memory/*",),
        ("tests/memory", "tests/algorithms/test_mann.py"),
        "the memory modules' tests and the NTM/MANN networks built on them",
    ),
    "nn": Package(
        ("src/mnemeta/nn/*",),
        ("tests/nn", "tests/algorithms", NO_COMPILE, NO_INNER_OPTIM_COMPILE),
        "the layers' tests and the learners that run them (backbones are exercised there)",
    ),
    "store": Package(
        ("src/mnemeta/store/*",),
        ("tests/store",),
        "the task memory's tests, durability workers included",
    ),
    "algorithms": Package(
        ("src/mnemeta/algorithms/*",),
        ("tests/algorithms", "tests/memory/test_interface.py", NO_COMPILE, NO_INNER_OPTIM_COMPILE),
        "the learners' tests, and the memory interface's, which build MemoryAugmentedNetwork "
        "(algorithms/mann.py) from names, keywords and memory objects",
    ),
}

# mutmut exit codes (mutmut.stats.status_by_exit_code) folded into the columns we report.
KILLED = {1: "killed", 3: "killed"}
TIMEOUT = {36, -24, 24, 152, 255}
# A test process killed by a signal (segfault, SIGKILL after the CPU limit, or FAISS's abort()
# on an argument it refuses) is a mutant the tests did not survive.
CRASHED = {-11, -9, -6, -7, -8, -4}
SURVIVED = {0}
NO_TESTS = {5, 33}


def status(exit_code: int | None) -> str:
    if exit_code is None:
        return "not checked"
    if exit_code in KILLED:
        return "killed"
    if exit_code in TIMEOUT:
        return "timeout"
    if exit_code in CRASHED:
        return "crashed"
    if exit_code in SURVIVED:
        return "survived"
    if exit_code in NO_TESTS:
        return "no tests"
    return "suspicious"


DETECTED = {"killed", "timeout", "crashed"}


# --------------------------------------------------------------------------------- the record


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores"


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip()


def tested_trees(commit_hash: str) -> dict[str, str]:
    """Git tree ids of src/ and tests/ at a recorded commit: equal ids mean the same code was
    measured, whatever else (benchmarks/, this script) changed between two packages' runs."""
    head = commit_hash.split()[0]
    return {d: git("rev-parse", f"{head}:{d}") for d in ("src", "tests")}


def commit() -> str:
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", "src", "tests")
    return head + (" (with uncommitted changes to src/ or tests/)" if dirty else "")


# ------------------------------------------------------------------- the scratch project


def render_toml_value(value: Any) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML values.
    return json.dumps(value, ensure_ascii=True)


def scratch_pyproject(package: Package) -> str:
    """This checkout's pyproject.toml with [tool.mutmut] narrowed to one package."""
    text = (ROOT / "pyproject.toml").read_text()
    shared = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    kept, skipping = [], False
    for line in text.splitlines():
        if re.match(r"^\s*\[", line):
            skipping = line.strip() == "[tool.mutmut]"
        if not skipping:
            kept.append(line)
    settings = {
        **shared,
        "source_paths": ["src"],
        "only_mutate": list(package.mutate),
        "pytest_add_cli_args_test_selection": list(package.tests),
    }
    table = ["", "[tool.mutmut]"] + [f"{k} = {render_toml_value(v)}" for k, v in settings.items()]
    return "\n".join(kept + table) + "\n"


def prepare(name: str, package: Package, resume: bool) -> Path:
    folder = SCRATCH / name
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for link in ("src", "tests"):
        target = folder / link
        if not target.is_symlink():
            target.symlink_to(ROOT / link, target_is_directory=True)
    (folder / "pyproject.toml").write_text(scratch_pyproject(package))
    # Made before Python starts so that PYTHONPATH's entry exists (an entry that is missing at
    # start-up is cached as "no finder" and would stay blind to the mutants copied in later).
    (folder / "mutants" / "src").mkdir(parents=True, exist_ok=True)
    return folder


MUTMUT_MAIN = "import sys; from mutmut.__main__ import cli; sys.exit(cli())"


def run_mutmut(folder: Path, jobs: int, log: Path) -> tuple[int, float, list[str]]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(folder / "mutants" / "src"),
        MNEMETA_DATA=os.environ.get("MNEMETA_DATA", str(ROOT.parent / "shared" / "data")),
    )
    # Through `python -c`, not the `mutmut` script: multiprocessing's forkserver and spawn
    # children re-import the parent's __main__ when it is a file or a module, and importing
    # mutmut's takes ~1 s, longer than the durability tests give a worker before killing it.
    cmd = [sys.executable, "-c", MUTMUT_MAIN, "run", "--max-children", str(jobs)]
    start = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    rc = done.returncode
    return rc, time.monotonic() - start, cmd


# ----------------------------------------------------------------------- reading the result


def load_equivalents() -> list[dict[str, str]]:
    if not EQUIVALENT_FILE.exists():
        return []
    return list(tomllib.loads(EQUIVALENT_FILE.read_text()).get("mutant", []))


def function_of(key: str) -> tuple[str, str | None]:
    """'mnemeta.memory.lrua.xǁLRUAǁforward__mutmut_3' -> ('forward', 'LRUA')."""
    mangled = key.rpartition(".")[2].partition("__mutmut_")[0]
    if mangled.startswith("x_"):
        return mangled[2:], None
    _, cls, func = mangled.split("ǁ")
    return func, cls


def function_span(source: str, func: str, cls: str | None) -> tuple[int, int]:
    body = ast.parse(source).body
    if cls is not None:
        for node in body:
            if isinstance(node, ast.ClassDef) and node.name == cls:
                body = node.body
                break
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return first, node.end_lineno or node.lineno
    return 1, len(source.splitlines())


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    removed, added = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
    return removed, added


def locate(source_lines: list[str], span: tuple[int, int], removed: list[str], diff: str) -> int:
    """The file line of the first changed line of a function-level diff."""
    first, last = span
    if removed:
        hits = [i for i in range(first, last + 1) if source_lines[i - 1].strip() == removed[0]]
        if len(hits) == 1:
            return hits[0]
    # Fall back to the hunk's offset inside the function (exact unless comments above the
    # function shifted what mutmut printed).
    for line in diff.splitlines():
        m = re.match(r"^@@ -(\d+)", line)
        if m:
            offset = int(m.group(1))
            seen = 0
            for body in diff.split(line, 1)[1].splitlines():
                if body.startswith("-"):
                    return first + offset - 1 + seen
                if body.startswith(" "):
                    seen += 1
            return first + offset - 1
    return first


def judgement(
    equivalents: list[dict[str, str]],
    file: str,
    function: str,
    removed: list[str],
    added: list[str],
) -> dict[str, str] | None:
    for entry in equivalents:
        if (
            entry.get("file") == file
            and entry.get("function") == function
            and entry.get("original", "") == "\n".join(removed)
            and entry.get("mutated", "") == "\n".join(added)
        ):
            return entry
    return None


def collect(folder: Path, name: str, package: Package) -> dict[str, Any]:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    equivalents = load_equivalents()
    counts = dict.fromkeys(
        ["killed", "timeout", "crashed", "survived", "no tests", "suspicious", "not checked"], 0
    )
    files: dict[str, dict[str, int]] = {}
    survivors: list[dict[str, Any]] = []
    matched: set[int] = set()
    recheck_file = folder / RECHECK
    recheck = json.loads(recheck_file.read_text()) if recheck_file.exists() else {}
    rechecked = 0
    metas = sorted((folder / "mutants").glob("src/**/*.py.meta"))
    old_cwd = Path.cwd()
    os.chdir(folder)
    try:
        for meta_path in metas:
            rel = meta_path.relative_to(folder / "mutants").as_posix()[: -len(".meta")]
            meta = json.loads(meta_path.read_text())
            source = (ROOT / rel).read_text()
            source_lines = source.splitlines()
            per_file = files.setdefault(rel, dict.fromkeys(counts, 0))
            for key, code in sorted(meta["exit_code_by_key"].items(), key=_mutant_order):
                st = status(code)
                if st in ("survived", "no tests") and recheck.get(key) in KILLED:
                    st = "killed"  # by a fresh process, see recheck_import_time()
                    rechecked += 1
                counts[st] += 1
                per_file[st] += 1
                if st in DETECTED:
                    continue
                diff = get_diff_for_mutant(key, path=rel)
                func, cls = function_of(key)
                function = f"{cls}.{func}" if cls else func
                removed, added = changed_lines(diff)
                line = locate(source_lines, function_span(source, func, cls), removed, diff)
                entry = judgement(equivalents, rel, function, removed, added)
                if entry is not None:
                    matched.add(id(entry))
                survivors.append(
                    {
                        "mutant": key,
                        "status": st,
                        "file": rel,
                        "line": line,
                        "function": function,
                        "original": "\n".join(removed),
                        "mutated": "\n".join(added),
                        "diff": _short_diff(diff),
                        "verdict": entry.get("verdict", "needs a test") if entry else None,
                        "why": entry.get("why", "") if entry else "",
                    }
                )
    finally:
        os.chdir(old_cwd)
    total = sum(counts.values())
    unmatched = unmatched_judgements(equivalents, matched, files)
    equivalent = sum(1 for s in survivors if s["verdict"] == "equivalent")
    detected = counts["killed"] + counts["timeout"] + counts["crashed"]
    # An interrupted run leaves mutants "not checked": they are left out of the score and the
    # record says the package is incomplete.
    scored = total - equivalent - counts["not checked"]
    return {
        "mutate": list(package.mutate),
        "tests": list(package.tests),
        "tests_why": package.why,
        "mutants": total,
        **{k.replace(" ", "_"): v for k, v in counts.items()},
        "equivalent": equivalent,
        "score": round(100 * detected / scored, 1) if scored else None,
        "complete": counts["not checked"] == 0,
        "files": files,
        "surviving": sorted(survivors, key=lambda s: (s["file"], s["line"], s["mutant"])),
        "unmatched_judgements": unmatched,
        "killed_in_a_fresh_process": rechecked,
    }


# ------------------------------------------------------- mutants of functions run at import

RECHECK = "recheck.json"


def import_time_functions(source: str) -> set[str]:
    """Names of the module's functions that its top-level code calls (e.g. a registry entry's
    ``build=_family(...)``): they run when the module is imported."""
    called: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
                called.add(sub.func.id)
    return called


def recheck_import_time(folder: Path) -> dict[str, int]:
    """Run each surviving mutant of an import-time function in a fresh process.

    mutmut imports the code once and forks a child per mutant, which then switches its mutant
    on; a function the module calls while being imported (a registry builder) has run before
    the fork, so its mutants are never active and survive whatever the tests check. Here each
    is switched on before Python starts (mutmut's MUTANT_UNDER_TEST), so that the import runs
    the mutant, and the tests of the module's mirror file ``tests/<pkg>/test_<module>.py`` run
    against it; their exit code is kept in ``recheck.json`` (1: killed)."""
    results: dict[str, int] = {}
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(folder / "mutants" / "src"))
    for meta_path in sorted((folder / "mutants").glob("src/**/*.py.meta")):
        rel = meta_path.relative_to(folder / "mutants").as_posix()[: -len(".meta")]
        funcs = import_time_functions((ROOT / rel).read_text())
        parts = Path(rel).parts  # src/mnemeta/<pkg>/<module>.py
        mirror = Path("tests", parts[2], f"test_{Path(rel).stem}.py")
        if not funcs or not (ROOT / mirror).exists():
            continue
        meta = json.loads(meta_path.read_text())
        keys = [
            key
            for key, code in sorted(meta["exit_code_by_key"].items(), key=_mutant_order)
            if status(code) in ("survived", "no tests") and function_of(key)[0] in funcs
        ]
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", str(mirror)]
        # The unmutated code must pass the file, or every mutant would look killed.
        control = subprocess.run(
            cmd, cwd=folder, env={**env, "MUTANT_UNDER_TEST": "none"}, capture_output=True
        )
        if keys and control.returncode != 0:
            print(f"  {mirror} fails on the unmutated code; its mutants are not rechecked")
            continue
        for key in keys:
            done = subprocess.run(
                cmd, cwd=folder, env={**env, "MUTANT_UNDER_TEST": key}, capture_output=True
            )
            results[key] = done.returncode
            print(f"  {key}: exit {done.returncode}", flush=True)
    (folder / RECHECK).write_text(json.dumps(results, indent=1) + "\n")
    return results


def unmatched_judgements(
    equivalents: list[dict[str, str]], matched: set[int], files: dict[str, Any]
) -> list[dict[str, str]]:
    """Judgements of this package's files that no surviving mutant matched, so that a stale one
    is reported rather than silently kept: either its line is no longer in the source (the code
    moved or changed: the mutant now there needs judging afresh), or the line is still there and
    no survivor matches it (the mutant is now killed, or mutmut no longer generates it)."""
    out = []
    for entry in equivalents:
        if entry.get("file") not in files or id(entry) in matched:
            continue
        source = {line.strip() for line in (ROOT / entry["file"]).read_text().splitlines()}
        present = all(line in source for line in entry.get("original", "").split("\n"))
        out.append(
            {
                "file": entry["file"],
                "function": entry.get("function", ""),
                "original": entry.get("original", ""),
                "mutated": entry.get("mutated", ""),
                "verdict": entry.get("verdict", ""),
                "state": "line still in the source; no survivor matches (killed now)"
                if present
                else "stale: line no longer in the source (moved or changed)",
            }
        )
    return out


def _mutant_order(item: tuple[str, Any]) -> tuple[str, int]:
    key = item[0]
    stem, _, number = key.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def _short_diff(diff: str) -> str:
    """Only the changed lines with one line of context, not the whole function."""
    lines = diff.splitlines()[2:]  # drop the ---/+++ header
    keep = set()
    for i, line in enumerate(lines):
        if line.startswith(("-", "+")):
            keep.update({i - 1, i, i + 1})
    return "\n".join(lines[i] for i in sorted(keep) if 0 <= i < len(lines))


# ----------------------------------------------------------------------------- the file

PROVENANCE = ("command", "machine", "date", "commit")
SUMMARY = (
    "mutants",
    "killed",
    "timeout",
    "crashed",
    "survived",
    "no_tests",
    "equivalent",
    "score",
    "tests",
    "trees",
)


def to_file(record: dict[str, Any]) -> dict[str, Any]:
    """One section per package, each with the ``header`` (command, machine, date, commit) of
    the run that measured it: the file is written package by package, by several commands."""
    out: dict[str, Any] = {"tool": record["tool"]}
    for key in ("notes", "history"):
        if record.get(key):
            out[key] = record[key]
    for name, p in record["packages"].items():
        header = {k: p[k] for k in PROVENANCE}
        out[name] = {"header": header, **{k: v for k, v in p.items() if k not in PROVENANCE}}
    return out


def from_file(data: dict[str, Any]) -> dict[str, Any]:
    if "packages" in data:  # the first records' layout
        return data
    packages = {
        name: {**v["header"], **{k: x for k, x in v.items() if k != "header"}}
        for name, v in data.items()
        if isinstance(v, dict) and "header" in v
    }
    return {
        "tool": data.get("tool"),
        "notes": data.get("notes", []),
        "history": data.get("history", []),
        "packages": packages,
    }


def summary(name: str, p: dict[str, Any]) -> dict[str, Any]:
    """What an earlier measurement of a package is kept as once a new one replaces it."""
    return {"package": name, **{k: p.get(k) for k in (*PROVENANCE, *SUMMARY)}}


# ---------------------------------------------------------------------------- the markdown


def render_markdown(record: dict[str, Any]) -> str:
    out = [
        "# Mutation testing of the core",
        "",
        f"Tool: {record['tool']}. Written by `benchmarks/mutation.py`; the figures and every "
        "surviving mutant's diff are in `mutation.json` beside this file. Equivalence "
        "judgements are kept in `benchmarks/mutation_equivalent.toml`.",
        "",
        "Score = killed / (mutants − equivalent); *killed* counts mutants whose tests failed, "
        "timed out or crashed; a mutant no selected test reaches (*no tests*) counts as not "
        "killed. Target: ≥ 90% per package.",
        "",
        "| package | mutants | killed | timeout | crashed | survived | no tests | equivalent "
        "| score | tests | run (min) | date | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    packages = record["packages"]
    for name in PACKAGES:
        p = packages.get(name)
        if p is None:
            out.append(f"| {name} | not measured yet | | | | | | | | | | | |")
            continue
        score = "—" if p["score"] is None else f"{p['score']:.1f}%"
        out.append(
            f"| {name} | {p['mutants']} | {p['killed']} | {p['timeout']} | {p['crashed']} "
            f"| {p['survived']} | {p['no_tests']} | {p['equivalent']} | **{score}** "
            f"| {', '.join(f'`{t}`' for t in p['tests'])} | {p['minutes']:.0f} | {p['date']} "
            f"| {p['commit'][:10]} |"
        )
    notes = record.get("notes") or []
    if notes:
        out += ["", *[f"- {n}" for n in notes]]
    out += [
        "",
        "Each package is mutated against its own tests only (the *tests* column), so a mutant "
        "that only the CLI or recipe tests would notice counts as not killed here. "
        "`tests/algorithms/test_compile.py` and "
        "`tests/algorithms/test_inner_optim.py::test_compiles_to_one_graph` are left out of the "
        "`nn` and `algorithms` runs: mutmut's trampoline in front of every mutated function "
        "reads a ContextVar, which dynamo cannot trace, so their one-graph assertions fail on "
        "the unmutated code.",
        "",
        "That the tests run the mutants, not the installed package: mutmut's forced-fail run "
        "(every mutated function raises) must fail the selected tests before any mutant is "
        "tried, and does for every package here; and the store's durability tests start "
        "their writers from a forkserver, whose children import the mutants too (checked once "
        "by hand: under the forced-fail mutant such a child raises mutmut's failure, and its "
        "`mnemeta.store.task_memory.__file__` is the copy in `mutants/src`).",
        "",
        "Commands (each package's own, with its machine, are in the JSON):",
        "",
    ]
    trees = {json.dumps(p.get("trees"), sort_keys=True) for p in packages.values()}
    if len(trees) == 1 and None not in (p.get("trees") for p in packages.values()):
        t = next(iter(packages.values()))["trees"]
        out[-2:-2] = [
            f"All packages were measured on the same code: src/ tree {t['src'][:10]} and tests/ "
            f"tree {t['tests'][:10]} (the commits differ only outside src/ and tests/).",
            "",
        ]
    for name in PACKAGES:
        p = packages.get(name)
        if p:
            out.append(f"- {name}: `{p['command']}` on {p['machine']}")
    history = record.get("history") or []
    if history:
        out += [
            "",
            "## Earlier measurements",
            "",
            "Each replaced by the one in the table above; kept to show what the tests added "
            "since changed. *equivalent* is as judged when the row was written (the rows of "
            "this branch's runs with today's judgements file).",
            "",
            "| package | mutants | killed | timeout | crashed | survived | no tests | equivalent "
            "| score | tests/ tree | commit | date | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for h in history:
            score = "—" if h.get("score") is None else f"{h['score']:.1f}%"
            tree = (h.get("trees") or {}).get("tests", "")[:10]
            out.append(
                f"| {h['package']} | {h['mutants']} | {h['killed']} | {h['timeout']} "
                f"| {h['crashed']} | {h['survived']} | {h['no_tests']} | {h['equivalent']} "
                f"| {score} | {tree} | {str(h['commit'])[:10]} | {h['date']} "
                f"| `{h['command']}` |"
            )
    for name in PACKAGES:
        p = packages.get(name)
        if not p:
            continue
        out += ["", f"## {name}: per file", "", "| file | mutants | killed | not killed |"]
        out.append("|---|---|---|---|")
        for file, c in p["files"].items():
            detected = c["killed"] + c["timeout"] + c["crashed"]
            total = sum(c.values())
            out.append(f"| `{file}` | {total} | {detected} | {total - detected} |")
        wanted: dict[str, int] = {}
        for surv in p["surviving"]:
            if surv["verdict"] == "needs a test":
                found = re.search(r"\btest_\w+", surv["why"])
                test = found.group(0) if found else "(a test that matches the error message)"
                wanted[test] = wanted.get(test, 0) + 1
        if wanted:
            out += ["", f"## {name}: the tests that would kill the survivors", ""]
            out += ["| test (described with each mutant below) | survivors it kills |", "|---|---|"]
            for test, count in sorted(wanted.items(), key=lambda kv: (-kv[1], kv[0])):
                out.append(f"| `{test}` | {count} |")
        unmatched = p.get("unmatched_judgements", [])
        if unmatched:
            out += [
                "",
                f"## {name}: judgements that no survivor matched",
                "",
                "Kept in `benchmarks/mutation_equivalent.toml` but used by no mutant of this run "
                "(a stale one is not counted; a mutant on its moved line was judged afresh).",
                "",
                "| function | original → mutated | verdict | state |",
                "|---|---|---|---|",
            ]
            for u in unmatched:
                change = f"`{u['original']}` → `{u['mutated']}`".replace("|", "\\|")
                change = change.replace("\n", " ⏎ ")
                out.append(
                    f"| `{u['file']}` `{u['function']}` | {change} | {u['verdict']} "
                    f"| {u['state']} |"
                )
        out += ["", f"## {name}: surviving mutants", ""]
        if not p["surviving"]:
            out.append("None.")
        for s in p["surviving"]:
            if s["verdict"] == "equivalent":
                mark = f"**equivalent** — {s['why']}"
            elif s["verdict"]:
                mark = f"**not killed — needs a test**: {s['why']}"
            else:
                mark = "**not killed — needs a test** (not yet reviewed)"
            label = "" if s["status"] == "survived" else f" ({s['status']})"
            out += [
                f"- `{s['file']}:{s['line']}` in `{s['function']}`{label}: {mark}",
                "",
                "  ```diff",
                *[f"  {line}" for line in s["diff"].splitlines()],
                "  ```",
            ]
    return "\n".join(out) + "\n"


# -------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--packages", nargs="+", default=["all"], choices=[*PACKAGES, "all"], metavar="PACKAGE"
    )
    ap.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no further package once this much wall time has passed",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep .mutation/<package>/ and test only the mutants without a result yet",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="re-read the finished runs in .mutation/ and rewrite the record, running nothing",
    )
    ap.add_argument(
        "--recheck-import-time",
        action="store_true",
        help="after the run, test the survivors of functions called at import in a fresh "
        "process each (see recheck_import_time)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "mutation.json")
    args = ap.parse_args()
    try:
        metadata.version("mutmut")
    except metadata.PackageNotFoundError:
        sys.exit("mutmut is not installed here: pip install -e '.[dev,mutation]'")
    names = list(PACKAGES) if "all" in args.packages else args.packages

    record: dict[str, Any] = {"packages": {}}
    if args.out.exists():
        record = from_file(json.loads(args.out.read_text()))
    record["tool"] = f"mutmut {metadata.version('mutmut')}"
    command = "python benchmarks/mutation.py " + " ".join(sys.argv[1:])

    start = time.monotonic()
    for name in names:
        elapsed = (time.monotonic() - start) / 60
        if args.max_minutes is not None and elapsed > args.max_minutes:
            print(f"{elapsed:.0f} min passed: not starting {name}", flush=True)
            continue
        package = PACKAGES[name]
        folder = SCRATCH / name
        if args.report_only:
            if args.recheck_import_time and (folder / "mutants").exists():
                recheck_import_time(folder)
            previous = record["packages"].get(name)
            if previous is None or not (folder / "mutants").exists():
                print(f"{name}: no finished run in {folder}", flush=True)
                continue
            result = collect(folder, name, package)
            result.update({k: previous[k] for k in ("command", "machine", "date", "commit")})
            result.update({k: previous[k] for k in ("minutes", "mutmut_exit", "jobs")})
            result["trees"] = tested_trees(previous["commit"])
        else:
            folder = prepare(name, package, args.resume)
            log = folder / "mutmut.log"
            print(f"{name}: mutmut in {folder} (log: {log})", flush=True)
            rc, seconds, _ = run_mutmut(folder, args.jobs, log)
            if args.recheck_import_time:
                recheck_import_time(folder)
            result = collect(folder, name, package)
            if result["not_checked"] == result["mutants"]:
                print(f"{name}: mutmut exited {rc} before testing any mutant; see {log}")
                continue
            result.update(
                command=command,
                machine=machine(),
                date=datetime.date.today().isoformat(),
                commit=commit(),
                minutes=round(seconds / 60, 1),
                mutmut_exit=rc,
                jobs=args.jobs,
            )
            result["trees"] = tested_trees(result["commit"])
            if rc != 0:
                print(f"{name}: mutmut exited {rc}; see {log}", flush=True)
        previous = record["packages"].get(name)
        if previous is not None and not args.report_only:
            record.setdefault("history", []).append(summary(name, previous))
        record["packages"][name] = result
        score = "—" if result["score"] is None else f"{result['score']:.1f}%"
        print(
            f"{name}: {result['mutants']} mutants, {result['killed']} killed, "
            f"{result['survived']} survived, {result['no_tests']} without tests, "
            f"{result['equivalent']} equivalent: score {score}",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(to_file(record), indent=1, ensure_ascii=False) + "\n")
        args.out.with_suffix(".md").write_text(render_markdown(record))


if __name__ == "__main__":
    main()
