"""Tables and plots of the memory-augmented networks' runs, beside their baselines and papers.

    python benchmarks/memory_networks_report.py copy --ntm runs/ntm_copy --lstm runs/lstm_copy \
        --out benchmarks/results/ntm_copy
    python benchmarks/memory_networks_report.py omniglot --mann runs/mann_omniglot_5class \
        --lstm runs/lstm_omniglot_5class --out benchmarks/results/mann_omniglot

Each reads the run folders `mnemeta train` wrote (result.json, metrics.jsonl) and writes
``<out>.md``, ``<out>.json`` and ``<out>.png``. It trains nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from common import header

# Santoro et al. (2016), Table 1, 5 classes, one-hot labels: accuracy (%) at instances
# 1, 2, 3, 4, 5, 10.
PAPER_5CLASS = {
    "MANN (paper)": [36.4, 82.8, 91.0, 92.6, 94.9, 98.1],
    "LSTM (paper)": [24.4, 49.5, 55.3, 61.0, 63.6, 62.5],
    "Human (paper)": [34.5, 57.3, 70.1, 71.8, 81.4, 92.4],
}
INSTANCES = ["1", "2", "3", "4", "5", "10"]
PRESET_STEPS = 12500  # train.steps of mann_omniglot_5class and lstm_omniglot_5class


def _load(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    result = json.loads((run / "result.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return result, rows


def _config(run: Path) -> dict[str, Any]:
    return json.loads((run / "config.json").read_text())


def _command(run: Path, loaded: dict[str, Any]) -> str:
    """The command that trains ``run``, and how its steps were split if it was resumed."""
    config = _config(run)
    text = f"`mnemeta train {config['name']} --data <omniglot>"
    if config["train"]["steps"] != PRESET_STEPS:
        text += f" --set train.steps={config['train']['steps']}"
    text += "`"
    result = json.loads((run / "result.json").read_text())
    if result.get("resumed_from_step"):
        text += f" (continued with `--resume` from step {result['resumed_from_step']})"
    return text


def copy_report(args: argparse.Namespace) -> None:
    runs = {"NTM": Path(args.ntm), "LSTM": Path(args.lstm)}
    loaded = {name: _load(run) for name, run in runs.items()}
    fig, (ax_curve, ax_len) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, (result, rows) in loaded.items():
        ax_curve.plot([r["sequences"] for r in rows], [r["bits_wrong"] for r in rows], label=name)
        lengths = result["test"]["bits_wrong_by_length"]
        xs = [int(k) for k in lengths]
        ax_len.errorbar(
            xs,
            [v["bits_wrong"] for v in lengths.values()],
            yerr=[v["ci95"] for v in lengths.values()],
            fmt="o-",
            capsize=3,
            label=name,
        )
    ax_curve.set(
        xlabel="training sequences",
        ylabel="bits wrong per sequence",
        yscale="symlog",
        title="learning curve (training lengths 1-20)",
    )
    ax_len.axvline(20, color="grey", ls=":", label="longest training length")
    ax_len.set(
        xlabel="sequence length", ylabel="bits wrong per sequence", title="test error by length"
    )
    for ax in (ax_curve, ax_len):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(args.out)
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    weights = runs["NTM"] / "copy_weights.png"
    if weights.is_file():
        shutil.copyfile(weights, out.parent / f"{out.name}_weights.png")

    lines = [
        "# NTM on the copy task (Graves et al. 2014, §4.1) beside an LSTM",
        "",
        f"- machine: {loaded['NTM'][0]['device_name']}; report written {header()['date']}",
        "- commands: `mnemeta train ntm_copy` and `mnemeta train lstm_copy` (then "
        f"`{header()['command']}`)",
        "",
        "Bits wrong per sequence (outputs thresholded at 0.5; mean ± 95% CI over "
        f"{loaded['NTM'][0]['test']['sequences_per_length']} test sequences per length; "
        "training lengths 1-20):",
        "",
    ]
    lengths = list(loaded["NTM"][0]["test"]["bits_wrong_by_length"])
    lines.append(
        "| model | params | sequences | train time | lengths 1-20 | "
        + " | ".join(f"L={n}" for n in lengths)
        + " |"
    )
    lines.append("|---" * (5 + len(lengths)) + "|")
    summary: dict[str, Any] = {"header": header(), "runs": {}}
    for name, (result, _) in loaded.items():
        test = result["test"]
        within = test["bits_wrong_lengths_1_to_max"]
        cells = " | ".join(
            f"{v['bits_wrong']:.2f} ± {v['ci95']:.2f}"
            for v in test["bits_wrong_by_length"].values()
        )
        lines.append(
            f"| {name} | {result['parameters']:,} | {result['sequences']:,} | "
            f"{result['seconds']['train'] / 60:.1f} min | "
            f"{within['mean']:.3f} ± {within['ci95']:.3f} | {cells} |"
        )
        summary["runs"][name] = result
    lines += [
        "",
        f"![learning curves and error by length]({out.name}.png)",
        "",
        f"![NTM read and write weights over one sequence]({out.name}_weights.png)",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


def omniglot_report(args: argparse.Namespace) -> None:
    runs = {"MANN (mnemeta)": Path(args.mann), "LSTM (mnemeta)": Path(args.lstm)}
    if args.nowipe:
        runs["MANN, no wipe (mnemeta)"] = Path(args.nowipe)
    for item in args.more:
        label, _, path = item.partition("=")
        runs[label] = Path(path)
    loaded = {name: _load(run) for name, run in runs.items() if (run / "result.json").is_file()}
    fig, (ax_inst, ax_curve) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [int(i) for i in INSTANCES]
    for name, values in PAPER_5CLASS.items():
        ax_inst.plot(xs, values, "x--", alpha=0.6, label=name)
    for name, (result, _) in loaded.items():
        acc = result["test"]["accuracy_by_instance"]
        ax_inst.errorbar(
            xs,
            [acc[i]["accuracy"] for i in INSTANCES],
            yerr=[acc[i]["ci95"] for i in INSTANCES],
            fmt="o-",
            capsize=3,
            label=name,
        )
    ax_inst.set(
        xlabel="presentation of the class",
        ylabel="accuracy (%)",
        title="test episodes (held-out characters)",
    )
    # The first two runs hold the whole training history (continuations append to it).
    for name, (_, rows) in list(loaded.items())[:2]:
        ax_curve.plot(
            [r["sequences"] / 1000 for r in rows],
            [100 * r["accuracy_2nd"] for r in rows],
            label=name,
        )
    ax_curve.set(
        xlabel="training episodes (thousands)",
        ylabel="2nd-instance accuracy (%)",
        title="training curve",
    )
    for ax in (ax_inst, ax_curve):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)

    first = next(iter(loaded.values()))[0]
    lines = [
        "# MANN with LRUA on Omniglot, Santoro et al.'s protocol (5 classes, one-hot labels)",
        "",
        f"- machine: {first['device_name']}; report written {header()['date']}",
        "- commands: " + "; ".join(_command(r, loaded) for r in runs.values()),
        f"- test: {first['test']['episodes']} episodes of 5 held-out classes x 10 drawings "
        "(Vinyals test characters, 20x20), accuracy (%) at each presentation of a class, "
        "mean ± 95% CI "
        "over episodes",
        "",
        "| model | episodes trained | train time | "
        + " | ".join(
            f"{i}{'st' if i == '1' else 'nd' if i == '2' else 'rd' if i == '3' else 'th'}"
            for i in INSTANCES
        )
        + " |",
        "|---" * (3 + len(INSTANCES)) + "|",
    ]
    summary: dict[str, Any] = {"header": header(), "paper": PAPER_5CLASS, "runs": {}}
    for name, (result, _) in loaded.items():
        acc = result["test"]["accuracy_by_instance"]
        cells = " | ".join(f"{acc[i]['accuracy']:.1f} ± {acc[i]['ci95']:.1f}" for i in INSTANCES)
        lines.append(
            f"| {name} | {result['sequences']:,} | "
            f"{result['seconds']['train'] / 60:.0f} min | {cells} |"
        )
        summary["runs"][name] = result
    for name, values in PAPER_5CLASS.items():
        trained = "—" if name.startswith("Human") else "100,000"
        lines.append(f"| {name} | {trained} | — | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines += ["", f"![per-instance accuracy and training curve]({out.name}.png)"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="task", required=True)
    p = sub.add_parser("copy")
    p.add_argument("--ntm", default="runs/ntm_copy")
    p.add_argument("--lstm", default="runs/lstm_copy")
    p.add_argument("--out", default="benchmarks/results/ntm_copy")
    p.set_defaults(func=copy_report)
    p = sub.add_parser("omniglot")
    p.add_argument("--mann", default="runs/mann_omniglot_5class")
    p.add_argument("--lstm", default="runs/lstm_omniglot_5class")
    p.add_argument(
        "--nowipe", default="", help="run folder of mann_omniglot_5class_nowipe, if trained"
    )
    p.add_argument(
        "--more",
        action="append",
        default=[],
        metavar="LABEL=RUN_DIR",
        help="another run to show, e.g. a longer continuation (repeatable)",
    )
    p.add_argument("--out", default="benchmarks/results/mann_omniglot")
    p.set_defaults(func=omniglot_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
