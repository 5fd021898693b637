"""Atomic writes: permissions from the umask, nothing left behind by a failed write, round trips."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from mnemeta.io import atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process's umask after a test that sets it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_mode_follows_the_umask(umask: None, tmp_path: Path, mask: int, expected: int) -> None:
    os.umask(mask)
    new = tmp_path / "new.txt"
    atomic_write_text(new, "hello")
    assert mode(new) == expected  # not mkstemp's 0o600 (except where the umask asks for it)
    # Replacing a file gives the new file the umask's mode too, whatever the old one had.
    old = tmp_path / "old.bin"
    old.write_bytes(b"old")
    old.chmod(0o600)
    atomic_write_bytes(old, b"new")
    assert mode(old) == expected
    assert old.read_bytes() == b"new"


def test_text_round_trips(tmp_path: Path) -> None:
    text = "ligne 1 — naïve ü 𝛼\nline 2\n\n"  # non-ASCII, a 4-byte character, trailing newlines
    path = tmp_path / "deeper" / "folder" / "t.txt"  # the folders are created
    atomic_write_text(path, text)
    assert path.read_text(encoding="utf-8") == text
    assert path.read_bytes() == text.encode("utf-8")
    atomic_write_text(path, "")
    assert path.read_bytes() == b""


def test_bytes_from_a_writer_callable(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    payload = os.urandom(3 << 20)

    def write(f: BinaryIO) -> None:
        for i in range(0, len(payload), 1 << 20):  # several calls, like a streaming writer
            f.write(payload[i : i + (1 << 20)])

    atomic_write_bytes(path, write)
    assert path.read_bytes() == payload


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, error: type[BaseException]
) -> None:
    path = tmp_path / "state.json"
    path.write_text("old content")
    seen: list[Path] = []

    def write(f: BinaryIO) -> None:
        f.write(b"half of the new cont")
        f.flush()
        # The partial bytes are in a temp file beside the target, not in the target itself.
        temps = [p for p in tmp_path.iterdir() if p != path]
        assert len(temps) == 1 and temps[0].name.endswith(".tmp"), temps
        assert temps[0].read_bytes() == b"half of the new cont"
        seen.extend(temps)
        raise error("writer failed")

    with pytest.raises(error, match="writer failed"):
        atomic_write_bytes(path, write)
    assert path.read_text() == "old content"
    assert sorted(tmp_path.iterdir()) == [path]
    assert seen and not seen[0].exists()


def test_a_failing_first_write_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "never.txt"

    def write(f: BinaryIO) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        atomic_write_bytes(path, write)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        atomic_write_text(blocker / "x.txt", "text")
    assert sorted(tmp_path.iterdir()) == [blocker]
