"""The learn2learn arm of ``speed_maml_rl.py``: times learn2learn's ``examples/rl/maml_trpo.py``.

Run with learn2learn's interpreter, never mnemeta's (this file imports learn2learn, cherry and
gym, and nothing of mnemeta)::

    OMP_NUM_THREADS=1 /work/l2l-venv/bin/python benchmarks/l2l_maml_trpo_harness.py \
        --example-dir /tmp/l2l_example --iterations 2

``--example-dir`` holds an unmodified copy of learn2learn's ``examples/rl/maml_trpo.py`` and
``policies.py``; nothing of them is copied here. Two figures, printed as one JSON line:

- ``rollout``: the example's sampling pipeline without learning: the env ``main()`` builds
  (``gym.make('Particles2D-v1')`` in cherry's ``ActionSpaceScaler``, ``num_workers`` of them
  in ``l2l.gym.AsyncVectorEnv``, wrapped in ``ch.envs.Torch``), the example's
  ``DiagNormalPolicy`` (2 x 100 ReLU), and for each of ``meta_bsz`` tasks ``set_task``,
  ``reset`` and ``ch.envs.Runner(env).run(policy, episodes=adapt_bsz)``, as ``main()`` samples.
  Env steps are counted twice: the transitions the runner returns, and the steps the vector
  env executed (every worker steps at every vector step; ``flatten_episodes`` drops the
  surplus of the last vector step).
- ``meta``: ``maml_trpo.main(num_iterations=N, ...)`` itself, unmodified; each iteration's start
  is the moment its ``tqdm(..., desc='Data')`` loop is created (``tqdm`` in the module is
  replaced by a shim that records that time and turns the progress bar off), and the last
  iteration ends when ``main`` returns. ``meta_surrogate_loss`` is wrapped to count its calls
  (1 for the CG step + 1 per line-search trial), which is how much of the TRPO step ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--example-dir", required=True)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=1, help="timed sampling passes")
    parser.add_argument("--meta-bsz", type=int, default=20)
    parser.add_argument("--adapt-bsz", type=int, default=20)
    parser.add_argument("--num-workers", type=int, default=10, help="the example's default")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-meta", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.abspath(args.example_dir))
    import cherry as ch
    import gym
    import learn2learn as l2l
    import maml_trpo
    import numpy as np
    from policies import DiagNormalPolicy

    out: dict = {
        "versions": {
            "torch": torch.__version__,
            "learn2learn": l2l.__version__,
            "gym": gym.__version__,
            "numpy": np.__version__,
            "cherry": ch.__version__,
            "python": platform.python_version(),
        },
        "torch_threads": torch.get_num_threads(),
        "num_workers": args.num_workers,
    }

    # ---- (a) the sampling pipeline, no learning ----
    torch.manual_seed(args.seed)

    def make_env():
        return ch.envs.ActionSpaceScaler(gym.make("Particles2D-v1"))

    env = l2l.gym.AsyncVectorEnv([make_env for _ in range(args.num_workers)])
    env.seed(args.seed)
    env.set_task(env.sample_tasks(1)[0])
    env = ch.envs.Torch(env)
    executed = [0]
    inner_step = env.step

    def counting_step(action):
        executed[0] += args.num_workers
        return inner_step(action)

    env.step = counting_step
    policy = DiagNormalPolicy(env.state_size, env.action_size)
    passes = []
    for _ in range(args.rollouts):
        executed[0] = 0
        kept = 0
        start = time.perf_counter()
        for task in env.sample_tasks(args.meta_bsz):
            env.set_task(task)
            env.reset()
            replay = ch.envs.Runner(env).run(policy, episodes=args.adapt_bsz)
            kept += len(replay)
        seconds = time.perf_counter() - start
        passes.append(
            {
                "seconds": seconds,
                "steps_kept": kept,
                "steps_executed": executed[0],
                "steps_per_s_kept": kept / seconds,
                "steps_per_s_executed": executed[0] / seconds,
            }
        )
    env.close()
    out["rollout"] = passes

    # ---- (b) whole meta-iterations of the unmodified main() ----
    if not args.skip_meta:
        starts: list[float] = []
        real_tqdm = maml_trpo.tqdm

        def tqdm_shim(iterable, *a, **kw):
            if kw.get("desc") == "Data":
                starts.append(time.perf_counter())
            kw["disable"] = True
            return real_tqdm(iterable, *a, **kw)

        calls: list[int] = []
        real_surrogate = maml_trpo.meta_surrogate_loss

        def counting_surrogate(*a, **kw):
            calls.append(len(starts) - 1)
            return real_surrogate(*a, **kw)

        maml_trpo.tqdm = tqdm_shim
        maml_trpo.meta_surrogate_loss = counting_surrogate
        maml_trpo.main(
            env_name="Particles2D-v1",
            num_iterations=args.iterations,
            meta_bsz=args.meta_bsz,
            adapt_bsz=args.adapt_bsz,
            num_workers=args.num_workers,
            seed=args.seed,
        )
        end = time.perf_counter()
        bounds = [*starts, end]
        out["meta"] = [
            {
                "seconds": bounds[i + 1] - bounds[i],
                "surrogate_evaluations": sum(1 for c in calls if c == i),
            }
            for i in range(len(starts))
        ]
    print("L2L_RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
