"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015) from the official release, as ClassImages.

The data folder (``data.root``, or ``$MNEMETA_DATA/omniglot``: ``$MNEMETA_DATA`` holds one
folder per dataset) may hold each of the two sets in one of three forms, taken in this order
when several are present:

1. ``images_background.zip`` / ``images_evaluation.zip``: what users get from
   https://github.com/brendenlake/omniglot (``python/``), byte for byte;
2. the folders they extract to, ``images_background/<Alphabet>/characterNN/XXXX_YY.png``;
3. ``images_background.npz`` / ``images_evaluation.npz``: the compact copy (1-bit packed
   pixels plus each image's official relative path, read with ``allow_pickle=False``).

The zip comes first because it is exactly the official release; a folder may have been edited
since it was extracted, and the .npz is a derived copy. All three give the same tensors, pixel
for pixel (``tests/data/test_omniglot.py`` checks the .npz against the zips): the .npz holds
the official one-bit images unchanged and their paths, so its classes, drawing order and
resizing are those of the PNGs. Each PNG is a 105x105 one-bit image, white (True) background
and black strokes.

Images come out as uint8 with the strokes *bright* (stroke 255, background 0, the convention of
the MAML/ProtoNet pipelines) at ``image_size`` x ``image_size``. Decoding the 32,460 PNGs takes a
few seconds, so the result is cached as a safetensors file (no pickle) keyed by a hash of the
source and the preprocessing; a damaged cache file is detected and rebuilt
(:mod:`mnemeta.data.cache`).

Splits:

- ``"lake"``: the original background (964 characters, 30 alphabets) / evaluation (659, 20).
- ``"vinyals"``: all 1,623 characters pooled, each rotated by 0/90/180/270 degrees into four
  classes (Santoro et al. 2016; Vinyals et al. 2016), then cut by the list files of Snell et al.
  (2017): train 4,112 / val 688 / trainval 4,800 / test 1,692 classes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnemeta.data.cache import TensorCache, Validate, cache_folder, cache_key, check_tensor
from mnemeta.data.classes import ClassImages, rotate_classes
from mnemeta.data.download import download_file, progress_bar
from mnemeta.errors import ConfigError, DataError

__all__ = [
    "OMNIGLOT_MD5",
    "OMNIGLOT_SHA256",
    "OMNIGLOT_URLS",
    "find_omniglot_root",
    "load_omniglot",
    "load_omniglot_background_evaluation",
]

# The two archives of the official release, keyed by their stem (= the folder they extract to).
OMNIGLOT_URLS: dict[str, str] = {
    "images_background": (
        "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip"
    ),
    "images_evaluation": (
        "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip"
    ),
}

# SHA-256 of the official zips, as published by TensorFlow Datasets in
# tensorflow/datasets tensorflow_datasets/url_checksums/omniglot.txt (commit 90b66237ad09), which
# also gives their sizes: 9,464,212 and 6,462,886 bytes. We could not download the zips here to
# recompute them. What we could check: the same TFDS table lists images_background_small1.zip as
# 1,319,022 bytes with sha256 f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4, and
# an official copy of that file (brendenlake/omniglot commit 057f034b) matches byte for byte.
OMNIGLOT_SHA256: dict[str, str] = {
    "images_background": "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    "images_evaluation": "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
}

# MD5 of the same zips from torchvision/datasets/omniglot.py (``zips_md5``; torchmeta uses the
# same values). Not checked on download (the SHA-256 above is); kept so that a zip fetched by
# torchvision can be compared with ``md5sum``.
OMNIGLOT_MD5: dict[str, str] = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}

_SPLITS = ("images_background", "images_evaluation")
# (alphabets, characters) of each archive of the official release.
_EXPECTED = {"images_background": (30, 964), "images_evaluation": (20, 659)}
_DRAWINGS = 20  # every character was drawn once by each of 20 people
_SIDE = 105  # the official PNGs are 105x105
_MAX_PNG_BYTES = 1 << 16  # the official ones are 100-600 bytes

