"""Omniglot from the official layout and the compact copy: counts, pixels, splits, cache,
errors and downloads.

The full decode of both sets (~32k PNGs, a few seconds) is shared through module-scoped
fixtures; the error tests use small layouts built from hard links, or tiny synthetic .npz files
in the compact copy's format, so that they cost almost nothing, and never write through a hard
link (a damaged file is always a new file).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from mnemeta.cli import main
from mnemeta.data import omniglot
from mnemeta.data.classes import ClassImages
from mnemeta.data.download import download_file, safe_extract_zip
from mnemeta.data.omniglot import (
    OMNIGLOT_SHA256,
    OMNIGLOT_URLS,
    find_omniglot_root,
    load_omniglot,
    load_omniglot_background_evaluation,
)
from mnemeta.errors import DataError, MnemetaError

SPLITS = ("images_background", "images_evaluation")
KEYS = {"images_background": "background", "images_evaluation": "evaluation"}
FIRST_PNG = "images_background/Alphabet_of_the_Magi/character01/0709_01.png"

Sets = dict[str, ClassImages]


# ----------------------------------------------------------------------------------- helpers


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_tree(src: Path, dst: Path, keep: Callable[[Path], bool] = lambda p: True) -> Path:
    """Copy the folder ``src`` to ``dst`` with hard links; ``keep`` filters top-level entries."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(folder) == src and not keep(src / n)]

    shutil.copytree(src, dst, copy_function=_link_or_copy, ignore=ignore)
    return dst


def replace_file(path: Path, data: bytes) -> None:
    """Give ``path`` new content as a *new* file, so that hard-linked originals stay intact."""
    path.unlink()
    path.write_bytes(data)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_image(packed_row: np.ndarray, size: int) -> np.ndarray:
    """What one drawing should become, computed from the compact source arrays."""
    background = np.unpackbits(packed_row, axis=-1, count=105).astype(bool)  # True = white
    gray = Image.fromarray(background).convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return 255 - np.asarray(gray)


def no_decode(*args: Any, **kwargs: Any) -> torch.Tensor:
    raise AssertionError("decoded although the cache should have been used")


def assert_same(a: Sets, b: Sets) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].names == b[key].names
        assert torch.equal(a[key].images, b[key].images)
        assert torch.equal(a[key].counts, b[key].counts)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def zip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache_zip")


@pytest.fixture(scope="module")
def decoded(omniglot_zip_root: Path, zip_cache: Path) -> tuple[Sets, float]:
    """Both sets decoded from the zips (the one full decode that most tests share)."""
    start = time.perf_counter()
    sets = load_omniglot_background_evaluation(omniglot_zip_root, cache_dir=zip_cache)
    return sets, time.perf_counter() - start


@pytest.fixture(scope="module")
def sets(decoded: tuple[Sets, float]) -> Sets:
    return decoded[0]


@pytest.fixture(scope="module")
def vinyals(omniglot_zip_root: Path, zip_cache: Path, sets: Sets) -> Sets:
    return load_omniglot(omniglot_zip_root, split="vinyals", cache_dir=zip_cache)


