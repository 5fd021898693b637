"""Plant plausible one-line bugs, one at a time, and check that the test suite catches each.

    python benchmarks/planted_bugs.py [--out benchmarks/results/planted_bugs.json] [--only N ...]

The twelve bugs of issue 19's audit (and a few more), each as an exact text replacement in one
source file. For each: apply it in a scratch copy of the checkout (the working tree is never
touched), run the tests that should catch it (``--tests``, a pytest selection), record which
tests failed, restore. A bug is *caught* when at least one test fails; a replacement whose text
is not found is reported as such (the code moved: update the table), never silently skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import header

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


PLANTS = (
    Plant(
        "inner loop silently first-order (create_graph=False)",
        "src/mnemeta/algorithms/inner_loop.py",
        "create_graph=not first_order)",
        "create_graph=False)",
        ("tests/algorithms",),
    ),
    Plant(
        "memory pull taken at the stepped weights",
        "src/mnemeta/algorithms/inner_optim.py",
        "return ({k: beta * (w - anchor[k]) for k, w in params.items() if k in anchor},), state",
        "return ({k: beta * (w - grads[k] - anchor[k]) for k, w in params.items() "
        "if k in anchor},), state",
        ("tests/algorithms",),
    ),
    Plant(
        "ProtoNet squared distance .sum -> .mean",
        "src/mnemeta/algorithms/protonet.py",
        "(a.unsqueeze(2) - b.unsqueeze(1)).square().sum(dim=-1)",
        "(a.unsqueeze(2) - b.unsqueeze(1)).square().mean(dim=-1)",
        ("tests/algorithms",),
    ),
    Plant(
        "cosine ProtoNet: queries normalised on the wrong axis",
        "src/mnemeta/algorithms/protonet.py",
        "nn.functional.normalize(queries, dim=-1)",
        "nn.functional.normalize(queries, dim=1)",
        ("tests/algorithms",),
    ),
    Plant(
        "LRUA usage: reads summed -> averaged over heads",
        "src/mnemeta/memory/lrua.py",
        "decay * state.usage + read_weights.sum(dim=1)",
        "decay * state.usage + read_weights.mean(dim=1)",
        ("tests/memory",),
    ),
    Plant(
        "LRUA usage decay applied to the reads too",
        "src/mnemeta/memory/lrua.py",
        "usage = decay * state.usage + read_weights.sum(dim=1)",
        "usage = decay * (state.usage + read_weights.sum(dim=1))",
        ("tests/memory",),
    ),
    Plant(
        "LRUA: every least-used row zeroed, not the lowest-usage one",
        "src/mnemeta/memory/lrua.py",
        "least = F.one_hot(state.usage.argmin(dim=-1), state.usage.shape[-1])",
        "least = state.least_used",
        ("tests/memory",),
    ),
    Plant(
        "NTM shift direction reversed",
        "src/mnemeta/memory/addressing.py",
        "- offsets.unsqueeze(1)) % n",
        "+ offsets.unsqueeze(1)) % n",
        ("tests/memory",),
    ),
    Plant(
        "task-memory hits sorted worst-first",
        "src/mnemeta/store/task_memory.py",
        "            out.append(hits)",
        "            out.append(hits[::-1])",
        ("tests/store/test_task_memory.py", "tests/algorithms/test_task_memory_adapt.py"),
    ),
    Plant(
        "learning-rate scheduler state not restored on resume",
        "src/mnemeta/recipes/meta_train.py",
        '        scheduler.load_state_dict(state["scheduler"])',
        "        pass",
        ("tests/recipes",),
    ),
    Plant(
        "Matching Networks FCE softmax on the wrong axis",
        "src/mnemeta/algorithms/matching.py",
        "weights = torch.softmax(h.view(t, q, d) @ g.transpose(1, 2), dim=-1)",
        "weights = torch.softmax(h.view(t, q, d) @ g.transpose(1, 2), dim=1)",
        ("tests/algorithms",),
    ),
    Plant(
        "MAML test-time adaptation with inner_steps instead of eval_inner_steps",
        "src/mnemeta/algorithms/maml.py",
        "steps=self.eval_inner_steps,",
        "steps=self.inner_steps,",
        ("tests/algorithms/test_maml.py", "tests/algorithms/test_references.py"),
    ),
    # Beyond the audit's twelve.
    Plant(
        "sequence recipe: scheduler state not restored on resume",
        "src/mnemeta/recipes/sequence_train.py",
        '        scheduler.load_state_dict(state["scheduler"])',
        "        pass",
        ("tests/recipes",),
    ),
    Plant(
        "a key the learner does not read accepted silently",
        "src/mnemeta/config.py",
        "            raise ConfigError(_unknown_key(config, key, parts[:i], origin))",
        "            return config, '_ignored'",
        ("tests/test_config.py",),
    ),
    Plant(
        "Reptile's inner Adam without bias correction",
        "src/mnemeta/algorithms/inner_optim.py",
        "correction1, correction2 = 1 - b1**t, 1 - b2**t",
        "correction1, correction2 = 1.0, 1.0",
        ("tests/algorithms",),
    ),
)


def run_plant(plant: Plant, python: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mnemeta-plant-") as tmp:
        scratch = Path(tmp) / "repo"
        shutil.copytree(ROOT / "src", scratch / "src")
        shutil.copytree(ROOT / "tests", scratch / "tests")
        shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")
        target = scratch / plant.file
        text = target.read_text()
        if text.count(plant.old) != 1:
            return {
                "bug": plant.name,
                "status": f"not planted: text found {text.count(plant.old)}x",
            }
        target.write_text(text.replace(plant.old, plant.new))
        env = {
            **os.environ,
            "PYTHONPATH": str(scratch / "src"),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *plant.tests]
        argv += ["--no-header", "-rf"]
        proc = subprocess.run(argv, cwd=scratch, env=env, capture_output=True, text=True)
        failed = sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, re.M)))
        caught = proc.returncode != 0 and bool(failed)
        return {
            "bug": plant.name,
            "file": plant.file,
            "tests_run": list(plant.tests),
            "status": "caught" if caught else "NOT caught",
            "failed": failed,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", type=int, nargs="*", help="plant numbers (1-based)")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    chosen = [p for i, p in enumerate(PLANTS, 1) if not args.only or i in args.only]
    # Each plant copies src/ and tests/ afresh: leave them alone while this runs.
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "src", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    rows = []
    for plant in chosen:
        row = run_plant(plant, args.python)
        rows.append(row)
        print(f"{row['status']:10s} {plant.name}: {', '.join(row.get('failed', []))}", flush=True)
    if args.out:
        record = {**header(), "commit": commit, "uncommitted_changes": dirty, "plants": rows}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(r["status"] == "caught" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