# Bump when the decoded pixels would change (resampling filter, inversion, layout): old cache
# files then simply stop matching and are rebuilt.
_CACHE_FORMAT = "mnemeta.omniglot/1"
# Pillow's BILINEAR, not LANCZOS. When Pillow *reduces* an image its BILINEAR is an antialiased
# tent filter over the whole footprint, so each output pixel is the local stroke coverage: values
# stay in [0, 255] with no ringing. LANCZOS's negative lobes overshoot next to the thin strokes
# and get clipped, and it is ~1.5x slower. torchvision's Resize(antialias=True) uses the same
# filter (ported from Pillow), so pixels stay comparable with a torchvision pipeline.
_RESAMPLE = Image.Resampling.BILINEAR
_RESAMPLE_NAME = "bilinear"

_VINYALS_SPLITS = ("train", "val", "trainval", "test")


def find_omniglot_root(root: str | os.PathLike[str] | None) -> Path:
    """The Omniglot folder: ``root`` if given, else ``$MNEMETA_DATA/omniglot``.

    ``$MNEMETA_DATA`` is the folder that holds one folder per dataset (``omniglot/``, ...), the
    same convention for the CLI and the tests. Only resolves the path; :func:`load_omniglot`
    checks what is inside.
    """
    if root is not None:
        return Path(root).expanduser()
    data = os.environ.get("MNEMETA_DATA")
    if data:
        return Path(data).expanduser() / "omniglot"
    raise DataError(
        "no Omniglot folder given: pass --data PATH or set MNEMETA_DATA (the folder "
        "that holds omniglot/)"
    )


def load_omniglot_background_evaluation(
    root: str | os.PathLike[str] | None,
    *,
    image_size: int = 28,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = False,
    urls: Mapping[str, str] | None = None,
    sha256: Mapping[str, str | None] | None = None,
) -> dict[str, ClassImages]:
    """The two official Omniglot sets, decoded (or read back from the cache).

    Args:
        root: folder holding, for each set, ``images_background.zip`` (the official zip), the
            folder ``images_background/`` it extracts to, or the compact copy
            ``images_background.npz`` (likewise for ``images_evaluation``); when several are
            present the zip is used, then the folder, then the .npz. None means
            ``$MNEMETA_DATA/omniglot``.
        image_size: side S of the square output images (28 for MAML/ProtoNets, 20 for MANN).
        cache_dir: where decoded tensors are cached; default ``$MNEMETA_CACHE`` if set, else
            ``root/.mnemeta_cache``, else (a read-only ``root``) the user's cache folder (see
            :func:`mnemeta.data.cache.cache_folder`).
        download: fetch the zips that are missing from ``root`` (never re-fetches present data).
        progress: show progress bars for downloading and decoding.
        urls: override :data:`OMNIGLOT_URLS` (e.g. a mirror), keyed like it.
        sha256: override :data:`OMNIGLOT_SHA256` for downloads; a None value skips the check.

    Returns:
        ``{"background": 964 classes, "evaluation": 659 classes}``. Each is a
        :class:`ClassImages` with images uint8 ``(n_classes, 20, 1, S, S)``, strokes 255 and
        background 0, classes named ``"Alphabet/characterNN"`` in sorted order and drawings in
        file-name order (``XXXX_01.png`` first).
    """
    root = find_omniglot_root(root)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer; got {image_size!r}")
    sources = _locate_sources(
        root,
        download=download,
        urls={**OMNIGLOT_URLS, **(urls or {})},
        sha256={**OMNIGLOT_SHA256, **(sha256 or {})},
        progress=progress,
    )
    cache = TensorCache(
        cache_folder(cache_dir, root), label="Omniglot", rebuild="decoding the images"
    )
    out: dict[str, ClassImages] = {}
    for split, key in zip(_SPLITS, ("background", "evaluation"), strict=True):
        path = sources[split]
        if path.suffix == ".npz":
            source = _npz_source(path, split)
        elif path.is_file():
            source = _zip_source(path, split)
        else:
            source = _folder_source(path, split)
        out[key] = _decode_cached(source, image_size, cache, progress)
    return out


