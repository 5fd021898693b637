"""Latency and scale of the few-shot classifier: classify p50 / p99, add throughput, size, open.

    python benchmarks/classifier_scale.py --data /path/to/clinc150 \
        --out benchmarks/results/classifier_scale.json [--classes 100 10000 100000]

For each number of classes C, a fresh store (packaged all-MiniLM-L6-v2, 384 dimensions) is
filled with C classes × 10 examples through ``FewShotClassifier.add_embeddings``: synthetic unit
vectors (a random centre per class plus noise) stand in for encoded texts, since encoding 10⁶
utterances would measure MiniLM, not the store. Then, as a user's process would see it:

* ``add``: examples committed per second in batches of 10,000 (the store's transaction, the
  FAISS index and the class table), then one ``calibrate``; and single adds of one new class
  with 10 real utterances *including encoding* (what ``mnemeta classes add`` costs a user);
* ``open``: ``FewShotClassifier.open`` plus its first refresh (reading every record);
* ``classify``: one real CLINC150 test utterance at a time, encoding included (MiniLM on the
  CPU, 1 thread unless OMP_NUM_THREADS says otherwise), 300 queries after 20 warm-up ones:
  p50 / p99 / mean, and the same without encoding (scoring against the C prototypes only);
* ``disk``: the folder's size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import header
from mnemeta.classifier import FewShotClassifier
from mnemeta.classifier.calibration import unit
from mnemeta.data.text import read_clinc150
from mnemeta.store.maintenance import disk_bytes

PER_CLASS = 10
BATCH = 10_000


def percentile(ms: list[float], q: float) -> float:
    s = sorted(ms)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def timings(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(ms, 0.5), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "n": len(ms),
    }


def one_size(classes: int, queries: list[str], adds: list[str], work: Path) -> dict[str, Any]:
    path = work / f"store_{classes}"
    shutil.rmtree(path, ignore_errors=True)
    out: dict[str, Any] = {"classes": classes, "examples": classes * PER_CLASS}
    clf = FewShotClassifier.create(path, use_names=False)
    dim = clf.memory.dim
    g = torch.Generator().manual_seed(classes)
    t0 = time.perf_counter()
    rows = 0
    for start in range(0, classes, BATCH // PER_CLASS):
        cs = range(start, min(classes, start + BATCH // PER_CLASS))
        centres = unit(torch.randn(len(cs), dim, generator=g))
        z = centres.repeat_interleave(PER_CLASS, 0)
        z = unit(z + 0.35 * torch.randn(z.shape, generator=g) / dim**0.5 * 4)
        labels = [f"class{c:06d}" for c in cs for _ in range(PER_CLASS)]
        items = [f"{label} #{i % PER_CLASS}" for i, label in enumerate(labels)]
        clf.add_embeddings(z, items, labels, recalibrate=False)
        rows += len(items)
    bulk = time.perf_counter() - t0
    out["bulk_add"] = {"seconds": round(bulk, 2), "examples_per_s": round(rows / bulk, 1)}
    t0 = time.perf_counter()
    cal = clf.calibrate()
    out["calibrate_s"] = round(time.perf_counter() - t0, 3)
    out["threshold"] = None if cal is None else cal.as_dict()
    # What a user pays to add one class of 10 utterances, encoding included (5 classes).
    ms = []
    for j in range(5):
        texts = adds[j * PER_CLASS : (j + 1) * PER_CLASS]
        t0 = time.perf_counter()
        clf.add(texts, [f"new{j}"] * len(texts))
        ms.append(1000 * (time.perf_counter() - t0))
    out["add_one_class_of_10_ms"] = timings(ms)
    clf.close()
    out["disk_bytes"] = disk_bytes(path)

    t0 = time.perf_counter()
    clf = FewShotClassifier.open(path, read_only=True)
    opened = time.perf_counter() - t0
    clf.refresh()
    out["open_s"] = {
        "open": round(opened, 3),
        "with_first_refresh": round(time.perf_counter() - t0, 3),
    }
    clf.encoder.encode(["warm up"])  # loads MiniLM: a one-off, reported apart
    for q in queries[:20]:
        clf.predict([q])
    full, scoring = [], []
    for q in queries[20:]:
        t0 = time.perf_counter()
        clf.predict([q])
        full.append(1000 * (time.perf_counter() - t0))
        z = unit(clf.encoder.encode([q]))
        t0 = time.perf_counter()
        clf.refresh()
        (z @ clf._prototypes().vectors.T).topk(3, dim=1)
        scoring.append(1000 * (time.perf_counter() - t0))
    out["classify_with_encoding"] = timings(full)
    out["classify_scoring_only"] = timings(scoring)
    clf.close()
    shutil.rmtree(path, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="CLINC150 folder (default: $MNEMETA_DATA/clinc150)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--classes", type=int, nargs="+", default=[100, 10_000, 100_000])
    ap.add_argument("--work", type=Path, help="where the stores are built (default: a temp dir)")
    args = ap.parse_args()
    data = read_clinc150(args.data)
    test = list(data.splits["test"].texts)
    queries = test[::13][:320]
    adds = list(data.splits["train"].texts[:50])
    work = args.work or Path(tempfile.mkdtemp(prefix="classifier_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {**header(), "threads": torch.get_num_threads(), "sizes": []}
    for c in args.classes:
        result = one_size(c, queries, adds, work)
        print(json.dumps(result), flush=True)
        record["sizes"].append(result)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
