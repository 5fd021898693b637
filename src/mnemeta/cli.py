"""``mnemeta``: train, evaluate, list presets, run the demo.

User errors (:class:`MnemetaError`, a bad flag, an OS error such as a full disk) print one
line, ``error: <what>; <fix>``, and exit 2; ``--debug`` shows the traceback instead. A training
run stopped by Ctrl-C or ``kill`` checkpoints first and exits 130 or 143 with the command that
continues it. Output into a closed pipe (``mnemeta list | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from mnemeta.errors import ConfigError, MnemetaError, TrainingInterrupted

if TYPE_CHECKING:
    from mnemeta.config import Config

DEMO_STEPS = 8000  # about a minute on 2 CPU cores; the paper's 70,000 take ~5 min


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader went away (`mnemeta list | head -2`): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TrainingInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            "error: aborted; files written before are intact (checkpoints are written "
            "atomically): continue a training run with mnemeta train --resume RUN_FOLDER",
            file=sys.stderr,
        )
        return 130
    except (MnemetaError, OSError) as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    if isinstance(e, MnemetaError):
        return str(e)
    assert isinstance(e, OSError)
    # An OS error the code did not foresee (a full disk while writing metrics, a folder that
    # vanished): the OS's reason and the file, which is what a user can act on.
    reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    where = f": {e.filename}" if e.filename else ""
    return f"{reason}{where}; fix the file or folder (or free space) and run again"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the usage, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def _at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expects {what}, got {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mnemeta", description="Memory-based meta-learning: train, evaluate, reproduce."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="meta-train a preset or a .toml config")
    p.add_argument(
        "config",
        nargs="?",
        help="preset name (see `mnemeta list`) or path to a .toml file; optional with --resume "
        "(a resumed run uses the config its checkpoint holds)",
    )
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
        metavar="RUN",
        help="continue a run, with its own config: a run folder or its checkpoint.pt (default: "
        "the run folder of --out or of the preset); --set may change only budgets, logging, "
        "evaluation, device and data location",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the run folder (its files are removed once the new "
        "run has started)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--out", help="run folder (default: runs/<name>)")
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
    p.add_argument("checkpoint", help="a checkpoint.pt, or the run folder that holds it")
    p.add_argument(
        "--episodes",
        type=_at_least(1, "a positive integer"),
        help="test episodes (default: the run's eval.episodes, 1000 in the presets); for a "
        "meta-RL checkpoint, the held-out tasks",
    )
    p.add_argument(
        "--ways",
        type=_at_least(2, "an integer of at least 2"),
        help="classes per episode (default: the run's eval.ways)",
    )
    p.add_argument(
        "--shots",
        type=_at_least(1, "a positive integer"),
        help="labelled examples per class (default: the run's eval.shots)",
    )
    p.add_argument(
        "--queries",
        type=_at_least(1, "a positive integer"),
        help="examples per class to classify (default: the run's eval.queries)",
    )
    p.add_argument(
        "--batch-size",
        type=_at_least(1, "a positive integer"),
        help="episodes per forward pass (default: the run's eval.batch_size); lower it if "
        "memory runs short; the result does not depend on it",
    )
    p.add_argument("--split", help="split to draw episodes from (default: the config's eval.split)")
    p.add_argument("--seed", type=int, help="seed of the fixed episodes (default: the run's)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the run's device, auto)")
    p.add_argument("--data", help="dataset root folder, if it moved since training")
    p.add_argument(
        "--out",
        help="write the result JSON to this file, or into this folder (default: beside the "
        "checkpoint)",
    )
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
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
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
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
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
    from mnemeta.cli_classes import add_classes_parser

    add_classes_parser(sub)
    return parser


def _train(args: argparse.Namespace) -> int:
    from mnemeta.config import load_config

    overrides = list(args.overrides)
    for flag, key in ((args.device, "device"), (args.out, "out_dir"), (args.data, "data.root")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it; give one")
    if args.config is None and args.resume is None:
        raise ConfigError(
            "mnemeta train needs a preset or a .toml file (`mnemeta list` shows the presets), "
            "or --resume RUN_FOLDER"
        )
    resume = None
    if args.resume is not None:
        config, resume = _resumed_config(args, overrides)
    else:
        config = load_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    from mnemeta.recipes.build import learner_spec

    run = config
    if learner_spec(run).recipe == "rl":
        from mnemeta.recipes.rl_train import rl_train

        rl_train(run, resume=resume, progress=args.progress, overwrite=args.overwrite)
        if not _main_rank():
            return 0  # under torchrun, rank 0 prints the result
        print((run.run_dir / "result.md").read_text().strip())
        print(f"results, checkpoint, curves and plots: {run.run_dir}/")
        return 0
    if learner_spec(run).recipe == "sequence":
        from mnemeta.recipes.sequence_train import sequence_train

        sequence_train(run, resume=resume, progress=args.progress, overwrite=args.overwrite)
        if not _main_rank():
            return 0  # under torchrun, rank 0 prints the result
        print((run.run_dir / "result.md").read_text().strip())
        print(f"results, checkpoint and curves: {run.run_dir}/")
        return 0
    from mnemeta.recipes.meta_train import meta_train

    summary = meta_train(run, resume=resume, progress=args.progress, overwrite=args.overwrite)
    if not _main_rank():
        return 0  # under torchrun, rank 0 prints the result
    test, seconds = summary["test"], summary["seconds"]
    resumed = summary["resumed_from_step"] is not None
    print(
        f"{run.name}: {test['ways']}-way {test['shots']}-shot {test['split']} accuracy "
        f"{test['mean']:.2f} ± {test['ci95']:.2f}% over {test['episodes']} episodes "
        f"({seconds['train_all_runs']:.0f} s training"
        + (f", {seconds['train']:.0f} s of it in this session" if resumed else "")
        + f", on {summary['device_name']})"
    )
    print(f"results, checkpoint and curves: {run.run_dir}/")
    return 0


def _resumed_config(args: argparse.Namespace, overrides: list[str]) -> tuple[Config, str]:
    """The config a resumed run continues with (its checkpoint's) and its checkpoint's path."""
    from mnemeta.config import load_config
    from mnemeta.recipes.resume import find_checkpoint, resume_config

    run_dir = Path(args.out) if args.out else None
    if run_dir is None and args.config is not None and not args.resume:
        run_dir = load_config(args.config).run_dir
    checkpoint = find_checkpoint(args.resume, run_dir)
    config, step = resume_config(checkpoint, overrides)
    if args.out is None:
        config.out_dir = str(checkpoint.parent)  # the run continues where its checkpoint is
    if not _main_rank():
        return config, str(checkpoint)
    print(
        f"resuming {config.run_dir} at step {step} of {config.train.steps}, with the run's own "
        "config" + (f" and --set {', '.join(args.overrides)}" if args.overrides else ""),
        flush=True,
    )
    return config, str(checkpoint)


def _main_rank() -> bool:
    """Whether this process prints: rank 0 under torchrun, or the one process."""
    from mnemeta.recipes.distributed import is_main_process

    return is_main_process()


def _evaluate(args: argparse.Namespace) -> int:
    common = dict(
        episodes=args.episodes,
        shots=args.shots,
        queries=args.queries,
        split=args.split,
        seed=args.seed,
        device=args.device,
        data_root=args.data,
        batch_size=args.batch_size,
        out=args.out,
    )
    from mnemeta.recipes.rl_evaluate import is_rl_checkpoint

    if is_rl_checkpoint(args.checkpoint):
        from mnemeta.recipes.rl_evaluate import evaluate_rl_checkpoint

        text, out = evaluate_rl_checkpoint(
            args.checkpoint,
            tasks=args.episodes,
            seed=args.seed,
            device=args.device,
            out=args.out,
            unsupported={
                "--ways": args.ways,
                "--shots": args.shots,
                "--queries": args.queries,
                "--split": args.split,
                "--batch-size": args.batch_size,
                "--memory": args.memory,
                "--data": args.data,
            },
        )
        if _main_rank():  # under torchrun, rank 0 prints the result
            print(text)
            print(f"written to {out}")
        return 0
    if args.memory:
        from mnemeta.recipes.evaluate_with_memory import evaluate_with_memory

        result, out = evaluate_with_memory(args.checkpoint, args.memory, **common)
    else:
        from mnemeta.recipes.evaluate_checkpoint import evaluate_checkpoint

        result, out = evaluate_checkpoint(args.checkpoint, ways=args.ways, **common)
    if not _main_rank():
        return 0  # under torchrun, rank 0 prints the result
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
        recipe = LEARNERS.get(c.model.algorithm).recipe
        if recipe == "rl":
            task = f"{c.eval.episodes} held-out tasks"
        elif recipe == "sequence":
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
        print(f"  {b.name:12s} {b.summary}; keys: {', '.join(b.key_names()) or 'none'}")
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
    from mnemeta.recipes.run_folder import RunFolder

    with RunFolder(Path(args.out), overwrite=args.overwrite) as folder:
        folder.begin()
        result = run_sinusoid(settings, Path(args.out), progress=progress)
    print(
        "\nquery MSE after fine-tuning on K points (mean ± 95% CI over "
        f"{settings.eval_tasks} test tasks)"
    )
    print(f"{'method':12s} {'K':>3s} " + " ".join(f"{f'{n} steps':>15s}" for n in (0, 1, 5, 10)))
    for row in result["results"]:
        cells = " ".join(_mse_cell(row, n) for n in (0, 1, 5, 10))
        print(f"{row['method']:12s} {row['shots']:3d} {cells}")
    print(f"\n{result['seconds']['total']:.0f} s in all; plot: {result['plot']}")
    return 0


def _mse_cell(row: dict[str, object], n: int) -> str:
    """One table cell: the mean ± CI, or "diverged" where the result holds null for it."""
    mse, ci = row[f"mse_{n}"], row[f"ci95_{n}"]
    if not isinstance(mse, float) or not isinstance(ci, float):
        return f"{'diverged':>15s}"
    return f"{mse:7.3f} ± {ci:5.3f}"


if __name__ == "__main__":
    sys.exit(main())
