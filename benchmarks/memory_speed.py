"""Sequence steps per second of the memory-augmented networks (NTM, MANN/LRUA, LSTM).

    python benchmarks/memory_speed.py [--seconds 3] [--device cpu] \
        [--out benchmarks/results/memory_speed_cpu.json]

Times one training step (forward over the sequence, backward, RMSProp step) and a forward pass
alone, at the papers' sizes (copy task: controller 100, memory 128 x 20, 1+1 heads, 41 steps;
MANN: controller 200, memory 128 x 40, 4 heads, 50-step episodes of 20x20 images), for several
batch sizes. "Sequence steps per second" counts time steps x sequences. If the time of a step
hardly grows with the batch, the work is bound by the number of operations per time step
(Python and dispatcher overhead, a few microseconds per op), not by arithmetic; the op count
per time step is reported from the profiler.
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
from mnemeta.algorithms.mann import MemoryAugmentedNetwork

MODELS = {
    # name: (inputs, outputs, steps, network keyword arguments)
    "ntm_copy": (9, 8, 41, dict(controller=100, memory="ntm", rows=128, width=20)),
    "lstm_copy": (9, 8, 41, dict(controller=256, memory="none")),
    "mann_omniglot": (
        405,
        5,
        50,
        dict(controller=200, memory="lrua", rows=128, width=40, read_heads=4),
    ),
    "lstm_omniglot": (405, 5, 50, dict(controller=200, memory="none")),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds per call of ``fn`` (median of repeated blocks after a warm-up)."""
    fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def ops_per_step(net: MemoryAugmentedNetwork, x: torch.Tensor) -> int:
    """Operators dispatched per time step in the forward pass (aten ops, from the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    state = net.initial_state(x.shape[0], x.device, x.dtype)
    net.step(x[:, 0], state)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        net.step(x[:, 0], state)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for name, (inputs, outputs, steps, kwargs) in MODELS.items():
        torch.manual_seed(0)
        net = MemoryAugmentedNetwork(inputs, outputs, **kwargs).to(device)  # type: ignore[arg-type]
        opt = torch.optim.RMSprop(net.parameters(), lr=1e-4, alpha=0.95, momentum=0.9)
        n_ops = ops_per_step(net, torch.rand(16, 1, inputs, device=device))
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.rand(batch, steps, inputs, device=device)

            def train_step(net=net, x=x, opt=opt) -> None:  # type: ignore[no-untyped-def]
                logits, _ = net(x)
                opt.zero_grad(set_to_none=True)
                logits.square().mean().backward()
                opt.step()

            def forward(net=net, x=x) -> None:  # type: ignore[no-untyped-def]
                with torch.no_grad():
                    net(x)

            t_train = timed(train_step, device, args.seconds)
            t_fwd = timed(forward, device, args.seconds)
            row = {
                "model": name,
                "batch": batch,
                "time_steps": steps,
                "aten_ops_per_step_forward": n_ops,
                "train_ms_per_batch": round(1000 * t_train, 2),
                "train_sequence_steps_per_s": round(batch * steps / t_train),
                "forward_sequence_steps_per_s": round(batch * steps / t_fwd),
                "forward_us_per_time_step": round(1e6 * t_fwd / steps, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**header(), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