def load_omniglot(
    root: str | os.PathLike[str] | None,
    *,
    split: str = "vinyals",
    image_size: int = 28,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    progress: bool = False,
    urls: Mapping[str, str] | None = None,
    sha256: Mapping[str, str | None] | None = None,
) -> dict[str, ClassImages]:
    """Omniglot cut into meta-learning splits.

    Args:
        root, image_size, cache_dir, download, progress, urls, sha256: as for
            :func:`load_omniglot_background_evaluation`.
        split: ``"vinyals"`` or ``"lake"``.

    Returns:
        For ``"lake"``: ``{"train": background (964 classes), "test": evaluation (659)}``, not
        rotated (callers may apply :func:`rotate_classes`). For ``"vinyals"``: ``{"train": 4112,
        "val": 688, "trainval": 4800, "test": 1692}`` classes named
        ``"Alphabet/characterNN/rotDDD"``, in the order of the split files. Images are uint8
        ``(n_classes, 20, 1, S, S)``; a ``rot090`` class is its ``rot000`` class turned by
        ``torch.rot90(k=1, dims=(-2, -1))``.
    """
    if split not in ("vinyals", "lake"):
        raise ConfigError(f"unknown Omniglot split {split!r}; choose 'vinyals' or 'lake'")
    sets = load_omniglot_background_evaluation(
        root,
        image_size=image_size,
        cache_dir=cache_dir,
        download=download,
        progress=progress,
        urls=urls,
        sha256=sha256,
    )
    background, evaluation = sets["background"], sets["evaluation"]
    if split == "lake":
        return {"train": background, "test": evaluation}
    # Vinyals et al. pool both sets: the split is by character, across the original sets.
    pooled = ClassImages(
        torch.cat([background.images, evaluation.images]),
        torch.cat([background.counts, evaluation.counts]),
        background.names + evaluation.names,
    )
    del sets, background, evaluation
    rotated = rotate_classes(pooled, (0, 90, 180, 270))
    del pooled
    return {name: rotated.subset(_vinyals_names(name)) for name in _VINYALS_SPLITS}


@cache
def _vinyals_names(split: str) -> tuple[str, ...]:
    """Class names of one Vinyals split, from the list files shipped in the package."""
    text = (
        resources.files("mnemeta.data")
        .joinpath("splits")
        .joinpath("omniglot_vinyals")
        .joinpath(f"{split}.txt")
        .read_text(encoding="utf-8")
    )
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------- finding the data


def _locate_sources(
    root: Path,
    *,
    download: bool,
    urls: Mapping[str, str],
    sha256: Mapping[str, str | None],
    progress: bool,
) -> dict[str, Path]:
    """The source of each split under ``root`` (its zip, else its folder, else its .npz),
    downloading the zips of what is missing."""
    if root.is_file():
        raise DataError(
            f"Omniglot root {root} is a file, not a folder; pass --data {root.parent} "
            f"(the folder that holds {_FORMS})"
        )
    if not root.exists() and not download:
        if root.name == "omniglot" and _holds_split(root.parent):
            # The usual slip: MNEMETA_DATA set to the omniglot folder itself.
            raise DataError(
                f"Omniglot folder {root} does not exist, but {root.parent} holds the Omniglot "
                f"files; set MNEMETA_DATA={root.parent.parent} (the folder that holds omniglot/) "
                f"or pass --data {root.parent}"
            )
        raise DataError(
            f"Omniglot folder {root} does not exist; pass --data PATH (the folder that "
            f"holds {_FORMS}), set MNEMETA_DATA (the folder that holds omniglot/), or pass "
            "--set data.download=true to fetch the official zips"
        )
    found = {split: _split_source(root, split) for split in _SPLITS}
    missing = [split for split, path in found.items() if path is None]
    if missing and root.exists():
        hint = _layout_hint(root)
        # A recognisably misplaced root is an error even with download=True: downloading into
        # the wrong folder would hide the user's data instead of finding it.
        if hint is not None:
            raise DataError(hint)
        if not download and len(missing) == len(_SPLITS):
            raise DataError(
                f"Omniglot folder {root} holds neither images_background nor images_evaluation "
                "(as .zip, extracted folder or .npz); point --data at the folder that "
                "holds them, or pass --set data.download=true to fetch the official zips"
            )
        if not download:
            split = missing[0]
            raise DataError(
                f"Omniglot folder {root} has no {split}.zip, {split}/ folder or {split}.npz; "
                "copy it there (from the official release) or pass --set data.download=true to "
                "fetch it"
            )
    for split in missing:
        found[split] = download_file(
            urls[split], root / f"{split}.zip", sha256=sha256.get(split), progress=progress
        )
    return {split: path for split, path in found.items() if path is not None}