@pytest.fixture(scope="module")
def npz(omniglot_source_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for split in SPLITS:
        with np.load(omniglot_source_dir / f"{split}.npz", allow_pickle=False) as z:
            out[split] = {k: z[k] for k in ("images_packed", "alphabet", "character", "drawer")}
    return out


@pytest.fixture
def small_layout(omniglot_folder_root: Path, omniglot_scratch: Path) -> Path:
    """A root whose two split folders hold only their first two alphabets (hard links)."""
    root = Path(tempfile.mkdtemp(prefix="small-", dir=omniglot_scratch))
    for split in SPLITS:
        src = omniglot_folder_root / split
        first_two = sorted(p.name for p in src.iterdir())[:2]
        link_tree(src, root / split, keep=lambda p, names=first_two: p.name in names)
    return root


@pytest.fixture(scope="module")
def small_official(
    omniglot_folder_root: Path, omniglot_scratch: Path, sets: Sets
) -> tuple[Path, dict[str, tuple[int, int]], Sets, Path]:
    """The first two alphabets of each official set as a layout (hard links), the (alphabets,
    characters) the loader must then expect, what they decode to (the same classes of the full
    decode), and a cache of them written by the real decoder.

    Decoding these ~1,900 drawings takes a fraction of a second, against ~10 s for the whole
    set, so the cache tests below can rebuild for real instead of faking the decoder.
    """
    root = Path(tempfile.mkdtemp(prefix="small-official-", dir=omniglot_scratch))
    totals, expected = {}, {}
    for split in SPLITS:
        src = omniglot_folder_root / split
        first_two = sorted(p.name for p in src.iterdir())[:2]
        link_tree(src, root / split, keep=lambda p, names=first_two: p.name in names)
        names = sorted(f"{a}/{c.name}" for a in first_two for c in (src / a).iterdir())
        totals[split] = (2, len(names))
        expected[KEYS[split]] = sets[KEYS[split]].subset(names)
    cache = root / ".cache"
    with pytest.MonkeyPatch.context() as m:
        for split, total in totals.items():
            m.setitem(omniglot._EXPECTED, split, total)
        assert_same(load_omniglot_background_evaluation(root, cache_dir=cache), expected)
    return root, totals, expected, cache


@pytest.fixture
def small_cache(
    small_official: tuple[Path, dict[str, tuple[int, int]], Sets, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, Path, Sets]:
    """(layout, a private copy of its cache, what it decodes to), with the loader expecting
    the small layout's totals for this test (only the two totals are patched)."""
    root, totals, expected, cache = small_official
    for split, total in totals.items():
        monkeypatch.setitem(omniglot._EXPECTED, split, total)
    return root, shutil.copytree(cache, tmp_path / "cache"), expected


@pytest.fixture(scope="module")
def full_copy(omniglot_folder_root: Path, omniglot_scratch: Path) -> Path:
    """A complete extracted layout made of hard links, for tests that damage one file."""
    root = Path(tempfile.mkdtemp(prefix="full-copy-", dir=omniglot_scratch))
    for split in SPLITS:
        link_tree(omniglot_folder_root / split, root / split)
    return root


@pytest.fixture
def damaged_first_png(full_copy: Path) -> Iterator[Callable[[bytes], Path]]:
    """Replace the first PNG of ``full_copy`` (decoded first, so errors come at once)."""
    path = full_copy / FIRST_PNG
    original = path.read_bytes()

    def damage(data: bytes) -> Path:
        replace_file(path, data)
        return path

    yield damage
    replace_file(path, original)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A static file server on 127.0.0.1: (folder it serves, base URL)."""
    served = tmp_path_factory.mktemp("served")
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def served_zips(http_server: tuple[Path, str], omniglot_zip_root: Path) -> tuple[dict, dict]:
    """(urls, sha256) of the two materialized zips, served over HTTP."""
    served, base = http_server
    urls, sums = {}, {}
    for split in SPLITS:
        _link_or_copy(str(omniglot_zip_root / f"{split}.zip"), str(served / f"{split}.zip"))
        urls[split] = f"{base}/{split}.zip"
        sums[split] = sha256_of(served / f"{split}.zip")
    return urls, sums


# --------------------------------------------------------------------------- finding the root


def test_find_root_prefers_the_argument(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MNEMETA_DATA", "/somewhere/else")
    assert find_omniglot_root(tmp_path) == tmp_path
    assert find_omniglot_root(str(tmp_path)) == tmp_path


def test_find_root_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MNEMETA_DATA", str(tmp_path))
    assert find_omniglot_root(None) == tmp_path / "omniglot"


def test_find_root_without_anything_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNEMETA_DATA", raising=False)
    with pytest.raises(MnemetaError, match=r"--data PATH or set MNEMETA_DATA"):
        find_omniglot_root(None)


# -------------------------------------------------------------------------------- the content


def test_counts_shapes_and_names(sets: Sets) -> None:
    expected = {"background": (30, 964), "evaluation": (20, 659)}
    assert sets.keys() == expected.keys()
    for key, (n_alphabets, n_classes) in expected.items():
        data = sets[key]
        assert data.images.dtype == torch.uint8
        assert tuple(data.images.shape) == (n_classes, 20, 1, 28, 28)
        assert data.counts.tolist() == [20] * n_classes
        assert list(data.names) == sorted(set(data.names))
        assert len({name.split("/")[0] for name in data.names}) == n_alphabets
        assert all(name.split("/")[1].startswith("character") for name in data.names)
    assert not set(sets["background"].names) & set(sets["evaluation"].names)


@pytest.mark.parametrize("split", SPLITS)
def test_pixels_match_the_source_arrays(
    sets: Sets, npz: dict[str, dict[str, np.ndarray]], split: str
) -> None:
    """Class name and drawing index lead to the right image, inverted and resized."""
    z, data = npz[split], sets[KEYS[split]]
    index = {name: i for i, name in enumerate(data.names)}
    for row in np.random.default_rng(0).choice(len(z["drawer"]), size=60, replace=False):
        name = f"{z['alphabet'][row]}/character{int(z['character'][row]):02d}"
        got = data.images[index[name], int(z["drawer"][row]) - 1, 0].numpy()
        np.testing.assert_array_equal(got, reference_image(z["images_packed"][row], 28))


@pytest.mark.parametrize("split", SPLITS)
def test_strokes_are_bright_and_ink_is_conserved(
    sets: Sets, npz: dict[str, dict[str, np.ndarray]], split: str
) -> None:
    """Mean brightness of each 28x28 image = the stroke fraction of its 105x105 original."""
    z, data = npz[split], sets[KEYS[split]]
    images = data.images.flatten(0, 1)[:, 0]
    assert (images[:, 0, 0] == 0).float().mean() > 0.99  # corners are background
    assert images.flatten(1).amax(1).min() >= 64  # no image is blank (faintest peak: 127)
    index = {name: i for i, name in enumerate(data.names)}
    rows = np.random.default_rng(1).choice(len(z["drawer"]), size=500, replace=False)
    for row in rows:
        name = f"{z['alphabet'][row]}/character{int(z['character'][row]):02d}"
        ink = 1.0 - np.unpackbits(z["images_packed"][row], axis=-1, count=105).mean()
        img = data.images[index[name], int(z["drawer"][row]) - 1, 0].double()
        assert abs(float(img.mean()) / 255 - ink) < 0.01


def test_official_pngs_decode_like_the_materialized_ones(
    sets: Sets, omniglot_source_dir: Path
) -> None:
    """Real upstream PNGs (images_background_small1.zip) give exactly the same pixels."""
    sample = omniglot_source_dir / "official-sample" / "images_background_small1.zip"
    if not sample.is_file():
        pytest.skip(f"official sample {sample} not present")
    background = sets["background"]
    index = {name: i for i, name in enumerate(background.names)}
    with zipfile.ZipFile(sample) as zf:
        members = sorted(n for n in zf.namelist() if n.endswith(".png"))
        assert len(members) == 2720
        for member in members[::40]:
            _, alphabet, character, file = member.split("/")
            got = 255 - omniglot._decode_png(zf.read(member), 28)
            want = background.images[index[f"{alphabet}/{character}"], int(file[-6:-4]) - 1, 0]
            np.testing.assert_array_equal(got, want.numpy())


def test_zips_and_folders_give_identical_tensors(
    sets: Sets, omniglot_folder_root: Path, tmp_path: Path
) -> None:
    from_folders = load_omniglot_background_evaluation(omniglot_folder_root, cache_dir=tmp_path)
    assert_same(sets, from_folders)


@pytest.mark.parametrize("image_size", [28, 20])
def test_the_compact_npz_copy_gives_the_same_tensors_as_the_zips(
    omniglot_source_dir: Path,
    omniglot_zip_root: Path,
    sets: Sets,
    zip_cache: Path,
    tmp_path: Path,
    image_size: int,
) -> None:
    """Same class names, same drawing order, same resize: equal tensors, for both sets."""
    from_zips = (
        sets
        if image_size == 28
        else load_omniglot_background_evaluation(
            omniglot_zip_root, image_size=image_size, cache_dir=tmp_path / "zip"
        )
    )
    from_npz = load_omniglot_background_evaluation(
        omniglot_source_dir, image_size=image_size, cache_dir=tmp_path / "npz"
    )
    assert_same(from_npz, from_zips)


def test_the_npz_copy_has_its_own_cache_key(
    omniglot_source_dir: Path,
    omniglot_zip_root: Path,
    zip_cache: Path,
    sets: Sets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key names its source: the .npz never reads an entry written from the zips (or the
    other way round), an edited .npz gets a new key, and a second load is a cache hit."""
    cache = shutil.copytree(zip_cache, tmp_path / "cache")  # holds the two entries of the zips
    zip_files = set(cache.iterdir())
    data = load_omniglot_background_evaluation(omniglot_source_dir, cache_dir=cache)
    assert_same(data, sets)
    npz_files = set(cache.iterdir()) - zip_files
    assert len(npz_files) == 2  # written anew, not read from the zips' entries
    monkeypatch.setattr(omniglot, "_decode", no_decode)
    assert_same(load_omniglot_background_evaluation(omniglot_source_dir, cache_dir=cache), sets)
    for split in SPLITS:
        npz_source = omniglot._npz_source(omniglot_source_dir / f"{split}.npz", split)
        zip_source = omniglot._zip_source(omniglot_zip_root / f"{split}.zip", split)
        assert omniglot._cache_key(npz_source, 28) != omniglot._cache_key(zip_source, 28)
        # The same bytes under another name and folder: the same key (content, not path).
        copy = tmp_path / "elsewhere" / f"{split}.npz"
        copy.parent.mkdir(exist_ok=True)
        _link_or_copy(str(omniglot_source_dir / f"{split}.npz"), str(copy))
        assert omniglot._npz_source(copy, split).digest == npz_source.digest
    # One byte more (a different file): a different key.
    original = omniglot_source_dir / "images_background.npz"
    edited = tmp_path / "edited.npz"
    edited.write_bytes(original.read_bytes() + b"\0")
    digests = {omniglot._npz_source(f, SPLITS[0]).digest for f in (original, edited)}
    assert len(digests) == 2


def test_forms_are_preferred_zip_then_folder_then_npz(
    omniglot_source_dir: Path, omniglot_zip_root: Path, omniglot_folder_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "omniglot"
    root.mkdir()
    for split in SPLITS:
        _link_or_copy(str(omniglot_zip_root / f"{split}.zip"), str(root / f"{split}.zip"))
        (root / split).symlink_to(omniglot_folder_root / split, target_is_directory=True)
        _link_or_copy(str(omniglot_source_dir / f"{split}.npz"), str(root / f"{split}.npz"))
    for split in SPLITS:
        assert omniglot._split_source(root, split) == root / f"{split}.zip"
        (root / f"{split}.zip").unlink()
        assert omniglot._split_source(root, split) == root / split
        (root / split).unlink()
        assert omniglot._split_source(root, split) == root / f"{split}.npz"
        (root / f"{split}.npz").unlink()
        assert omniglot._split_source(root, split) is None


def test_the_two_sets_may_come_in_different_forms(
    omniglot_source_dir: Path, omniglot_zip_root: Path, sets: Sets, tmp_path: Path
) -> None:
    root = tmp_path / "omniglot"
    root.mkdir()
    _link_or_copy(
        str(omniglot_source_dir / "images_background.npz"), str(root / "images_background.npz")
    )
    _link_or_copy(
        str(omniglot_zip_root / "images_evaluation.zip"), str(root / "images_evaluation.zip")
    )
    assert_same(load_omniglot_background_evaluation(root, cache_dir=tmp_path / "c"), sets)


def test_mnemeta_data_is_the_folder_that_holds_omniglot(
    omniglot_source_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The one convention: ``$MNEMETA_DATA/omniglot`` holds the data; the tests' own data
    folder (the compact copy) is such a folder, so the loader reads it as it is."""
    monkeypatch.setenv("MNEMETA_DATA", str(omniglot_source_dir.parent))
    monkeypatch.setenv("MNEMETA_CACHE", str(tmp_path / "cache"))
    assert find_omniglot_root(None) == omniglot_source_dir
    sets = load_omniglot(None, split="lake")
    assert {k: v.n_classes for k, v in sets.items()} == {"train": 964, "test": 659}
    # The command line, with nothing but MNEMETA_DATA: no --data, no materialize step.
    out = tmp_path / "run"
    args = ["train", "protonet_omniglot_5w1s", "--out", str(out), "--no-progress"]
    for item in ("backbone.hidden=8", "train.steps=2", "eval.episodes=10", "eval.val_episodes=5"):
        args += ["--set", item]
    assert main(args) == 0
    assert json.loads((out / "result.json").read_text())["test"]["episodes"] == 10
    # MNEMETA_DATA set to the omniglot folder itself: told which value to use instead.
    monkeypatch.setenv("MNEMETA_DATA", str(omniglot_source_dir))
    with pytest.raises(
        MnemetaError, match=f"set MNEMETA_DATA={omniglot_source_dir.parent} .*omniglot/"
    ):
        load_omniglot(None)


def test_image_size_20(
    omniglot_zip_root: Path, tmp_path: Path, npz: dict[str, dict[str, np.ndarray]]
) -> None:
    small = load_omniglot_background_evaluation(
        omniglot_zip_root, image_size=20, cache_dir=tmp_path, progress=True
    )
    assert tuple(small["background"].images.shape) == (964, 20, 1, 20, 20)
    assert tuple(small["evaluation"].images.shape) == (659, 20, 1, 20, 20)
    z, data = npz["images_evaluation"], small["evaluation"]
    index = {name: i for i, name in enumerate(data.names)}
    for row in range(0, len(z["drawer"]), 997):
        name = f"{z['alphabet'][row]}/character{int(z['character'][row]):02d}"
        got = data.images[index[name], int(z["drawer"][row]) - 1, 0].numpy()
        np.testing.assert_array_equal(got, reference_image(z["images_packed"][row], 20))


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "28"])
def test_bad_image_size(omniglot_zip_root: Path, size: Any) -> None:
    with pytest.raises(MnemetaError, match=r"image_size must be a positive integer"):
        load_omniglot_background_evaluation(omniglot_zip_root, image_size=size)


# ------------------------------------------------------------------------------------- splits


def test_lake_split(omniglot_zip_root: Path, zip_cache: Path, sets: Sets) -> None:
    lake = load_omniglot(omniglot_zip_root, split="lake", cache_dir=zip_cache)
    assert_same(lake, {"train": sets["background"], "test": sets["evaluation"]})


def test_unknown_split(omniglot_zip_root: Path) -> None:
    with pytest.raises(MnemetaError, match=r"choose 'vinyals' or 'lake'"):
        load_omniglot(omniglot_zip_root, split="omniglot")


def test_vinyals_counts_and_membership(vinyals: Sets) -> None:
    sizes = {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}
    assert {k: v.n_classes for k, v in vinyals.items()} == sizes
    for data in vinyals.values():
        assert tuple(data.images.shape[1:]) == (20, 1, 28, 28)
        assert data.counts.tolist() == [20] * data.n_classes
        assert len(set(data.names)) == data.n_classes
    names = {k: set(v.names) for k, v in vinyals.items()}
    assert names["train"] | names["val"] == names["trainval"]
    assert not names["train"] & names["val"]
    assert not names["trainval"] & names["test"]
    characters = {n.rsplit("/", 1)[0] for n in names["trainval"] | names["test"]}
    assert len(characters) == 1623
    # trainval is the same pixels as train and val, not a second decode
    trainval = vinyals["trainval"].subset(vinyals["train"].names)
    assert torch.equal(trainval.images, vinyals["train"].images)


def test_vinyals_rotations_are_rot90_of_the_originals(vinyals: Sets, sets: Sets) -> None:
    base = {}
    for data in sets.values():
        base.update(zip(data.names, data.images, strict=True))
    rng = np.random.default_rng(2)
    for data in vinyals.values():
        for i in rng.choice(data.n_classes, size=40, replace=False):
            character, rotation = data.names[i].rsplit("/", 1)
            k = int(rotation.removeprefix("rot")) // 90
            expected = torch.rot90(base[character], k=k, dims=(-2, -1))
            assert torch.equal(data.images[i], expected)
    # rot090 is a quarter turn counter-clockwise: the top row becomes the left column, upwards
    turned = next(
        data.images[data.names.index("Latin/character01/rot090")]
        for data in (vinyals["trainval"], vinyals["test"])
        if "Latin/character01/rot090" in data.names
    )
    original = base["Latin/character01"]
    assert torch.equal(turned[:, 0, :, 0], original[:, 0, 0, :].flip(-1))


# -------------------------------------------------------------------------------------- cache


def test_cache_hit_is_fast_and_identical(
    omniglot_zip_root: Path,
    zip_cache: Path,
    decoded: tuple[Sets, float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, decode_seconds = decoded
    monkeypatch.setattr(omniglot, "_decode", no_decode)
    start = time.perf_counter()
    again = load_omniglot_background_evaluation(omniglot_zip_root, cache_dir=zip_cache)
    hit_seconds = time.perf_counter() - start
    assert_same(first, again)
    print(f"full decode {decode_seconds:.2f} s, cache hit {hit_seconds:.3f} s")
    assert hit_seconds < max(0.5, decode_seconds / 4)
    files = sorted(zip_cache.iterdir())
    assert len(files) == 2 and all(f.suffix == ".safetensors" for f in files), files
    umask = os.umask(0)
    os.umask(umask)
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask for f in files)  # shareable


def test_cache_defaults_to_root_then_env(
    omniglot_zip_root: Path,
    zip_cache: Path,
    sets: Sets,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "omniglot"
    root.mkdir()
    for split in SPLITS:
        _link_or_copy(str(omniglot_zip_root / f"{split}.zip"), str(root / f"{split}.zip"))
    monkeypatch.delenv("MNEMETA_CACHE", raising=False)
    monkeypatch.setattr(omniglot, "_decode", no_decode)
    # The key hashes the zip bytes, not its path, so the caches written above are valid here.
    shutil.copytree(zip_cache, root / ".mnemeta_cache")
    assert_same(load_omniglot_background_evaluation(root), sets)
    shutil.rmtree(root / ".mnemeta_cache")
    monkeypatch.setenv("MNEMETA_CACHE", str(zip_cache))
    assert_same(load_omniglot_background_evaluation(root), sets)
    assert not (root / ".mnemeta_cache").exists()


def _rewrite(path: Path, edit: Callable[[torch.Tensor, dict[str, str]], torch.Tensor]) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta, images = dict(f.metadata()), f.get_tensor("images")
    images = edit(images, meta)
    path.unlink()
    save_file({"images": images.contiguous()}, str(path), metadata=meta)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    replace_file(path, bytes(data))


def _swap_two_names(images: torch.Tensor, meta: dict[str, str]) -> torch.Tensor:
    names = json.loads(meta["names"])
    names[0], names[1] = names[1], names[0]
    meta["names"] = json.dumps(names)
    return images


def _rename_first_class(images: torch.Tensor, meta: dict[str, str]) -> torch.Tensor:
    # Still sorted, unique and 20 alphabets: only the checksum over names and pixels catches it.
    names = json.loads(meta["names"])
    names[0] = names[0].replace("character01", "character00")
    meta["names"] = json.dumps(names)
    return images


def _other_key(images: torch.Tensor, meta: dict[str, str]) -> torch.Tensor:
    meta["key"] = "0" * 64
    return images


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: replace_file(p, p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: replace_file(p, b""),
    "not safetensors": lambda p: replace_file(p, b"\x00" * 64),
    "flipped pixel": _flip_last_byte,
    "wrong shape": lambda p: _rewrite(p, lambda x, m: x[:, :19]),
    "wrong dtype": lambda p: _rewrite(p, lambda x, m: x.to(torch.int16)),
    "extra class": lambda p: _rewrite(p, lambda x, m: torch.cat([x, x[:1]])),
    "other key": lambda p: _rewrite(p, _other_key),
    "unsorted names": lambda p: _rewrite(p, _swap_two_names),
    "renamed class": lambda p: _rewrite(p, _rename_first_class),
    "edited pixels": lambda p: _rewrite(p, lambda x, m: torch.where(x > 0, 255, 0).byte()),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_damaged_cache_is_detected_and_rebuilt(
    small_cache: tuple[Path, Path, Sets], monkeypatch: pytest.MonkeyPatch, corruption: str
) -> None:
    root, cache, expected = small_cache
    (target,) = cache.glob("omniglot-images_evaluation-*.safetensors")
    CORRUPTIONS[corruption](target)
    real_decode, calls = omniglot._decode, []

    def counted_decode(listing: Any, image_size: int, progress: bool) -> torch.Tensor:
        calls.append(listing.split)
        return real_decode(listing, image_size, progress)

    monkeypatch.setattr(omniglot, "_decode", counted_decode)
    with pytest.warns(RuntimeWarning, match=r"damaged Omniglot cache"):
        rebuilt = load_omniglot_background_evaluation(root, cache_dir=cache)
    assert calls == ["images_evaluation"]  # the intact background cache is still used
    assert_same(rebuilt, expected)  # decoded again: the classes of the full decode
    # The rewritten file is good again: the next load decodes nothing and warns nothing.
    monkeypatch.setattr(omniglot, "_decode", no_decode)
    assert_same(load_omniglot_background_evaluation(root, cache_dir=cache), expected)
    assert len(list(cache.iterdir())) == 2  # rewritten in place, no temp file left


def test_damaged_cache_rebuilt_for_real(
    omniglot_zip_root: Path, zip_cache: Path, sets: Sets, tmp_path: Path
) -> None:
    cache = shutil.copytree(zip_cache, tmp_path / "cache")
    (target,) = cache.glob("omniglot-images_evaluation-*.safetensors")
    CORRUPTIONS["truncated"](target)
    with pytest.warns(RuntimeWarning, match=r"damaged Omniglot cache"):
        rebuilt = load_omniglot_background_evaluation(omniglot_zip_root, cache_dir=cache)
    assert_same(rebuilt, sets)
    with safe_open(str(target), framework="pt") as f:  # rewritten whole, not patched
        assert torch.equal(f.get_tensor("images"), sets["evaluation"].images)


def test_unwritable_cache_warns_and_still_returns_the_data(
    small_cache: tuple[Path, Path, Sets], tmp_path: Path
) -> None:
    root, _, expected = small_cache
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match=r"could not write the Omniglot cache.*MNEMETA_CACHE"):
        data = load_omniglot_background_evaluation(root, cache_dir=blocker / "c")
    assert_same(data, expected)  # decoded for real, only not cached


# ------------------------------------------------------------------------- wrong roots, layouts


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match=r"does not exist; pass --data PATH"):
        load_omniglot_background_evaluation(tmp_path / "nope")


def test_root_is_a_file(omniglot_zip_root: Path) -> None:
    zip_path = omniglot_zip_root / "images_background.zip"
    with pytest.raises(MnemetaError, match=f"is a file.*--data {omniglot_zip_root}"):
        load_omniglot_background_evaluation(zip_path)


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match=r"holds neither .* data.download=true"):
        load_omniglot_background_evaluation(tmp_path)


def test_root_one_level_too_deep(omniglot_folder_root: Path) -> None:
    for deep in (
        omniglot_folder_root / "images_background",
        omniglot_folder_root / "images_evaluation",
    ):
        with pytest.raises(MnemetaError, match=f"split folder.*--data {omniglot_folder_root} "):
            load_omniglot_background_evaluation(deep)


def test_root_two_levels_too_deep(omniglot_folder_root: Path) -> None:
    alphabet = omniglot_folder_root / "images_background" / "Latin"
    with pytest.raises(MnemetaError, match=f"alphabet folder.*--data {omniglot_folder_root} "):
        load_omniglot_background_evaluation(alphabet)


@pytest.mark.parametrize("nested", ["omniglot", "omniglot/python"])
def test_root_too_shallow(
    omniglot_zip_root: Path, tmp_path: Path, nested: str, http_server: tuple[Path, str]
) -> None:
    data = tmp_path / "data"
    (data / nested).mkdir(parents=True)
    for split in SPLITS:
        _link_or_copy(str(omniglot_zip_root / f"{split}.zip"), str(data / nested / f"{split}.zip"))
    (data / "unrelated").mkdir()
    # Even with download=True: fetching into the wrong folder would hide the user's data.
    dead = {split: f"{http_server[1]}/missing.zip" for split in SPLITS}
    for download in (False, True):
        with pytest.raises(MnemetaError, match=f"further down.*--data {data / nested} "):
            load_omniglot_background_evaluation(data, download=download, urls=dead)


def test_root_too_shallow_with_the_npz_copy(omniglot_source_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "omniglot").mkdir(parents=True)
    for split in SPLITS:
        _link_or_copy(
            str(omniglot_source_dir / f"{split}.npz"), str(data / "omniglot" / f"{split}.npz")
        )
    with pytest.raises(MnemetaError, match=f"further down.*--data {data / 'omniglot'} .*npz"):
        load_omniglot_background_evaluation(data)


def test_only_one_split_present(omniglot_zip_root: Path, tmp_path: Path) -> None:
    _link_or_copy(str(omniglot_zip_root / "images_background.zip"), str(tmp_path / "x.zip"))
    (tmp_path / "x.zip").rename(tmp_path / "images_background.zip")
    with pytest.raises(
        MnemetaError,
        match=r"no images_evaluation.zip, images_evaluation/ folder or images_evaluation.npz",
    ):
        load_omniglot_background_evaluation(tmp_path)


def test_too_few_alphabets(small_layout: Path, tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match=r"holds 2 alphabets .* has 30 and 964.*again"):
        load_omniglot_background_evaluation(small_layout, cache_dir=tmp_path / "c")


def test_character_with_19_drawings(small_layout: Path, tmp_path: Path) -> None:
    character = sorted((small_layout / "images_background").glob("*/character03"))[0]
    sorted(character.iterdir())[5].unlink()
    # The per-character check comes before the totals (which this small layout fails too).
    with pytest.raises(MnemetaError, match=f"{character.parent.name}/character03 has 19 drawings"):
        load_omniglot_background_evaluation(small_layout, cache_dir=tmp_path / "c")


def test_junk_files_are_ignored(small_layout: Path, tmp_path: Path) -> None:
    """macOS leaves ._ files and .DS_Store behind; they must not count as drawings."""
    character = sorted((small_layout / "images_background").glob("*/character01"))[0]
    (character / "._0001_01.png").write_bytes(b"\x00\x05\x16\x07")
    (character / ".DS_Store").write_bytes(b"junk")
    (small_layout / "images_background" / "README.txt").write_text("hello")
    with pytest.raises(MnemetaError, match=r"holds 2 alphabets"):  # not "has 21 drawings"
        load_omniglot_background_evaluation(small_layout, cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda png: png[: len(png) // 2], "is not a readable PNG"),
        (lambda png: b"this is not a png at all", "is not a readable PNG"),
        (lambda png: png[:40] + bytes(len(png) - 40), "is not a readable PNG"),
        (lambda png: _png_bytes(Image.new("1", (50, 50), 1)), "is 50x50, not 105x105"),
    ],
    ids=["truncated", "garbage", "zeroed", "wrong size"],
)
def test_damaged_png_in_a_folder(
    damaged_first_png: Callable[[bytes], Path],
    full_copy: Path,
    tmp_path: Path,
    damage: Callable[[bytes], bytes],
    message: str,
) -> None:
    path = damaged_first_png(damage((full_copy / FIRST_PNG).read_bytes()))
    with pytest.raises(MnemetaError, match=f"{path} {message}.*images_background.zip"):
        load_omniglot_background_evaluation(full_copy, cache_dir=tmp_path / "c")


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _copy_zip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrite a zip member by member (stored, so it is quick); ``edit`` may drop a member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)


def _zip_root(tmp_path: Path, omniglot_zip_root: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    _link_or_copy(
        str(omniglot_zip_root / "images_evaluation.zip"), str(root / "images_evaluation.zip")
    )
    return root


def test_damaged_png_in_a_zip(omniglot_zip_root: Path, tmp_path: Path) -> None:
    root = _zip_root(tmp_path, omniglot_zip_root)
    _copy_zip(
        omniglot_zip_root / "images_background.zip",
        root / "images_background.zip",
        lambda name, data: data[:100] if name == FIRST_PNG else data,
    )
    with pytest.raises(MnemetaError, match=f"images_background.zip member {FIRST_PNG} is not a"):
        load_omniglot_background_evaluation(root, cache_dir=tmp_path / "c")


def test_zip_with_a_damaged_member(omniglot_zip_root: Path, tmp_path: Path) -> None:
    root = _zip_root(tmp_path, omniglot_zip_root)
    raw = bytearray((omniglot_zip_root / "images_background.zip").read_bytes())
    with zipfile.ZipFile(omniglot_zip_root / "images_background.zip") as zf:
        info = zf.getinfo(FIRST_PNG)
    # Flip a byte inside the member's compressed data (past its local header): inflating it
    # fails or its CRC does not match; either way the member must be named.
    name_len, extra_len = struct.unpack(
        "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
    )
    raw[info.header_offset + 30 + name_len + extra_len + info.compress_size // 2] ^= 0xFF
    (root / "images_background.zip").write_bytes(bytes(raw))
    with pytest.raises(MnemetaError, match=f"member {FIRST_PNG} is damaged.*again"):
        load_omniglot_background_evaluation(root, cache_dir=tmp_path / "c")


def test_zip_missing_a_drawing(omniglot_zip_root: Path, tmp_path: Path) -> None:
    # A small zip is enough: each character's count is checked before the totals.
    root = _zip_root(tmp_path, omniglot_zip_root)
    with zipfile.ZipFile(root / "images_background.zip", "w") as zf:
        for drawing in range(1, 20):
            zf.writestr(f"images_background/Latin/character01/0683_{drawing:02d}.png", b"")
    with pytest.raises(MnemetaError, match=r"Latin/character01 has 19 drawings"):
        load_omniglot_background_evaluation(root, cache_dir=tmp_path / "c")


@pytest.mark.parametrize(
    "content",
    [b"", b"<html>404: Not Found</html>", "half"],
    ids=["empty", "html error page", "truncated download"],
)
def test_not_a_zip(omniglot_zip_root: Path, tmp_path: Path, content: bytes | str) -> None:
    root = _zip_root(tmp_path, omniglot_zip_root)
    if content == "half":
        real = (omniglot_zip_root / "images_background.zip").read_bytes()
        content = real[: len(real) // 2]
    assert isinstance(content, bytes)
    (root / "images_background.zip").write_bytes(content)
    with pytest.raises(MnemetaError, match=r"images_background.zip is not a valid zip.*download"):
        load_omniglot_background_evaluation(root, cache_dir=tmp_path / "c")


def test_zip_without_the_top_folder(omniglot_zip_root: Path, tmp_path: Path) -> None:
    root = _zip_root(tmp_path, omniglot_zip_root)
    with zipfile.ZipFile(root / "images_background.zip", "w") as zf:
        zf.writestr("Latin/character01/0683_01.png", b"")
    with pytest.raises(MnemetaError, match=r"unexpected member 'Latin/character01/0683_01.png'"):
        load_omniglot_background_evaluation(root, cache_dir=tmp_path / "c")


def test_zip_bomb_member_is_refused(omniglot_zip_root: Path, tmp_path: Path) -> None:
    root = _zip_root(tmp_path, omniglot_zip_root)
    with zipfile.ZipFile(root / "images_background.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images_background/Latin/character01/0683_01.png", bytes(50 << 20))
    with pytest.raises(MnemetaError, match=r"0683_01.png' claims 52428800 bytes"):
        load_omniglot_background_evaluation(root, cache_dir=tmp_path / "c")


# ---------------------------------------------------------------- the compact copy: errors

TINY_CHARACTERS = 2  # per synthetic set: one alphabet "Latin" with this many characters


def tiny_arrays(split: str, characters: int = TINY_CHARACTERS) -> dict[str, np.ndarray]:
    """The arrays of a compact copy (README.txt beside the real one) for a tiny fake set."""
    paths = [
        f"{split}/Latin/character{c:02d}/{c:04d}_{d:02d}.png"
        for c in range(1, characters + 1)
        for d in range(1, 21)
    ]
    background = np.random.default_rng(len(split)).random((len(paths), 105, 105)) < 0.9
    return {
        "images_packed": np.packbits(background, axis=-1),
        "image_shape": np.array([105, 105], dtype=np.int16),
        "alphabet": np.array(["Latin"] * len(paths)),
        "character": np.repeat(np.arange(1, characters + 1, dtype=np.int16), 20),
        "drawer": np.tile(np.arange(1, 21, dtype=np.int8), characters),
        "path": np.array(paths),
    }


@pytest.fixture
def tiny_npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root with two synthetic .npz sets of 1 alphabet x 2 characters, and the loader told to
    expect those totals."""
    root = tmp_path / "tiny"
    root.mkdir()
    for split in SPLITS:
        np.savez_compressed(root / f"{split}.npz", **tiny_arrays(split))
        monkeypatch.setitem(omniglot._EXPECTED, split, (1, TINY_CHARACTERS))
    return root


def test_tiny_npz_decodes_to_the_reference(tiny_npz: Path, tmp_path: Path) -> None:
    data = load_omniglot_background_evaluation(tiny_npz, cache_dir=tmp_path / "c")
    for split in SPLITS:
        arrays, got = tiny_arrays(split), data[KEYS[split]]
        assert got.names == ("Latin/character01", "Latin/character02")
        assert tuple(got.images.shape) == (2, 20, 1, 28, 28)
        for row in (0, 19, 20, 39):
            want = reference_image(arrays["images_packed"][row], 28)
            np.testing.assert_array_equal(got.images[row // 20, row % 20, 0].numpy(), want)


def test_npz_rows_in_another_order_give_the_same_tensors(tiny_npz: Path, tmp_path: Path) -> None:
    """Classes and drawings are ordered by the stored paths, not by the rows."""
    expected = load_omniglot_background_evaluation(tiny_npz, cache_dir=tmp_path / "a")
    arrays = tiny_arrays("images_background")
    order = np.random.default_rng(3).permutation(len(arrays["path"]))
    shuffled = {k: v[order] if v.shape[:1] == order.shape else v for k, v in arrays.items()}
    np.savez(tiny_npz / "images_background.npz", **shuffled)
    assert_same(load_omniglot_background_evaluation(tiny_npz, cache_dir=tmp_path / "b"), expected)


class _Booby:
    """Unpickling this would create ``marker``: proof that a load unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _flip_a_stored_byte(path: Path) -> None:
    arrays = tiny_arrays("images_background")
    np.savez(path, **arrays)  # stored, not deflated: the pixels are in the file as they are
    raw = bytearray(path.read_bytes())
    raw[raw.index(arrays["images_packed"].tobytes()[:64]) + 100] ^= 0xFF
    path.write_bytes(bytes(raw))


def _edited(**changes: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        arrays = {**tiny_arrays("images_background"), **changes}
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})

    return write


def _paths_with(row: int, value: str) -> np.ndarray:
    paths = tiny_arrays("images_background")["path"].astype(object)
    paths[row] = value
    return paths.astype(str)


_ONE_FEWER = {k: v[:-1] if k != "image_shape" else v for k, v in tiny_arrays(SPLITS[0]).items()}

NPZ_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "garbage": (lambda p: p.write_bytes(b"this is not an npz"), r"is not a readable \.npz"),
    "truncated": (
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        r"is not a readable \.npz",
    ),
    "flipped byte": (_flip_a_stored_byte, r"is damaged or foreign .*CRC"),
    "no path array": (_edited(path=None), r"has no path array \(it holds alphabet, character"),
    "no pixels": (_edited(images_packed=None), r"has no images_packed array"),
    "other image shape": (
        _edited(image_shape=np.array([28, 28], dtype=np.int16)),
        r"has image_shape \[28, 28\], not \[105, 105\]",
    ),
    "unpacked pixels": (
        _edited(images_packed=np.zeros((40, 105, 105), dtype=np.uint8)),
        r"holds images_packed uint8 \(40, 105, 105\), expected uint8 \(N, 105, 14\)",
    ),
    "wrong pixel dtype": (
        _edited(images_packed=np.zeros((40, 105, 14), dtype=np.int16)),
        r"holds images_packed int16",
    ),
    "paths as bytes": (
        _edited(path=tiny_arrays(SPLITS[0])["path"].astype(bytes)),
        r"holds path \|S\d+ \(40,\), expected one str per image \(40\)",
    ),
    "a path too few": (
        _edited(path=tiny_arrays(SPLITS[0])["path"][:-1]),
        r"holds path <U\d+ \(39,\), expected one str per image \(40\)",
    ),
    "foreign path": (
        _edited(path=_paths_with(3, "images_background/Latin/x.png")),
        r"row 3 has the path 'images_background/Latin/x.png' \(expected images_background/<",
    ),
    "other set's path": (
        _edited(path=_paths_with(0, "images_evaluation/Latin/character01/0001_01.png")),
        r"row 0 has the path 'images_evaluation/",
    ),
    "escaping path": (
        _edited(path=_paths_with(5, "images_background/../character01/0001_06.png")),
        r"row 5 has the path",
    ),
    "duplicate path": (
        _edited(path=_paths_with(1, "images_background/Latin/character01/0001_01.png")),
        r"holds images_background/Latin/character01/0001_01.png twice \(rows 0 and 1\)",
    ),
    "a drawing missing": (
        lambda p: np.savez(p, **_ONE_FEWER),
        r"images_background/Latin/character02 has 19 drawings, expected 20",
    ),
}


@pytest.mark.parametrize("damage", sorted(NPZ_DAMAGE))
def test_damaged_or_foreign_npz_is_a_one_line_data_error(
    tiny_npz: Path, tmp_path: Path, damage: str
) -> None:
    write, message = NPZ_DAMAGE[damage]
    target = tiny_npz / "images_background.npz"
    write(target)
    with pytest.raises(DataError, match=message) as caught:
        load_omniglot_background_evaluation(tiny_npz, cache_dir=tmp_path / "c")
    text = str(caught.value)
    assert "\n" not in text and text.startswith(str(target)), text
    assert "copy it again" in text or "copy images_background.npz again" in text


def test_npz_with_an_object_array_is_refused_without_unpickling(
    tiny_npz: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    booby = np.array([_Booby(marker)] * 40, dtype=object)
    np.savez(tiny_npz / "images_background.npz", **{**tiny_arrays(SPLITS[0]), "path": booby})
    with pytest.raises(DataError, match=r"is damaged or foreign .*allow_pickle=False"):
        load_omniglot_background_evaluation(tiny_npz, cache_dir=tmp_path / "c")
    assert not marker.exists()


def test_npz_that_would_unpack_too_big_is_refused(
    tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(omniglot, "_NPZ_MAX_BYTES", 10_000)  # the tiny copy unpacks to ~20 kB
    with pytest.raises(DataError, match=r"would unpack to \d+ bytes, far more than Omniglot"):
        load_omniglot_background_evaluation(tiny_npz, cache_dir=tmp_path / "c")


def test_npz_totals_are_checked(tiny_npz: Path, tmp_path: Path) -> None:
    np.savez(tiny_npz / "images_evaluation.npz", **tiny_arrays(SPLITS[1], characters=1))
    with pytest.raises(
        DataError, match=r"evaluation.npz holds 1 alphabets and 1 char.*copy images_evaluation.npz"
    ):
        load_omniglot_background_evaluation(tiny_npz, cache_dir=tmp_path / "c")


def test_read_only_data_folder_caches_in_the_user_folder(
    tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MNEMETA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    tiny_npz.chmod(0o555)  # as shared data folders are; counts as read-only even for root
    try:
        load_omniglot_background_evaluation(tiny_npz)
    finally:
        tiny_npz.chmod(0o755)
    assert not (tiny_npz / ".mnemeta_cache").exists()
    assert len(list((tmp_path / "xdg" / "mnemeta").glob("omniglot-*.safetensors"))) == 2


# ------------------------------------------------------------------------------------ download


def test_download_fetches_verifies_and_loads(
    served_zips: tuple[dict, dict], zip_cache: Path, sets: Sets, tmp_path: Path
) -> None:
    urls, sums = served_zips
    root = tmp_path / "new" / "omniglot"
    data = load_omniglot_background_evaluation(
        root, download=True, urls=urls, sha256=sums, cache_dir=zip_cache
    )
    assert_same(data, sets)
    assert sorted(p.name for p in root.iterdir()) == [
        "images_background.zip",
        "images_evaluation.zip",
    ]
    for split in SPLITS:
        assert sha256_of(root / f"{split}.zip") == sums[split]


def test_download_only_what_is_missing(
    served_zips: tuple[dict, dict],
    omniglot_zip_root: Path,
    zip_cache: Path,
    sets: Sets,
    tmp_path: Path,
    http_server: tuple[Path, str],
) -> None:
    urls, sums = served_zips
    root = tmp_path / "omniglot"
    root.mkdir()
    _link_or_copy(
        str(omniglot_zip_root / "images_background.zip"), str(root / "images_background.zip")
    )
    # A background URL that would fail proves that the present zip is not fetched again.
    urls = {**urls, "images_background": f"{http_server[1]}/missing.zip"}
    data = load_omniglot_background_evaluation(
        root, download=True, urls=urls, sha256=sums, cache_dir=zip_cache
    )
    assert_same(data, sets)


def test_download_checksum_mismatch_leaves_nothing(
    served_zips: tuple[dict, dict], tmp_path: Path
) -> None:
    urls, sums = served_zips
    root = tmp_path / "omniglot"
    wrong = {**sums, "images_background": "0" * 64}
    with pytest.raises(MnemetaError, match=r"sha256 mismatch for .*images_background.zip"):
        load_omniglot_background_evaluation(root, download=True, urls=urls, sha256=wrong)
    assert list(root.iterdir()) == []


def test_download_checks_the_official_sha256_by_default(
    served_zips: tuple[dict, dict], tmp_path: Path
) -> None:
    # The materialized zips hold the same images but are not byte-identical to the official
    # ones, so the built-in checksums must reject them.
    urls, _ = served_zips
    root = tmp_path / "omniglot"
    with pytest.raises(MnemetaError, match=f"expected {OMNIGLOT_SHA256['images_background']}"):
        load_omniglot_background_evaluation(root, download=True, urls=urls)
    assert list(root.iterdir()) == []


def test_download_of_a_malicious_zip_is_refused(
    http_server: tuple[Path, str], omniglot_zip_root: Path, tmp_path: Path
) -> None:
    served, base = http_server
    evil = served / "evil_background.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("images_background/../../evil.png", b"x")
        zf.writestr(str(tmp_path / "abs_evil.png"), b"x")
    root = tmp_path / "deep" / "omniglot"
    root.mkdir(parents=True)
    _link_or_copy(
        str(omniglot_zip_root / "images_evaluation.zip"), str(root / "images_evaluation.zip")
    )
    urls = {"images_background": f"{base}/evil_background.zip"}
    sums = {"images_background": sha256_of(evil)}
    with pytest.raises(MnemetaError, match=r"unexpected member '.*evil\.png'"):
        load_omniglot_background_evaluation(
            root, download=True, urls=urls, sha256=sums, cache_dir=tmp_path / "c"
        )
    assert not list(tmp_path.rglob("*evil.png"))  # only the zip itself, nothing extracted


def test_download_file_md5_and_sha256(http_server: tuple[Path, str], tmp_path: Path) -> None:
    served, base = http_server
    payload = os.urandom(3 << 20)  # several chunks
    (served / "blob.bin").write_bytes(payload)
    dest = tmp_path / "sub" / "blob.bin"
    out = download_file(
        f"{base}/blob.bin",
        dest,
        sha256=hashlib.sha256(payload).hexdigest().upper(),
        md5=hashlib.md5(payload).hexdigest(),
        progress=True,
    )
    assert out == dest and dest.read_bytes() == payload
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_download_file_failure_keeps_the_old_file(
    http_server: tuple[Path, str], tmp_path: Path
) -> None:
    served, base = http_server
    (served / "new.bin").write_bytes(b"new content")
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"old content")
    with pytest.raises(MnemetaError, match=r"md5 mismatch"):
        download_file(f"{base}/new.bin", dest, md5="0" * 32)
    assert dest.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_download_file_http_error(http_server: tuple[Path, str], tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match=r"could not download .*404"):
        download_file(f"{http_server[1]}/missing.bin", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_download_file_into_an_unwritable_place(
    http_server: tuple[Path, str], tmp_path: Path
) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(MnemetaError, match=r"cannot write .* writable"):
        download_file(f"{http_server[1]}/whatever.bin", tmp_path / "a_file" / "x.bin")


def test_download_file_rejects_other_schemes(tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match=r"only http"):
        download_file("file:///etc/passwd", tmp_path / "x")


def test_no_download_without_the_flag(tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match=r"data.download=true"):
        load_omniglot_background_evaluation(tmp_path / "omniglot")
    assert not (tmp_path / "omniglot").exists()


def test_official_urls() -> None:
    assert set(OMNIGLOT_URLS) == set(OMNIGLOT_SHA256) == set(SPLITS)
    for split, url in OMNIGLOT_URLS.items():
        assert url == f"https://github.com/brendenlake/omniglot/raw/master/python/{split}.zip"


# ----------------------------------------------------------------------------- safe extraction


def test_safe_extract_the_official_sample(
    omniglot_source_dir: Path, omniglot_scratch: Path
) -> None:
    sample = omniglot_source_dir / "official-sample" / "images_background_small1.zip"
    if not sample.is_file():
        pytest.skip(f"official sample {sample} not present")
    work = Path(tempfile.mkdtemp(prefix="extract-", dir=omniglot_scratch))  # 2,862 entries
    dest = safe_extract_zip(sample, work / "out")
    pngs = list(dest.rglob("*.png"))
    assert len(pngs) == 2720
    assert (dest / "images_background_small1/Balinese/character01/0108_01.png").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # no temp folder left


def _symlink_member(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../evil.txt", "'..' component"),
        ("a/../../evil.txt", "'..' component"),
        ("a\\..\\..\\evil.txt", "'..' component"),
        ("ABSOLUTE", "absolute path"),
        ("C:/evil.txt", "drive letter"),
        ("C:evil.txt", "drive letter"),
        ("SYMLINK", "symbolic link"),
    ],
)
def test_safe_extract_refuses_escaping_members(tmp_path: Path, member: str, reason: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good/first.txt", b"fine")  # a harmless member *before* the bad one
        if member == "SYMLINK":
            member = "good/link"
            _symlink_member(zf, member, str(tmp_path))
        elif member == "ABSOLUTE":
            member = str(tmp_path / "evil.txt")
            zf.writestr(member, b"x")
        else:
            zf.writestr(member, b"x")
    dest = work / "out"
    with pytest.raises(MnemetaError, match=re.escape(f"member {member!r} is unsafe ({reason})")):
        safe_extract_zip(archive, dest)
    assert not dest.exists()
    assert sorted(p.name for p in work.iterdir()) == ["evil.zip"]  # no temp folder left
    assert not list(tmp_path.rglob("evil.txt"))
    assert not list(tmp_path.rglob("first.txt"))


def test_safe_extract_refuses_an_existing_destination(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x.txt", b"x")
    (tmp_path / "out").mkdir()
    with pytest.raises(MnemetaError, match=r"already exists"):
        safe_extract_zip(archive, tmp_path / "out")


def test_safe_extract_damaged_archive_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("one.txt", b"A" * 1000)
        zf.writestr("two.txt", b"B" * 1000)
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"B" * 100) + 10] ^= 0xFF  # second member's data: CRC fails mid-extraction
    archive.write_bytes(bytes(raw))
    with pytest.raises(MnemetaError, match=r"member 'two.txt' is damaged"):
        safe_extract_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]
    (tmp_path / "b.zip").write_bytes(b"not a zip")
    with pytest.raises(MnemetaError, match=r"not a valid zip"):
        safe_extract_zip(tmp_path / "b.zip", tmp_path / "out")


def test_safe_extract_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(MnemetaError, match=r"cannot extract .*archive exists"):
        safe_extract_zip(tmp_path / "missing.zip", tmp_path / "out")
