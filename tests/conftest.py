"""Shared fixtures: the real Omniglot data, and its official layout written out once per session.

``$MNEMETA_DATA`` means here what it means to the CLI (:func:`mnemeta.data.omniglot.
find_omniglot_root`): the folder that holds one folder per dataset, ``omniglot/``, ``clinc150/``.
Unset, the tests use ``<repo>/../shared/data``. Its ``omniglot/`` holds the compact copy
(``images_background.npz``, ``images_evaluation.npz``, ``materialize.py``), which the loader
reads as it is; the fixtures below also write it out as the official zips and folders, so that
those forms are tested on the real data too. Tests that need it skip, with the reason, where it
is absent.

Tests pass ``cache_dir`` (or ``MNEMETA_CACHE``) to a temporary folder: the default cache
folder is beside the data, which is shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$MNEMETA_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("MNEMETA_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def omniglot_source_dir() -> Path:
    """``$MNEMETA_DATA/omniglot``: ``images_background.npz``, ``images_evaluation.npz`` and
    ``materialize.py`` (a valid data root as it is)."""
    folder = shared_data_dir() / "omniglot"
    needed = ("materialize.py", "images_background.npz", "images_evaluation.npz")
    if not all((folder / name).is_file() for name in needed):
        pytest.skip(
            f"Omniglot data not found in {folder} (needs {', '.join(needed)}); set MNEMETA_DATA "
            "to the folder that holds omniglot/"
        )
    return folder


@pytest.fixture(scope="session")
def omniglot_zip_root(omniglot_source_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the official ``images_background.zip`` and ``images_evaluation.zip`` (~9 s)."""
    out = tmp_path_factory.mktemp("omniglot_zips")
    subprocess.run(
        [sys.executable, str(omniglot_source_dir / "materialize.py"), str(out), "--zip"],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def omniglot_scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-private folder for tens of thousands of small files, on tmpfs when possible.

    Creating the 32,460 extracted PNGs took ~12 s on the CI disk (ext4, sys time) and ~2.5 s on
    /dev/shm. Tests may put hard-linked copies of ``omniglot_folder_root`` here (same filesystem).
    Falls back to pytest's tmp folder where /dev/shm is absent or small (Docker's is 64 MB).
    """
    shm = Path("/dev/shm")
    try:
        fast = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**30
    except OSError:
        fast = False
    if not fast:
        yield tmp_path_factory.mktemp("omniglot_scratch")
        return
    folder = Path(tempfile.mkdtemp(prefix="mnemeta-tests-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # tmpfs is RAM: never leave it behind


@pytest.fixture(scope="session")
def omniglot_folder_root(omniglot_zip_root: Path, omniglot_scratch: Path) -> Path:
    """A folder with the extracted ``images_background/`` and ``images_evaluation/`` folders.

    Extracted from the zips with the standard library (a trusted archive): the same PNG bytes
    that ``materialize.py`` would write as folders, without encoding them all again.
    """
    out = omniglot_scratch / "omniglot_folders"
    for split in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(omniglot_zip_root / f"{split}.zip") as zf:
            zf.extractall(out)
    return out