# How messages name what a data folder should hold.
_FORMS = (
    "images_background and images_evaluation as the official .zip files, their extracted "
    "folders or the compact .npz copy"
)


def _split_source(root: Path, split: str) -> Path | None:
    """The zip, else the extracted folder, else the .npz of ``split`` in ``root``; None if none.

    The zip first: it is one file, cheap to hash for the cache key, and it is exactly what the
    official release ships (an extracted folder may have been edited since). The compact .npz
    last: it is derived from the official PNGs, so a user who also has those gets them.
    """
    zip_path, folder, npz = root / f"{split}.zip", root / split, root / f"{split}.npz"
    if zip_path.is_file():
        return zip_path
    if folder.is_dir():
        return folder
    return npz if npz.is_file() else None


def _fetch_again(location: Path, split: str) -> str:
    """How to replace an incomplete copy, in the words of its form."""
    if location.suffix == ".npz":
        return f"copy {location.name} again (or use the official {split}.zip)"
    return f"extract or download {split}.zip again"


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _holds_split(path: Path) -> bool:
    return any(_split_source(path, s) is not None for s in _SPLITS)


def _layout_hint(root: Path) -> str | None:
    """A message pointing at the right folder when ``root`` is a recognisable wrong one."""

    def use(path: Path) -> str:
        return f"pass --data {path} instead (the folder that holds {_FORMS})"

    def is_alphabet(path: Path) -> bool:
        return any(p.name.startswith("character") for p in _subdirs(path))

    subdirs = _subdirs(root)
    if root.name.startswith(_SPLITS) or any(is_alphabet(p) for p in subdirs[:5]):
        return (
            f"Omniglot folder {root} looks like one split folder (it holds alphabet folders); "
            + use(root.parent)
        )
    if is_alphabet(root):
        return f"Omniglot folder {root} looks like one alphabet folder; {use(root.parent.parent)}"
    # Too shallow: e.g. $DATA instead of $DATA/omniglot, a clone of the official repository
    # (omniglot/python/...), or torchvision's omniglot-py/. The search is bounded (two levels,
    # a few hundred folders) because root may be something as big as a home folder.
    level, visited = subdirs, 0
    for _ in range(2):
        below = []
        for path in level:
            visited += 1
            if visited > 400:
                return None
            if _holds_split(path):
                return f"Omniglot folder {root} holds the data further down; {use(path)}"
            below.extend(_subdirs(path))
        level = below
    if any(root.glob("images_background_small*")):
        return (
            f"Omniglot folder {root} holds only the small background subsets; mnemeta needs the "
            "full images_background.zip and images_evaluation.zip: pass --set data.download=true"
        )
    return None


# ------------------------------------------------------------------------------ listing a split


@dataclass(frozen=True)
class _Listing:
    """What one split holds, checked, ready to decode.

    Attributes:
        split: ``"images_background"`` or ``"images_evaluation"``.
        location: the zip file, the extracted folder or the .npz file.
        classes: ``"Alphabet/characterNN"`` for each character, sorted.
        members: for each class in order, its 20 drawings in file-name order, as paths relative
            to the zip root / the folder's parent (``images_background/A/character01/x.png``);
            the .npz copy stores exactly these paths.
        image: one member resized to uint8 ``(S, S)``, *not yet inverted* (background 255);
            raises DataError if it cannot be read and :class:`_BadPng` if it is not an
            official drawing.
        where: how an error names one member (``ZIP member M``, a file's path, an .npz row).
    """

    split: str
    location: Path
    classes: tuple[str, ...]
    members: tuple[str, ...]
    image: Callable[[str, int], np.ndarray]
    where: Callable[[str], str]


