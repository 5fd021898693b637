"""Where a classifier's items come from on the shell: a CSV of texts, folders of images.

Every problem is a one-line :class:`~mnemeta.errors.DataError` naming the file and the fix, raised
before anything is encoded or written.
"""

from __future__ import annotations

from pathlib import Path

from mnemeta.classifier.encoders import IMAGE_SUFFIXES
from mnemeta.errors import DataError


def labelled_images(folder: str | Path) -> tuple[list[str], list[str]]:
    """Image files and labels from ``folder/LABEL/*.png|jpg|jpeg`` (one folder per class).

    Hidden files are skipped; any other file that is not an image, an empty class folder, a
    loose image beside the class folders, or two folders with the same label is an error.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass a folder with one subfolder per class")
    items: list[str] = []
    labels: list[str] = []
    seen: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise DataError(
                f"{entry} is not a class folder; put each class's images in a folder named "
                f"after the class (e.g. {root}/cat/1.png)"
            )
        label = entry.name.strip()
        if label in seen:
            raise DataError(f"{entry} and {seen[label]} name the same class {label!r}; merge them")
        seen[label] = entry
        files = images_in(entry, recursive=False)
        if not files:
            raise DataError(
                f"the class folder {entry} holds no images (.png, .jpg, .jpeg); add some or "
                "remove the folder"
            )
        items += files
        labels += [label] * len(files)
    if not items:
        raise DataError(f"{root} holds no class folders; add one folder of images per class")
    return items, labels


def images_in(folder: str | Path, *, recursive: bool = True) -> list[str]:
    """The image files in ``folder`` (and its subfolders if ``recursive``), sorted.

    A file that is not hidden and not an image is an error, so that a typo is not silently left
    out of a classification.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of images; pass a folder")
    out: list[str] = []
    for entry in sorted(root.rglob("*") if recursive else root.iterdir()):
        if any(part.startswith(".") for part in entry.relative_to(root).parts):
            continue
        if entry.is_dir():
            continue
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{entry} is not a PNG or JPEG image; remove it or move it out of {root}"
            )
        out.append(str(entry))
    return out
