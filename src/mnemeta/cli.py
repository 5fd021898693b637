"""``mnemeta``: train, evaluate, list presets, run the demo.

User errors (:class:`MnemetaError`) print one line, ``error: <what> ; <fix>``, and exit 2.
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mnemeta.errors import MnemetaError

DEMO_STEPS = 8000  # about a minute on 2 CPU cores; the paper's 70,000 take ~5 min


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except MnemetaError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnemeta", description="Memory-based meta-learning: train, evaluate, reproduce."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="meta-train a preset or a .toml config")
    p.add_argument("config", help="preset name (see `mnemeta list`) or path to a .toml file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.steps=100 (repeatable)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: <run dir>/checkpoint.pt)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--out", help="run directory (default: runs/<name>)")
    p.add_argument("--data", help="dataset root folder (same as --set data.root=...)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on fixed test episodes")
    p.add_argument("checkpoint")
    p.add_argument("--episodes", type=int)
    p.add_argument("--ways", type=int)
    p.add_argument("--shots", type=int)
    p.add_argument("--queries", type=int)
    p.add_argument("--split", help="split to draw episodes from (default: the config's eval.split)")
    p.add_argument("--seed", type=int, help="seed of the fixed episodes")
    p.add_argument("--device")
    p.add_argument("--data", help="dataset root folder, if it moved since training")
    p.add_argument("--out", help="write the result JSON here (default: beside the checkpoint)")
    p.add_argument(
        "--memory",
        metavar="PATH",
        help="adapt with, and write each episode to, the task memory at PATH (MAML family)",
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("list", help="list presets, datasets and algorithms")
    p.set_defaults(func=_list)

    p = sub.add_parser("demo", help="MAML on sinusoids: a 2-minute run that needs no download")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        help=f"meta-training steps (default {DEMO_STEPS}; the paper: 70000)",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=_demo)

    p = sub.add_parser("sinusoid", help="the full MAML sinusoid experiment (Finn et al. §5.1)")
    p.add_argument("--out", default="runs/sinusoid", help="run directory (default: runs/sinusoid)")
    p.add_argument("--steps", type=int, default=70_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the meta-loss (faster steps after ~15 s of compilation)",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(func=_demo)

    from mnemeta.cli_memory import add_memory_parser

    add_memory_parser(sub)
    return parser


def _train(args: argparse.Namespace) -> int:
    from mnemeta.config import load_config

    overrides = list(args.overrides)
    for flag, key in ((args.device, "device"), (args.out, "out_dir"), (args.data, "data.root")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    config = load_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    resume = None
    if args.resume is not None:
        resume = args.resume or str(config.run_dir / "checkpoint.pt")
    from mnemeta.recipes.build import learner_spec

    if learner_spec(config).recipe == "sequence":
        from mnemeta.recipes.sequence_train import sequence_train

        sequence_train(config, resume=resume, progress=args.progress)
        print((config.run_dir / "result.md").read_text().strip())
        print(f"results, checkpoint and curves: {config.run_dir}/")
        return 0
    from mnemeta.recipes.meta_train import meta_train

    summary = meta_train(config, resume=resume, progress=args.progress)
    test = summary["test"]
    print(
        f"{config.name}: {test['ways']}-way {test['shots']}-shot {test['split']} accuracy "
        f"{test['mean']:.2f} ± {test['ci95']:.2f}% over {test['episodes']} episodes "
        f"({summary['seconds']['train']:.0f} s training on {summary['device_name']})"
    )
    print(f"results, checkpoint and curves: {config.run_dir}/")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    common = dict(
        episodes=args.episodes,
        shots=args.shots,
        queries=args.queries,
        split=args.split,
        seed=args.seed,
        device=args.device,
        data_root=args.data,
        out=args.out,
    )
    if args.memory:
        from mnemeta.recipes.evaluate_with_memory import evaluate_with_memory

        result, out = evaluate_with_memory(args.checkpoint, args.memory, **common)
    else:
        from mnemeta.recipes.evaluate_checkpoint import evaluate_checkpoint

        result, out = evaluate_checkpoint(args.checkpoint, ways=args.ways, **common)
    print(
        f"{result.ways}-way {result.shots}-shot {result.split}: {result.mean:.2f} ± "
        f"{result.ci95:.2f}% over {result.episodes} episodes"
    )
    print(f"written to {out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from mnemeta.config import load_config, preset_names
    from mnemeta.registry import BACKBONES, DATASETS, LEARNERS

    print("presets (mnemeta train NAME):")
    for name in preset_names():
        c = load_config(name)
        if LEARNERS.get(c.model.algorithm).recipe == "sequence":
            task = (
                f"copy, lengths {c.sequence.min_length}-{c.sequence.max_length}"
                if c.data.dataset == "copy"
                else f"{c.sequence.classes}-class episodes of {c.sequence.instances} each"
            )
        else:
            task = f"test {c.eval.ways}-way {c.eval.shots}-shot"
        print(
            f"  {name:34s} {c.model.algorithm:11s} {c.data.dataset:9s} {task}, "
            f"{c.train.steps} steps"
        )
    print("\nlearners (model.algorithm; its keys go in [model]):")
    for spec in LEARNERS:
        print(f"  {spec.name:12s} {spec.summary}")
        print(f"  {'':12s} keys: {', '.join(k for k in spec.key_names() if k != 'algorithm')}")
    print("\nbackbones (model.backbone; its keys go in [backbone]):")
    for b in BACKBONES:
        print(f"  {b.name:12s} {b.summary}; keys: {', '.join(b.key_names())}")
    print("\ndatasets (data.dataset):")
    for d in DATASETS:
        print(f"  {d.name:12s} {d.summary}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mnemeta.recipes.sinusoid import SinusoidSettings, run_sinusoid

    settings = SinusoidSettings(
        steps=args.steps, seed=getattr(args, "seed", 0), compile=getattr(args, "compile", False)
    )
    if args.command == "demo":
        print(
            f"mnemeta demo: MAML on sinusoid regression (Finn et al. 2017, §5.1), "
            f"{settings.steps} meta-training steps (the paper: 70,000), beside a network "
            "pretrained on all tasks; no download",
            flush=True,
        )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = run_sinusoid(settings, Path(args.out), progress=progress)
    print(
        "\nquery MSE after fine-tuning on K points (mean ± 95% CI over "
        f"{settings.eval_tasks} test tasks)"
    )
    print(f"{'method':12s} {'K':>3s} " + " ".join(f"{f'{n} steps':>15s}" for n in (0, 1, 5, 10)))
    for row in result["results"]:
        cells = " ".join(f"{row[f'mse_{n}']:7.3f} ± {row[f'ci95_{n}']:5.3f}" for n in (0, 1, 5, 10))
        print(f"{row['method']:12s} {row['shots']:3d} {cells}")
    print(f"\n{result['seconds']['total']:.0f} s in all; plot: {result['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
