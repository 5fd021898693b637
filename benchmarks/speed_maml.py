"""MAML meta-training speed, side by side: mnemeta against learn2learn, higher and TorchOpt.

    python benchmarks/speed_maml.py --peer-python /path/to/peers/bin/python \
        [--device cpu] [--meta-batch 32] [--seconds 20] [--strategies auto,vmap,loop,compile] \
        [--out benchmarks/results/speed_maml_cpu.json]

Same network for everyone: Conv-4 (64 channels; batch norm with the statistics of each task's
batch) and a 5-way linear head; 5-way 1-shot episodes with 15 queries per class; one inner SGD
step with α = 0.4; Adam 1e-3 outer step; second- and first-order. Every library runs in a fresh
process. Before timing, each computes the meta-gradient of one float64 meta-batch from the same
initial weights, and all must agree with mnemeta's (rtol 1e-6), so that every timing is of the
same computation.

The peers live in a separate environment, never in mnemeta's dependencies. The one used here:
``python -m venv peers && peers/bin/pip install torch==<same as mnemeta's> higher torchopt`` and
learn2learn 0.2.0 built from its sdist after regenerating its .pyx sources with Cython 3
(``cython -3 learn2learn/data/*.pyx``; ``pip install --no-deps --no-build-isolation .``). Its
package ``__init__`` imports gym and torchvision, so only ``learn2learn.algorithms.maml`` and
``learn2learn.utils`` (all that its MAML uses) are loaded, from the installed files. Torchmeta
is left out: it pins torch < 1.10.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
WAYS, SHOTS, QUERIES, ALPHA = 5, 1, 15, 0.4


# ---------------------------------------------------------------- shared pieces (every process)
def plain_conv4() -> nn.Module:
    """Conv-4 + head from plain torch.nn, for the peers (and as the weight source for all)."""
    layers: list[nn.Module] = []
    for c_in in (1, 64, 64, 64):
        layers += [
            nn.Conv2d(c_in, 64, 3, padding=1),
            nn.BatchNorm2d(64, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, WAYS))


def episodes(meta_batch: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(meta_batch, WAYS * SHOTS, 1, 28, 28, generator=g, dtype=dtype)
    qx = torch.rand(meta_batch, WAYS * QUERIES, 1, 28, 28, generator=g, dtype=dtype)
    sy = torch.arange(WAYS).repeat_interleave(SHOTS).repeat(meta_batch, 1)
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).repeat(meta_batch, 1)
    return tuple(t.to(device) for t in (sx, sy, qx, qy))


def initial_weights(dtype: torch.dtype) -> list[Tensor]:
    torch.manual_seed(0)
    return [p.detach().to(dtype) for p in plain_conv4().parameters()]


def load_by_order(module: nn.Module, weights: list[Tensor]) -> None:
    params = list(module.parameters())
    assert len(params) == len(weights), (len(params), len(weights))
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            assert p.shape == w.shape, (p.shape, w.shape)
            p.copy_(w)


ce = nn.functional.cross_entropy


# ---------------------------------------------------------------- one meta-step per library
# Each builder returns (parameters to optimise, step(sx, sy, qx, qy) -> loss with grads set).
def build_mnemeta(
    first_order: bool, strategy: str, device: torch.device, dtype: torch.dtype
) -> tuple[list[nn.Parameter], Callable[..., Tensor]]:
    from mnemeta.algorithms.maml import MAML, Classifier
    from mnemeta.episode import EpisodeBatch
    from mnemeta.nn import Conv4
    from mnemeta.recipes.build import build_meta_loss

    net = Classifier(Conv4(1, 64, track_running_stats=False), 64, WAYS).to(device, dtype)
    load_by_order(net, initial_weights(dtype))
    # "compile" and "cudagraphs": vmap over tasks, the meta-loss through torch.compile exactly
    # as `mnemeta train --set train.compile=...` runs it (default / reduce-overhead mode).
    compile_mode = {"compile": "default", "cudagraphs": "reduce-overhead"}.get(strategy, "off")
    vmap_or_loop = "vmap" if compile_mode != "off" else strategy
    maml = MAML(net, inner_lr=ALPHA, first_order=first_order, strategy=vmap_or_loop)
    meta_loss = build_meta_loss(maml, compile_mode)

    def step(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        loss, _ = meta_loss(EpisodeBatch(sx, sy, qx, qy, WAYS))
        loss.backward()
        return loss

    return list(net.parameters()), step


def _learn2learn() -> types.ModuleType:
    """learn2learn's MAML without its package __init__ (which imports gym and torchvision)."""
    if "learn2learn.algorithms.maml" in sys.modules:
        return sys.modules["learn2learn.algorithms.maml"]
    spec = importlib.util.find_spec("learn2learn")
    assert spec is not None and spec.submodule_search_locations, "learn2learn is not installed"
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, path in (("learn2learn", root), ("learn2learn.algorithms", root / "algorithms")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)]
        sys.modules[name] = stub
    return importlib.import_module("learn2learn.algorithms.maml")


