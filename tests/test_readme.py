"""The README works as written: its Python examples run, its commands are CI's, its demo runs.

Each ```python block runs **on its own**: in a fresh interpreter, in an empty working directory,
as a reader who copies that one block into a file would run it. So every block carries its own
imports, and nothing one block registers or writes (a learner in ``LEARNERS``, a ``tasks/``
folder) reaches another block or the rest of the suite. A block may be preceded, on the line
right before its opening fence, by one directive in an HTML comment (invisible on GitHub):

    <!-- test: skip (REASON) -->           not run; reported as skipped with REASON
    <!-- test: fixture DEST = SRC -->      first copy SRC (a file in this repository) to DEST in
                                           the block's working directory
    <!-- test: same as .ci/run -->         (a bash block) its commands are the checks .ci/run runs

An unknown or misplaced directive fails the suite, so that a typo cannot skip a block silently.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI = REPO / ".ci" / "run"

_DIRECTIVE = re.compile(r"^<!--\s*test:\s*(?P<body>.*?)\s*-->$")
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README: its language, first code line (1-based), code, directive."""

    lang: str
    line: int
    code: str
    directive: str | None


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text``, each with the ``<!-- test: ... -->`` line right before it."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i].strip())
        if m and not (i + 1 < len(lines) and _FENCE.match(lines[i + 1])):
            raise AssertionError(
                f"README.md:{i + 1}: {lines[i].strip()} must stand on the line right before a "
                "code block's opening fence"
            )
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        before = _DIRECTIVE.match(lines[i - 1].strip()) if i else None
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"README.md:{i + 1}: a code block is never closed")
        blocks.append(
            Block(
                lang=fence["lang"],
                line=i + 2,
                code="\n".join(lines[i + 1 : end]) + "\n",
                directive=before["body"] if before else None,
            )
        )
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: lines joined at a trailing ``\\``, split at ``&&``."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()  # an end-of-line comment is not part of the command
        if line and not line.startswith("#"):
            commands += [" ".join(part.split()) for part in line.split("&&")]
    return commands