@dataclass(frozen=True)
class _Source:
    """One split's zip, folder or .npz, identified by a hash of its content.

    Listing the members is deferred to ``listing()`` because only a cache miss needs it: parsing
    the zip directory of 19,280 members costs more than the whole cache hit otherwise.
    """

    split: str
    location: Path
    digest: str  # SHA-256 hex: the cache key of this source
    listing: Callable[[], _Listing]


def _is_junk(part: str) -> bool:
    # Hidden files and macOS's AppleDouble "._0709_01.png" files (created when a folder is copied
    # to a non-Apple disk) would otherwise count as drawings.
    return part.startswith(".") or part == "__MACOSX"


def _group(
    split: str, location: Path, drawings: Mapping[tuple[str, str], list[str]]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Sorted class names and members, after checking that each character has 20 drawings."""
    classes: list[str] = []
    members: list[str] = []
    for (alphabet, character), files in sorted(drawings.items()):
        if len(files) != _DRAWINGS:
            raise DataError(
                f"{location}: {split}/{alphabet}/{character} has {len(files)} drawings, expected "
                f"{_DRAWINGS}; the copy is incomplete or damaged: {_fetch_again(location, split)}"
            )
        classes.append(f"{alphabet}/{character}")
        members.extend(f"{split}/{alphabet}/{character}/{f}" for f in sorted(files))
    return tuple(classes), tuple(members)


def _zip_source(path: Path, split: str) -> _Source:
    """An ``images_background.zip``-style archive, keyed by the SHA-256 of its bytes (~20 ms)."""
    # Read the whole archive once (9.5 MB): the cache key is the hash of exactly these bytes, and
    # the decoder reads the same bytes, so a file replaced in between cannot slip through.
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    return _Source(split, path, digest, lambda: _list_zip(path, split, data))


def _list_zip(path: Path, split: str, data: bytes) -> _Listing:
    """List and check the members: ``split/<Alphabet>/<characterNN>/*.png``."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{path} is not a valid zip archive ({exc}); it is damaged or an incomplete download: "
            "delete it and copy it again, or pass --set data.download=true"
        ) from exc
    drawings: dict[tuple[str, str], list[str]] = {}
    for info in zf.infolist():
        name = info.filename
        parts = name.split("/")
        if name.endswith("/") or any(_is_junk(p) for p in parts):
            continue
        if not name.lower().endswith(".png"):
            continue
        if (
            len(parts) != 4
            or parts[0] != split
            or any(p in ("", ".", "..") or "\\" in p for p in parts)
        ):
            raise DataError(
                f"{path} holds the unexpected member {name!r} (expected "
                f"{split}/<Alphabet>/<characterNN>/<XXXX_YY>.png); this is not the official "
                f"{split}.zip: delete it and download it again"
            )
        # The official PNGs are ~300 bytes; refuse to inflate a "zip bomb" member into memory.
        if info.file_size > _MAX_PNG_BYTES:
            raise DataError(
                f"{path} member {name!r} claims {info.file_size} bytes, far more than an Omniglot "
                f"drawing; this is not the official {split}.zip: delete it and download it again"
            )
        drawings.setdefault((parts[1], parts[2]), []).append(parts[3])
    classes, members = _group(split, path, drawings)

    def read(member: str) -> bytes:
        try:
            return zf.read(member)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # bad CRC, broken deflate
            raise DataError(
                f"{path} member {member} is damaged ({exc}); delete the zip and copy or download "
                "it again"
            ) from exc

    listing = _Listing(
        split,
        path,
        classes,
        members,
        lambda member, size: _decode_png(read(member), size),
        lambda member: f"{path} member {member}",
    )
    _check_totals(listing)
    return listing


def _folder_source(path: Path, split: str) -> _Source:
    """An extracted split folder, ``path/<Alphabet>/<characterNN>/*.png``."""
    # The cache key hashes each PNG's relative path, size and mtime rather than its bytes:
    # measured on 2 cores, stat-ing the 19,280 background files takes ~0.1 s, reading them all
    # ~0.5 s warm (much more from a cold disk), and a cache hit should cost far less than a decode.
    h = hashlib.sha256(f"folder:{split}\n".encode())
    drawings: dict[tuple[str, str], list[str]] = {}
    for alphabet in _subdirs(path):
        for character in _subdirs(alphabet):
            with os.scandir(character) as it:
                pngs = sorted(
                    (entry.name, entry.stat())
                    for entry in it
                    if not _is_junk(entry.name)
                    and entry.name.lower().endswith(".png")
                    and entry.is_file()
                )
            for name, st in pngs:
                h.update(f"{alphabet.name}/{character.name}/{name}\0{st.st_size}\0".encode())
                h.update(f"{st.st_mtime_ns}\n".encode())
            if pngs:
                drawings[(alphabet.name, character.name)] = [name for name, _ in pngs]
    return _Source(split, path, h.hexdigest(), lambda: _list_folder(path, split, drawings))


def _list_folder(path: Path, split: str, drawings: Mapping[tuple[str, str], list[str]]) -> _Listing:
    """Check the drawings found by :func:`_folder_source`."""
    classes, members = _group(split, path, drawings)
    parent = path.parent

    def read(member: str) -> bytes:
        try:
            return (parent / member).read_bytes()
        except OSError as exc:
            raise DataError(
                f"cannot read {parent / member} ({exc}); check the file's permissions, or "
                f"extract {split}.zip again"
            ) from exc

    listing = _Listing(
        split,
        path,
        classes,
        members,
        lambda member, size: _decode_png(read(member), size),
        lambda member: str(parent / member),
    )
    _check_totals(listing)
    return listing


def _check_totals(listing: _Listing) -> None:
    alphabets = len({name.split("/", 1)[0] for name in listing.classes})
    n_alphabets, n_classes = _EXPECTED[listing.split]
    if (alphabets, len(listing.classes)) != (n_alphabets, n_classes):
        raise DataError(
            f"{listing.location} holds {alphabets} alphabets and {len(listing.classes)} "
            f"characters, but the official {listing.split} has {n_alphabets} and {n_classes}; "
            f"the copy is incomplete: {_fetch_again(listing.location, listing.split)}"
        )


# --------------------------------------------------------------------------- the compact copy

# The arrays mnemeta reads from an .npz (others, e.g. alphabet/character/drawer, are ignored: the
# path column says the same). See the README.txt that ships beside the compact copy.
_NPZ_ARRAYS = ("images_packed", "image_shape", "path")
_NPZ_MAX_BYTES = 1 << 28  # 256 MiB unpacked: the real ones are ~30 MB; refuse decompression bombs
_PACKED_WIDTH = (_SIDE + 7) // 8  # np.packbits of 105 pixels: 14 bytes per row


def _npz_source(path: Path, split: str) -> _Source:
    """The compact copy ``images_background.npz``, keyed by the SHA-256 of its bytes.

    The digest is taken over a ``npz:`` prefix and the bytes, so that no .npz can ever share a
    cache key with a zip (whose digest is over its bytes alone) or a folder (``folder:``), even
    though all three decode to the same tensors: a key names its source, and two sources are
    only ever equal by being the same bytes.
    """
    data = path.read_bytes()
    digest = hashlib.sha256(b"npz:" + data).hexdigest()
    return _Source(split, path, digest, lambda: _list_npz(path, split, data))


def _not_the_copy(path: Path, what: str) -> DataError:
    return DataError(
        f"{path} {what}; it is not an intact Omniglot compact copy: copy it again, or delete it "
        "and pass --set data.download=true to fetch the official zip"
    )


def _list_npz(path: Path, split: str, data: bytes) -> _Listing:
    """Read and check the arrays, and list the members by their stored official paths."""
    arrays = _read_npz(path, data)
    packed, shape, paths = (arrays[name] for name in _NPZ_ARRAYS)
    if shape.shape != (2,) or shape.tolist() != [_SIDE, _SIDE]:
        raise _not_the_copy(path, f"has image_shape {shape.tolist()}, not [{_SIDE}, {_SIDE}]")
    if packed.dtype != np.uint8 or packed.ndim != 3 or packed.shape[1:] != (_SIDE, _PACKED_WIDTH):
        raise _not_the_copy(
            path,
            f"holds images_packed {packed.dtype} {packed.shape}, expected uint8 "
            f"(N, {_SIDE}, {_PACKED_WIDTH}) (1-bit packed {_SIDE}x{_SIDE} images)",
        )
    if paths.dtype.kind != "U" or paths.shape != (packed.shape[0],):
        raise _not_the_copy(
            path,
            f"holds path {paths.dtype} {paths.shape}, expected one str per image "
            f"({packed.shape[0]})",
        )
    row_of: dict[str, int] = {}
    drawings: dict[tuple[str, str], list[str]] = {}
    for row, member in enumerate(paths.tolist()):
        parts = member.split("/")
        if (
            len(parts) != 4
            or parts[0] != split
            or any(p in ("", ".", "..") or "\\" in p or _is_junk(p) for p in parts)
            or not parts[3].lower().endswith(".png")
        ):
            raise _not_the_copy(
                path,
                f"row {row} has the path {member!r} (expected "
                f"{split}/<Alphabet>/<characterNN>/<XXXX_YY>.png)",
            )
        if member in row_of:
            raise _not_the_copy(path, f"holds {member} twice (rows {row_of[member]} and {row})")
        row_of[member] = row
        drawings.setdefault((parts[1], parts[2]), []).append(parts[3])
    classes, members = _group(split, path, drawings)

    def image(member: str, size: int) -> np.ndarray:
        bits = np.unpackbits(packed[row_of[member]], axis=-1, count=_SIDE)
        return _resize(bits.astype(bool), size)

    listing = _Listing(
        split,
        path,
        classes,
        members,
        image,
        lambda member: f"{path} row {row_of[member]} ({member})",
    )
    _check_totals(listing)
    return listing


def _read_npz(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """The arrays of :data:`_NPZ_ARRAYS` from an .npz's bytes, without ever unpickling.

    An .npz is a zip of .npy files. Its directory is checked first (a foreign archive, a
    member that would inflate to gigabytes), then each array is read with
    ``allow_pickle=False``: an object array (which only a pickle can hold) is refused, never
    loaded.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise _not_the_copy(path, f"is not a readable .npz ({exc})") from exc
    names = {info.filename.removesuffix(".npy") for info in infos}
    missing = [name for name in _NPZ_ARRAYS if name not in names]
    if missing:
        raise _not_the_copy(
            path, f"has no {', '.join(missing)} array (it holds {', '.join(sorted(names))})"
        )
    total = sum(info.file_size for info in infos)
    if total > _NPZ_MAX_BYTES:
        raise _not_the_copy(path, f"would unpack to {total} bytes, far more than Omniglot")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {name: z[name] for name in _NPZ_ARRAYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # ValueError: an object array (needs pickle) or a damaged .npy header; zlib/BadZipFile
        # (bad CRC): damaged compressed data.
        raise _not_the_copy(path, f"is damaged or foreign ({exc})") from exc


# ------------------------------------------------------------------------- decoding and caching


def _decode(listing: _Listing, image_size: int, progress: bool) -> torch.Tensor:
    """Decode every drawing: uint8 ``(n_classes, 20, 1, S, S)``, strokes 255, background 0."""
    out = np.empty((len(listing.members), image_size, image_size), dtype=np.uint8)
    # One process, no pool: measured on this 2-core machine, a 2-process pool did not beat the
    # plain loop (PNG decoding is ~70 us per image, so pickling the bytes and results eats the
    # gain), forking a process that has torch loaded is fragile, and a spawned worker pays ~2 s
    # importing torch. The whole decode takes a few seconds, once per cache key.
    bar = progress_bar(len(listing.members), f"decoding {listing.split}", "img", progress)
    for i, member in enumerate(listing.members):
        try:
            out[i] = listing.image(member, image_size)
        except _BadPng as exc:
            raise DataError(
                f"{listing.where(member)} {exc}; the copy is damaged: replace it with the file "
                f"from the official {listing.split}.zip (or download that again)"
            ) from exc
        bar.update(1)
    bar.close()
    np.subtract(255, out, out=out)  # white background -> 0, black strokes -> 255
    return torch.from_numpy(out).view(len(listing.classes), _DRAWINGS, 1, image_size, image_size)


class _BadPng(Exception):
    """A drawing that is not a valid official PNG; :func:`_decode` adds where it is."""


def _decode_png(blob: bytes, image_size: int) -> np.ndarray:
    """One official PNG resized to uint8 ``(S, S)``, *not yet inverted* (background 255)."""
    try:
        with Image.open(io.BytesIO(blob), formats=["PNG"]) as im:
            if im.size != (_SIDE, _SIDE):
                raise _BadPng(
                    f"is {im.size[0]}x{im.size[1]}, not {_SIDE}x{_SIDE} like every official "
                    "Omniglot image"
                )
            # convert("L") first: Pillow silently resizes mode "1" images with NEAREST whatever
            # filter is asked for, which would alias the strokes.
            gray = im.convert("L").resize((image_size, image_size), _RESAMPLE)
    except (
        OSError,
        SyntaxError,
        ValueError,
        zlib.error,
        EOFError,
        Image.DecompressionBombError,
    ) as exc:
        # Pillow reports broken PNGs as UnidentifiedImageError/OSError ("truncated"),
        # SyntaxError (bad chunk/CRC) or ValueError, depending on where the damage is.
        raise _BadPng(f"is not a readable PNG ({exc})") from exc
    return np.asarray(gray)


def _resize(background: np.ndarray, image_size: int) -> np.ndarray:
    """One bool ``(105, 105)`` image (True = white) resized exactly as :func:`_decode_png` does.

    ``Image.fromarray`` of a bool array is a mode "1" image, the mode of the official PNGs, so
    the same ``convert("L")`` then resize gives the same pixels as decoding the PNG.
    """
    return np.asarray(
        Image.fromarray(background).convert("L").resize((image_size, image_size), _RESAMPLE)
    )


def _cache_key(source: _Source, image_size: int) -> str:
    spec = {
        "format": _CACHE_FORMAT,
        "split": source.split,
        "source": source.digest,
        "image_size": image_size,
        "resample": _RESAMPLE_NAME,
    }
    return cache_key(spec)


def _decode_cached(
    source: _Source, image_size: int, cache: TensorCache, progress: bool
) -> ClassImages:
    """The decoded split from the cache, or decoded now and cached.

    The cache (:mod:`mnemeta.data.cache`) checks the key (it hashes the source's content and the
    preprocessing) and a SHA-256 over the class names and pixels; :func:`_valid_entry` adds that
    the names are as many and as sorted as a valid listing gives and that dtype and shape fit.
    """
    key = _cache_key(source, image_size)
    path = cache.path(f"omniglot-{source.split}-{image_size}px", key)
    hit = cache.read(
        path,
        key,
        tensors=("images",),
        checked=("names",),
        validate=_valid_entry(source.split, image_size),
        stacklevel=3,  # the caller of load_omniglot_background_evaluation
    )
    if hit is not None:
        tensors, meta = hit
        return ClassImages.from_equal_classes(tensors["images"], json.loads(meta["names"]))
    listing = source.listing()
    images = _decode(listing, image_size, progress)
    data = ClassImages.from_equal_classes(images, listing.classes)
    meta = {
        "format": _CACHE_FORMAT,
        "split": source.split,
        "source": str(source.location),  # for people looking at the file; not trusted
        "names": json.dumps(list(data.names)),
    }
    cache.write(path, key, {"images": data.images}, meta, checked=("names",), stacklevel=3)
    return data


def _valid_entry(split: str, image_size: int) -> Validate:
    """The checks of a cached split beyond the cache's own: a valid Omniglot listing of names,
    uint8 pixels of the right shape."""
    n_alphabets, n_classes = _EXPECTED[split]
    expected = (n_classes, _DRAWINGS, 1, image_size, image_size)

    def validate(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str | None:
        try:
            names = json.loads(meta.get("names", "null"))
        except ValueError as exc:
            return f"unreadable: {exc}"
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) and n.count("/") == 1 for n in names)
            or names != sorted(set(names))
            or len(names) != n_classes
            or len({n.split("/")[0] for n in names}) != n_alphabets
        ):
            return "its class names are not a valid Omniglot listing"
        return check_tensor(tensors["images"], torch.uint8, expected)

    return validate