def build_learn2learn(
    first_order: bool, strategy: str, device: torch.device, dtype: torch.dtype
) -> tuple[list[nn.Parameter], Callable[..., Tensor]]:
    l2l_maml = _learn2learn()
    net = plain_conv4().to(device, dtype)
    load_by_order(net, initial_weights(dtype))
    maml = l2l_maml.MAML(net, lr=ALPHA, first_order=first_order)

    def step(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        total = torch.zeros((), device=device, dtype=dtype)
        for i in range(sx.shape[0]):  # learn2learn adapts one task at a time
            learner = maml.clone()
            learner.adapt(ce(learner(sx[i]), sy[i]))
            total = total + ce(learner(qx[i]), qy[i])
        loss = total / sx.shape[0]
        loss.backward()
        return loss

    return list(net.parameters()), step


def build_higher(
    first_order: bool, strategy: str, device: torch.device, dtype: torch.dtype
) -> tuple[list[nn.Parameter], Callable[..., Tensor]]:
    import higher

    net = plain_conv4().to(device, dtype)
    load_by_order(net, initial_weights(dtype))
    inner = torch.optim.SGD(net.parameters(), lr=ALPHA)

    def step(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        n, total = sx.shape[0], 0.0
        for i in range(n):
            with higher.innerloop_ctx(
                net, inner, copy_initial_weights=False, track_higher_grads=not first_order
            ) as (fnet, diffopt):
                diffopt.step(ce(fnet(sx[i]), sy[i]))
                if first_order:
                    # higher's first-order mode detaches the fast weights from θ entirely;
                    # first-order MAML applies the query gradient at φ to θ, so route it back.
                    q = ce(fnet(qx[i]), qy[i]) / n
                    grads = torch.autograd.grad(q, fnet.parameters())
                    for p, g in zip(net.parameters(), grads, strict=True):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    q = ce(fnet(qx[i]), qy[i]) / n
                    q.backward()
                total += float(q) if device.type == "cpu" else 0.0
        return torch.tensor(total)

    return list(net.parameters()), step


def build_torchopt(
    first_order: bool, strategy: str, device: torch.device, dtype: torch.dtype
) -> tuple[list[nn.Parameter], Callable[..., Tensor]]:
    import torchopt

    net = plain_conv4().to(device, dtype)
    load_by_order(net, initial_weights(dtype))
    inner = torchopt.MetaSGD(net, lr=ALPHA)
    net_state = torchopt.extract_state_dict(net, by="reference", detach_buffers=True)
    opt_state = torchopt.extract_state_dict(inner)

    def step(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        n, total = sx.shape[0], 0.0
        for i in range(n):
            inner.step(ce(net(sx[i]), sy[i]))
            if first_order:
                fast = list(net.parameters())
                q = ce(net(qx[i]), qy[i]) / n
                grads = torch.autograd.grad(q, fast)
                torchopt.recover_state_dict(net, net_state)
                torchopt.recover_state_dict(inner, opt_state)
                for p, g in zip(net.parameters(), grads, strict=True):
                    p.grad = g if p.grad is None else p.grad + g
            else:
                q = ce(net(qx[i]), qy[i]) / n
                q.backward()
                torchopt.recover_state_dict(net, net_state)
                torchopt.recover_state_dict(inner, opt_state)
            total += float(q) if device.type == "cpu" else 0.0
        return torch.tensor(total)

    return list(net.parameters()), step


BUILDERS = {
    "mnemeta": build_mnemeta,
    "learn2learn": build_learn2learn,
    "higher": build_higher,
    "torchopt": build_torchopt,
}


# ---------------------------------------------------------------- the child process
def child(
    lib: str,
    order: str,
    strategy: str,
    device_name: str,
    meta_batch: int,
    seconds: float,
    out: Path,
) -> None:
    device = torch.device(device_name)
    first_order = order == "first"
    # 1. the float64 meta-gradient on a small meta-batch, for the equality check
    params, step = BUILDERS[lib](first_order, strategy, device, torch.float64)
    step(*episodes(4, torch.float64, device))
    check = [p.grad.detach().cpu() for p in params]
    # 2. throughput in float32
    params, step = BUILDERS[lib](first_order, strategy, device, torch.float32)
    opt = torch.optim.Adam(params, lr=1e-3)
    batch = episodes(meta_batch, torch.float32, device)

    def meta_step() -> None:
        opt.zero_grad(set_to_none=True)
        step(*batch)
        opt.step()

    warm_start = time.perf_counter()  # the first steps compile, where anything compiles
    meta_step()
    meta_step()
    meta_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warmup_s = time.perf_counter() - warm_start
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        meta_step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    torch.save(
        {
            "grads": check,
            "tasks_per_s": n * meta_batch / elapsed,
            "steps": n,
            "peak_mib": peak,
            "warmup_s": warmup_s,
        },
        out,
    )


# ---------------------------------------------------------------- the parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument(
        "--peer-python",
        default=sys.executable,
        help="python of the environment that has learn2learn, higher and torchopt",
    )
    ap.add_argument("--libs", default="mnemeta,learn2learn,higher,torchopt")
    ap.add_argument(
        "--strategies",
        default=None,
        help="mnemeta's strategies to time (default: auto,vmap,loop,compile, and cudagraphs "
        "on a GPU); compile and cudagraphs are vmap through torch.compile",
    )
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--child", nargs=4, metavar=("LIB", "ORDER", "STRATEGY", "OUT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        lib, order, strategy, out = args.child
        child(lib, order, strategy, args.device, args.meta_batch, args.seconds, Path(out))
        return

    sys.path.insert(0, str(HERE))
    from common import header

    ours = args.strategies or "auto,vmap,loop,compile" + (
        ",cudagraphs" if args.device.startswith("cuda") else ""
    )
    runs = []
    for lib in args.libs.split(","):
        strategies = tuple(ours.split(",")) if lib == "mnemeta" else ("loop",)
        runs += [(lib, order, s) for order in ("second", "first") for s in strategies]
    rows, reference = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for lib, order, strategy in runs:
            out = Path(tmp) / f"{lib}-{order}-{strategy}.pt"
            python = sys.executable if lib == "mnemeta" else args.peer_python
            cmd = [
                python,
                __file__,
                "--device",
                args.device,
                "--meta-batch",
                str(args.meta_batch),
                "--seconds",
                str(args.seconds),
                "--child",
                lib,
                order,
                strategy,
                str(out),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{lib} {order}-order failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                rows.append(
                    {
                        "library": lib,
                        "order": order,
                        "strategy": strategy,
                        "error": proc.stderr.strip().splitlines()[-1][:200],
                    }
                )
                continue
            result = torch.load(out, weights_only=True)
            grads = result["grads"]
            key = order
            if lib == "mnemeta" and key not in reference:
                reference[key] = grads  # the first strategy listed: auto by default
            agree = all(
                torch.allclose(a, b, rtol=1e-6, atol=1e-9)
                for a, b in zip(grads, reference[key], strict=True)
            )
            row = {
                "library": lib,
                "order": order,
                "strategy": strategy,
                "tasks_per_s": round(result["tasks_per_s"], 2),
                "peak_mib": result["peak_mib"],
                "warmup_s": round(result["warmup_s"], 1),
                "same_meta_gradient_float64": agree,
            }
            rows.append(row)
            print(row, flush=True)
    base = {
        r["order"]: r["tasks_per_s"]
        for r in rows
        if r.get("library") == "learn2learn" and "tasks_per_s" in r
    }
    for r in rows:
        if "tasks_per_s" in r and r["order"] in base:
            r["vs_learn2learn"] = round(r["tasks_per_s"] / base[r["order"]], 2)
    result = {
        **header(),
        "meta_batch": args.meta_batch,
        "seconds_per_run": args.seconds,
        "results": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
