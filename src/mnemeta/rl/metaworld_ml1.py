"""Meta-World ML1 (Yu et al. 2019): one manipulation skill, its goal positions the tasks.

``metaworld.ML1(name, seed=...)`` (Meta-World ≥ 3, the ``-v3`` environments) draws 50 training
and 50 held-out test goals of one skill (``reach-v3``, ``push-v3``, ``pick-place-v3``) and
gives each as a ``Task`` that ``env.set_task`` installs. The goal is hidden from the
observation (``partially_observable``), so the policy must find it from the reward: that is
what the inner step adapts to.

How the pieces map onto :class:`~mnemeta.rl.environment.TaskEnvironment`:

- **A task is an index** into the split's task list, as a ``(n, 1)`` tensor of whole numbers
  (in the requested float dtype, exact below 2²⁴). :meth:`MetaWorldML1.sample_tasks` draws
  ``n`` distinct indices (a random permutation's first ``n``) when ``n`` ≤ 50, else with
  replacement.
- **Training and evaluation tasks**: an environment built with ``split="train"`` (the default,
  and what the data-set registry builds) indexes ``ML1.train_tasks``;
  :meth:`MetaWorldML1.held_out` returns its sibling over ``ML1.test_tasks`` — 50 goals that
  Meta-World draws with seed ``seed + 1``, none of them a training goal — sharing the benchmark
  and the MuJoCo models. Evaluate on that one.
- **The benchmark seed** fixes the goals (``seed=0`` by default): ``metaworld.ML1(name)``
  without a seed draws different goals in every process, so two runs would train on different
  tasks and nothing would reproduce.
- **success** ``(tasks, envs_per_task)`` is True for a trajectory whose ``info["success"]`` was
  1 at any step before it ended. That is Meta-World's own count: ``metaworld/evaluation.py``
  turns ``terminate_on_success`` on and scores an episode by its final ``info["success"]``,
  i.e. whether it ever succeeded. Here reaching the goal does not end the trajectory (the
  rollout keeps its fixed horizon), only the flag is kept.
- **The horizon** defaults to 200 steps — the horizon of the paper's MuJoCo runs and the
  ``[rl] horizon`` of the presets — not ML1's ``max_path_length`` of 500: 2.5 times fewer
  simulator steps per rollout on a 2-core CPU, and ``reach`` succeeds well within 200 steps of a
  good policy. Any horizon up to 500 may be chosen; past it Meta-World refuses to step.
- **The reward** is Meta-World's own (v3, in ``[0, 10]``); reset is deterministic given the
  task (Meta-World ignores ``reset``'s seed and ML1 fixes the initial positions), but each
  sub-environment is still seeded from the generator (``env.seed``), for its spaces.

metaworld, gymnasium and MuJoCo are imported when the environment is built, never at import.
Meta-World's API has changed under its users before (learn2learn#213: its example broke when
``MultiClassMultiTaskEnv`` went away); only the stable surface is used here — ``ML1``,
``train_classes``, ``train_tasks``/``test_tasks``, ``set_task``, ``info["success"]`` — and the
extra asks for the version it was tested with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mnemeta.errors import ConfigError
from mnemeta.rl.gym_batch import EnvPool, GymTaskBatch, check_sizes, import_extra
from mnemeta.rl.shard import TaskShard

HORIZON = 200  # see the module: the paper's MuJoCo horizon, not ML1's 500
BENCHMARK_SEED = 0  # fixes ML1's 50 training (and 50 test) goals across runs


class MetaWorldML1(GymTaskBatch):
    """The batched ML1 environment of one Meta-World skill.

    Args:
        envs_per_task: trajectories run side by side for each task.
        task: the ML1 skill, e.g. ``"reach-v3"`` (``metaworld.ML1.ENV_NAMES`` lists them).
        horizon: steps per trajectory, at most Meta-World's ``max_path_length`` (500).
        split: ``"train"`` (ML1's training goals) or ``"test"`` (its held-out goals).
        seed: ML1's benchmark seed (see the module).
    """

    name = "MetaWorldML1"
    tracks_success = True

    def __init__(
        self,
        envs_per_task: int,
        *,
        task: str = "reach-v3",
        horizon: int = HORIZON,
        split: str = "train",
        seed: int = BENCHMARK_SEED,
        _shared: tuple[Any, EnvPool] | None = None,
    ) -> None:
        check_sizes(self.name, envs_per_task, horizon)
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test'; got {split!r}")
        if _shared is None:
            import_extra("gymnasium", self.name)
            import_extra("mujoco", self.name)
            metaworld = import_extra("metaworld", self.name)
            if task not in metaworld.ML1.ENV_NAMES:
                raise ConfigError(
                    f"{task!r} is not a Meta-World ML1 task; set [rl] task to one of "
                    f"{', '.join(sorted(metaworld.ML1.ENV_NAMES))}"
                )
            benchmark = metaworld.ML1(task, seed=seed)
            pool = EnvPool(benchmark.train_classes[task])
        else:
            benchmark, pool = _shared
        self.benchmark, self.task_name, self.split, self.seed = benchmark, task, split, seed
        self.task_list: list[Any] = list(
            benchmark.train_tasks if split == "train" else benchmark.test_tasks
        )
        pool.vector(1)  # builds the first sub-environment, if this pool is new
        limit = int(pool.envs[0].max_path_length)
        if horizon > limit:
            raise ConfigError(
                f"horizon {horizon} exceeds Meta-World's max_path_length ({limit}); set [rl] "
                f"horizon <= {limit}"
            )
        super().__init__(pool, envs_per_task, horizon)

    def held_out(self) -> MetaWorldML1:
        """The same skill over ML1's held-out test goals, sharing the benchmark and the MuJoCo
        models (not to be stepped while this one's rollout is running)."""
        return MetaWorldML1(
            self.envs_per_task,
            task=self.task_name,
            horizon=self.horizon,
            split="test",
            seed=self.seed,
            _shared=(self.benchmark, self.pool),
        )

    def sample_tasks(
        self, n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """``n`` task indices into the split's task list, ``(n, 1)``: distinct when ``n`` is at
        most the number of tasks (50), else drawn with replacement."""
        if n < 1:
            raise ConfigError(f"sample_tasks needs n >= 1 tasks; got {n}")
        count = len(self.task_list)
        if n <= count:
            idx = torch.randperm(count, generator=generator)[:n]
        else:
            idx = torch.randint(0, count, (n,), generator=generator)
        return idx.to(dtype).unsqueeze(1)

    def _indices(self, tasks: Tensor) -> list[int]:
        if tasks.dim() != 2 or tasks.shape[1] != 1:
            raise ConfigError(
                f"{self.name} tasks must be (tasks, 1) indices; got {tuple(tasks.shape)}; draw "
                "them with sample_tasks(n, generator=...)"
            )
        values = tasks[:, 0].detach().to("cpu", torch.float64)
        idx = values.round().long()
        count = len(self.task_list)
        if not torch.equal(idx.to(torch.float64), values) or idx.min() < 0 or idx.max() >= count:
            raise ConfigError(
                f"{self.name} tasks must be whole indices in [0, {count}); got "
                f"{values.tolist()}; draw them with sample_tasks(n, generator=...)"
            )
        return [int(i) for i in idx.tolist()]

    def reset(
        self,
        tasks: Tensor,
        *,
        generator: torch.Generator | None = None,
        shard: TaskShard | None = None,
    ) -> Tensor:
        """Install each task's goal in its ``envs_per_task`` sub-environments and start them
        (seeds drawn for the whole meta-batch when ``tasks`` are a ``shard`` of it)."""
        self._indices(tasks)  # refuse bad tasks before any sub-environment is touched
        return self._start(tasks, generator, shard)

    def _configure(self, envs: list[Any], tasks: Tensor, seeds: list[int]) -> None:
        # Meta-World's reset ignores its seed argument; env.seed reseeds its generator and spaces.
        for i, index in enumerate(self._indices(tasks)):
            for k in range(self.envs_per_task):
                env = envs[i * self.envs_per_task + k]
                env.set_task(self.task_list[index])
                env.seed(seeds[i * self.envs_per_task + k])

    def _record(self, info: dict[str, Any], active: Tensor) -> None:
        assert self.success is not None
        hit = torch.from_numpy(np.asarray(info["success"], dtype=np.float64) > 0)
        self.success |= hit.reshape(self.success.shape).to(self.success.device) & active
