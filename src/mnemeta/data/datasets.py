"""The data sets the CLI can load, by name (``data.dataset``), and the ``[data]`` section.

Each entry's loader returns ``{split name: ClassImages}`` (episodic data sets) or nothing at all
for generated sequence tasks, whose settings live in the ``[sequence]`` section. A new data set
is a module with its loader and one ``DATASETS.register`` call here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnemeta.checks import checked
from mnemeta.data.classes import ClassImages
from mnemeta.registry import DATASETS, DatasetSpec


@dataclass
class DataConfig:
    dataset: str = "omniglot"  # see `mnemeta list`; glyphs is synthetic and needs no download
    root: str = ""  # the data folder; empty: $MNEMETA_DATA/omniglot (unused by generated data)
    # vinyals: 1200/423 characters x 4 rotations (Vinyals et al. 2016); lake: background/evaluation
    split: str = "vinyals"
    image_size: int = checked(28, ge=1)  # side of the square images: the papers' 28x28 for Omniglot
    download: bool = False  # fetch the official zips if the data is missing
    cache_dir: str = ""  # where preprocessed tensors are cached; empty: next to the data


def _omniglot(cfg: DataConfig, progress: bool) -> dict[str, ClassImages]:
    from mnemeta.data.omniglot import find_omniglot_root, load_omniglot

    return load_omniglot(
        find_omniglot_root(cfg.root or None),
        split=cfg.split,
        image_size=cfg.image_size,
        cache_dir=cfg.cache_dir or None,
        download=cfg.download,
        progress=progress,
    )


def _glyphs(cfg: DataConfig, progress: bool) -> dict[str, ClassImages]:
    from mnemeta.data.glyphs import glyph_splits

    return glyph_splits(n_train=400, n_val=50, n_test=150, image_size=cfg.image_size)


def _generated(cfg: DataConfig, progress: bool) -> dict[str, Any]:
    return {}


DATASETS.register(
    DatasetSpec(
        "omniglot",
        DataConfig,
        "Omniglot (Lake et al. 2015): 1,623 handwritten characters, 20 drawings each",
        load=_omniglot,
    )
)
DATASETS.register(
    DatasetSpec(
        "glyphs",
        DataConfig,
        "synthetic glyphs generated on the fly: 600 classes, no download",
        load=_glyphs,
    )
)
DATASETS.register(
    DatasetSpec(
        "copy",
        DataConfig,
        "the NTM copy task's random bit sequences ([sequence] section), generated",
        load=_generated,
        kind="sequences",
    )
)
