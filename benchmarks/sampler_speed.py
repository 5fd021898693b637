"""Episodes per second of EpisodeSampler on Omniglot-sized data (4800 classes x 20, 28x28).

    python benchmarks/sampler_speed.py [--seconds 5] [--device cpu] \
        [--out benchmarks/results/sampler_speed.json]

The pixels are random (the sampler's speed does not depend on their values), so this runs
without the dataset. Reports float32 episodes (what learners consume) for several meta-batch
sizes; the target is >= 10,000 5-way 1-shot 15-query episodes/s on the 2-core CI CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header
from mnemeta.data.classes import ClassImages
from mnemeta.data.sampler import EpisodeSampler


def rate(sampler: EpisodeSampler, batch: int, seconds: float, sync: bool) -> float:
    sampler.sample(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        b = sampler.sample(batch)
        n += batch
    if sync:
        b.query_x.sum().item()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    images = torch.randint(0, 256, (4800, 20, 1, 28, 28), dtype=torch.uint8)
    data = ClassImages.from_equal_classes(images, [str(i) for i in range(4800)])
    rows = []
    for ways, shots, queries in [(5, 1, 15), (5, 5, 15), (20, 1, 15), (60, 1, 5)]:
        sampler = EpisodeSampler(data, ways=ways, shots=shots, queries=queries, device=args.device)
        for batch in (1, 32, 100):
            eps = rate(sampler, batch, args.seconds, sync=args.device != "cpu")
            rows.append(
                {
                    "ways": ways,
                    "shots": shots,
                    "queries": queries,
                    "meta_batch": batch,
                    "episodes_per_s": round(eps),
                }
            )
            print(
                f"{ways:2d}-way {shots}-shot {queries:2d}-query, meta-batch {batch:3d}: "
                f"{eps:9,.0f} episodes/s",
                flush=True,
            )
    result = {**header(), "results": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