def ci_lines() -> list[str]:
    """The command lines of ``.ci/run``, comments and blank lines left out, in order."""
    lines = [line.strip() for line in CI.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ci_checks() -> list[str]:
    """What CI checks, i.e. every command after its last ``pip install``."""
    lines = ci_lines()
    last_install = max(i for i, line in enumerate(lines) if "pip install" in line)
    return lines[last_install + 1 :]


def quick_start() -> str:
    """The README's Quick start section, as written."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Quick start")
    return text[start : text.index("\n## ", start + 1)]


def prose(text: str) -> str:
    """``text`` with every run of white space one space: a phrase may wrap across lines."""
    return " ".join(text.split())


def test_the_readme_has_the_blocks_this_test_expects() -> None:
    assert len(PYTHON) >= 5, "the README's Python examples were not found"
    for b in BLOCKS:
        d = b.directive
        known = d is None or (
            re.fullmatch(r"skip \(.+\)", d)
            or re.fullmatch(r"fixture \S+ = \S+", d)
            or (d == "same as .ci/run" and b.lang == "bash")
        )
        assert known, f"README.md:{b.line - 1}: unknown directive <!-- test: {d} -->"


@pytest.mark.parametrize("block", PYTHON, ids=[f"README.md:{b.line}" for b in PYTHON])
def test_a_python_example_runs_on_its_own(block: Block, tmp_path: Path) -> None:
    d = block.directive or ""
    if skip := re.fullmatch(r"skip \((?P<reason>.+)\)", d):
        pytest.skip(f"README.md:{block.line}: {skip['reason']}")
    if fixture := re.fullmatch(r"fixture (?P<dest>\S+) = (?P<src>\S+)", d):
        dest = tmp_path / fixture["dest"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / fixture["src"], dest)
    elif d:
        pytest.fail(f"README.md:{block.line - 1}: unknown directive <!-- test: {d} -->")
    script = tmp_path / f"readme_line_{block.line}.py"  # the name shows in a traceback
    script.write_text(block.code, encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, script.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"the Python block at README.md:{block.line} fails when run on its own (its line N is "
        f"README.md:{block.line}+N-1):\n{done.stderr[-4000:]}"
    )


def test_the_development_commands_are_the_checks_ci_runs() -> None:
    marked = [b for b in BLOCKS if b.directive == "same as .ci/run"]
    assert len(marked) == 1, "the README's development commands (one bash block) are not marked"
    assert shell_commands(marked[0].code) == ci_checks(), (
        "README's development commands differ from what .ci/run checks"
    )


def test_the_readme_test_command_is_the_one_ci_runs_verbatim() -> None:
    # .ci/run promises to run "the README's test command, verbatim": the line after that comment.
    lines = [line.strip() for line in CI.read_text(encoding="utf-8").splitlines()]
    promise = lines.index("# The README's test command, verbatim:")
    ci_command = lines[promise + 1]
    assert ci_command == "python -m pytest -q"
    first = next(b for b in BLOCKS if b.lang == "bash")  # the Quick start's
    assert shell_commands(first.code)[-1] == ci_command
    assert first.code.splitlines()[-1] == ci_command  # a command of its own, the last


def test_the_quick_start_installs_the_cpu_build_before_anything_pulls_torch() -> None:
    first = next(b for b in BLOCKS if b.lang == "bash")
    assert first.code in quick_start(), "the README's first bash block is not the Quick start's"
    # Two commands: set up and run the demo; run the tests.
    lines = re.sub(r"\\\n\s*", " ", first.code).strip().splitlines()
    assert len(lines) == 2
    setup = shell_commands(lines[0])
    assert setup[-1] == "mnemeta demo"
    installs = [i for i, c in enumerate(setup) if c.startswith("pip install")]
    cpu = [i for i in installs if "--index-url https://download.pytorch.org/whl/cpu" in setup[i]]
    assert cpu and shlex.split(setup[cpu[0]])[:3] == ["pip", "install", "torch"]
    assert cpu[0] == installs[0], "something is installed before the CPU build of PyTorch"
    # The variant for machines whose pip serves the CPU build is CI's own pin.
    pin = re.search(r"pip install (?:-q )?(torch==[\w.+]+)", "\n".join(ci_lines()))
    assert pin, ".ci/run no longer pins torch"
    assert f"`pip install {pin[1]}`" in prose(quick_start())


def test_the_quick_start_demo_runs_and_writes_the_files_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnemeta.cli import DEMO_STEPS, main

    text = prose(quick_start())
    budget = re.search(r"([\d,]+) meta-training steps", text)
    assert budget and int(budget[1].replace(",", "")) == DEMO_STEPS
    monkeypatch.chdir(tmp_path)
    # `mnemeta demo` as the Quick start runs it, on a smaller budget through its own flag.
    assert main(["demo", "--steps", "20", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "MAML" in out and "pretrained" in out
    for n_steps in (0, 1, 5, 10):
        assert f"{n_steps} steps" in out
    named = set(re.findall(r"`(runs/demo/[\w.]+)`", text))
    assert named == {"runs/demo/result.json", "runs/demo/sinusoid.png"}
    for path in named:
        assert (tmp_path / path).stat().st_size > 0, f"the demo did not write {path}"

    def refuse(constant: str) -> None:
        raise ValueError(f"result.json holds {constant}, which is not JSON")

    result = json.loads((tmp_path / "runs/demo/result.json").read_text(), parse_constant=refuse)
    assert {r["shots"] for r in result["results"]} == {5, 10}
    assert result["settings"]["eval_tasks"] == 1000  # "over 1,000 test tasks"
    assert "1,000 test tasks" in text


def readme_cli_commands() -> list[str]:
    """Every ``mnemeta ...`` command of the README's bash blocks and of its Quick start's prose."""
    commands = [c for b in BLOCKS if b.lang == "bash" for c in shell_commands(b.code)]
    commands += re.findall(r"`(mnemeta [^`]+)`", prose(quick_start()))
    return [c for c in commands if c.startswith("mnemeta ")]


@pytest.mark.parametrize("command", readme_cli_commands())
def test_a_readme_command_line_is_one_the_cli_takes(command: str) -> None:
    from mnemeta.cli import _parser, main

    argv = shlex.split(command)[1:]
    try:
        args = _parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the README's `{command}` is refused by the CLI's parser")
    if args.command == "train" and args.resume is None and not args.config.endswith(".toml"):
        # The preset and every --set resolve (unknown keys are refused), without training.
        assert main([*argv, "--print-config"]) == 0, f"`{command}` --print-config failed"
    if args.command in ("demo", "sinusoid") and command in prose(quick_start()):
        assert f"`runs/{args.command}/" in quick_start()  # the folder it names is its default
        assert args.out == f"runs/{args.command}"
