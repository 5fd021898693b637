"""The few-shot classifier on images: Omniglot's 659 evaluation characters as new classes.

    python benchmarks/classifier_omniglot.py --checkpoint RUN/checkpoint.pt \
        --images OMNIGLOT/images_evaluation --out benchmarks/results/classifier_omniglot.json

The encoder is a mnemeta checkpoint (a Conv-4 ProtoNet trained on the 964 background characters
only, so every evaluation character is new to it); the images are the official 105×105 PNGs
(``../shared/data/omniglot/materialize.py OUT --split images_evaluation``), read by the
classifier as it reads a user's (grey, resized to 28×28, inverted to bright strokes). For each
seed and k ∈ {1, 5}: the characters in a seeded order, each added from k of its 20 drawings
(seeded); after 20, 50, 100, 200, 400 and 659 classes, the other 20 − k drawings of the classes
present are classified (top-1 accuracy, no rejection). Mean ± 95% CI over seeds. Beside the
classifier's cosine prototypes, at 659 classes: squared-Euclidean prototypes (the metric the
ProtoNet was trained with), to say what the cosine costs.

Each image is encoded once per run (the same vectors the classifier's encoder gives).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import MemoEncoder, header
from mnemeta.classifier import CheckpointEncoder, FewShotClassifier
from mnemeta.stats import mean_ci95

STEPS = (20, 50, 100, 200, 400, 659)
SHOTS = (1, 5)


def summary(values: list[float]) -> dict[str, float]:
    mean, ci = mean_ci95(torch.tensor(values, dtype=torch.float64))
    return {"mean": round(mean, 2), "ci95": round(ci, 2), "n": len(values)}


def one_run(
    characters: dict[str, list[str]], enc: MemoEncoder, k: int, seed: int, work: Path
) -> dict[str, float]:
    rng = random.Random(seed)
    order = sorted(characters)
    rng.shuffle(order)
    support: dict[str, list[str]] = {}
    queries: dict[str, list[str]] = {}
    for c in order:
        files = list(characters[c])
        rng.shuffle(files)
        support[c], queries[c] = files[:k], files[k:]
    path = work / f"k{k}_s{seed}"
    shutil.rmtree(path, ignore_errors=True)
    out: dict[str, float] = {}
    with FewShotClassifier.create(path, enc) as clf:  # type: ignore[arg-type]
        done = 0
        for step in STEPS:
            new = order[done:step]
            t0 = time.perf_counter()
            clf.add([f for c in new for f in support[c]], [c for c in new for _ in support[c]])
            out[f"add_seconds_{step}"] = time.perf_counter() - t0
            done = step
            files = [f for c in order[:step] for f in queries[c]]
            truth = [c for c in order[:step] for _ in queries[c]]
            s, labels = clf.scores(files)
            pred = [labels[i] for i in s.argmax(dim=1).tolist()]
            out[str(step)] = 100 * sum(p == t for p, t in zip(pred, truth, strict=True)) / len(pred)
        # The metric the ProtoNet was trained with, on the same examples (raw embeddings).
        names = clf.labels
        protos = torch.stack([enc.encode(support[c]).mean(0) for c in names])
        zq = enc.encode(files)
        d = torch.cdist(zq, protos).argmin(dim=1).tolist()
        out["sqeuclidean_659"] = (
            100 * sum(names[i] == t for i, t in zip(d, truth, strict=True)) / len(d)
        )
    shutil.rmtree(path, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="the images_evaluation folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    characters = {
        f"{d.parent.name}/{d.name}": sorted(str(f) for f in d.glob("*.png"))
        for d in sorted(args.images.glob("*/character*"))
    }
    if len(characters) != 659:
        raise SystemExit(f"expected 659 characters under {args.images}, found {len(characters)}")
    enc = MemoEncoder(CheckpointEncoder(args.checkpoint))
    t0 = time.perf_counter()
    enc.encode([f for files in characters.values() for f in files])
    encode_s = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="classifier_omniglot_"))
    record: dict[str, Any] = {
        **header(),
        "checkpoint": str(args.checkpoint),
        "encode_13180_images_seconds": round(encode_s, 1),
        "accuracy": {},
    }
    raw: dict[str, Any] = {}
    for k in SHOTS:
        runs = [one_run(characters, enc, k, seed, work) for seed in args.seeds]
        raw[f"k{k}"] = runs
        record["accuracy"][f"k{k}"] = {key: summary([r[key] for r in runs]) for key in runs[0]}
        print(json.dumps({f"k{k}": record["accuracy"][f"k{k}"]}), flush=True)
        args.out.write_text(json.dumps(record | {"raw": raw}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
