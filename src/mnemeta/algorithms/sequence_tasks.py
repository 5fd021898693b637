"""The sequence tasks of memory-augmented networks: losses, metrics and evaluation.

The NTM copy task (Graves et al. 2014, §4.1) and Santoro et al.'s one-shot episodes (2016,
§4.1), for a :class:`~mnemeta.algorithms.mann.MemoryAugmentedNetwork`. A task draws a training
batch from its sampler (:mod:`mnemeta.data.sequences`) and returns the loss and the metrics of
that batch, and evaluates the network on fixed sequences (mean ± 95% CI). It takes plain
arguments (samplers, sizes, seeds), not a config: ``recipes/sequence_train.py`` builds the
tasks from the config and keeps the loop.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mnemeta.algorithms.mann import MemoryAugmentedNetwork, RecurrentState
from mnemeta.data.sequences import CopySampler, OneShotSequenceSampler, copy_batch
from mnemeta.stats import mean_ci95

__all__ = ["COPY_EVAL_LENGTHS", "INSTANCES_REPORTED", "CopyTask", "OneShotTask", "SequenceTask"]

#: Lengths the copy task is evaluated on: within training (<= 20) and beyond (generalisation).
COPY_EVAL_LENGTHS = (10, 20, 30, 40, 50, 80, 120)
#: Presentations of a class reported for one-shot episodes (Santoro et al., Table 1).
INSTANCES_REPORTED = (1, 2, 3, 4, 5, 10)


class SequenceTask(Protocol):
    """What the sequence recipe needs of a task.

    ``inputs`` and ``outputs`` are the network's sizes per time step. ``train_loss(model,
    batch, carry)`` draws ``batch`` sequences and returns the loss (a scalar with a graph), the
    metrics to log (detached scalars) and the network's final state (``carry``, passed back at
    the next step, for tasks that keep memory across batches). ``evaluate`` returns the JSON
    report; ``get_state``/``set_state`` save and restore the sampler's generator for resuming.
    ``part=(lo, hi)`` trains on sequences ``lo..hi-1`` of the batch alone (one rank's share),
    drawn as the whole batch; the loss and metrics are then means over the share.
    """

    inputs: int
    outputs: int

    def train_loss(
        self,
        model: MemoryAugmentedNetwork,
        batch: int,
        carry: RecurrentState | None,
        part: tuple[int, int] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], RecurrentState]: ...

    def evaluate(self, model: MemoryAugmentedNetwork) -> dict[str, Any]: ...

    def get_state(self) -> Tensor: ...

    def set_state(self, state: Tensor) -> None: ...


class CopyTask:
    """Graves et al. (2014, §4.1): metric is bits wrong per sequence (outputs thresholded at
    0.5), the paper's "cost per sequence" axis is the same sum in bits of cross-entropy.

    Args:
        sampler: the training sequences (its ``bits`` and ``max_length`` define the task).
        device: where the network runs.
        eval_seed: seed of the evaluation sequences (the same ones whatever the training).
        eval_max_length: the longest of :data:`COPY_EVAL_LENGTHS` to report.
        eval_per_length: sequences per length in the evaluation.
    """

    def __init__(
        self,
        sampler: CopySampler,
        *,
        device: torch.device,
        eval_seed: int,
        eval_max_length: int,
        eval_per_length: int,
    ) -> None:
        self.sampler = sampler
        self.bits, self.device = sampler.bits, device
        self.max_length, self.eval_seed = sampler.max_length, eval_seed
        self.eval_lengths = [n for n in COPY_EVAL_LENGTHS if n <= eval_max_length]
        self.eval_per_length = eval_per_length
        self.inputs, self.outputs = sampler.bits + 1, sampler.bits

    def train_loss(
        self,
        model: MemoryAugmentedNetwork,
        batch: int,
        carry: RecurrentState | None,
        part: tuple[int, int] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], RecurrentState]:
        data = self.sampler.sample(batch, part)
        loss, errors, state = self._run(model, data.inputs, data.targets)
        return loss, {"loss": loss.detach(), "bits_wrong": errors.mean()}, state

    def _run(
        self, model: MemoryAugmentedNetwork, inputs: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor, RecurrentState]:
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        logits, state = model(inputs)
        out = logits[:, -targets.shape[1] :]
        loss = nn.functional.binary_cross_entropy_with_logits(out, targets)
        errors = ((out > 0).float() != targets).float().sum(dim=(1, 2))  # per sequence
        return loss, errors.detach(), state

    @torch.no_grad()
    def evaluate(self, model: MemoryAugmentedNetwork) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.eval_seed)
        n = self.eval_per_length

        def errors_at(length: int) -> Tensor:
            data = copy_batch(n, length, self.bits, generator=generator)
            return self._run(model, data.inputs, data.targets)[1].cpu()

        within = torch.stack([errors_at(length) for length in range(1, self.max_length + 1)])
        mean, ci = mean_ci95(within.mean(dim=0))
        per_length = {}
        for length in self.eval_lengths:
            m, c = mean_ci95(errors_at(length))
            per_length[str(length)] = {"bits_wrong": m, "ci95": c}
        return {
            "task": "copy",
            "sequences_per_length": n,
            "bits_wrong_lengths_1_to_max": {"mean": mean, "ci95": ci, "max": self.max_length},
            "bits_wrong_by_length": per_length,
        }

    def get_state(self) -> Tensor:
        return self.sampler.get_state()

    def set_state(self, state: Tensor) -> None:
        self.sampler.set_state(state)


class OneShotTask:
    """Santoro et al. (2016, §4.1): a sequence of ``classes × instances`` images; at step t the
    input is the image and the label of step t − 1; the loss is cross-entropy at every step.

    Args:
        sampler: the training episodes (its ``classes`` and ``instances`` define the task).
        test: the evaluation episodes, of the same ``classes`` and ``instances``.
        wipe_memory: start every episode from a wiped memory (Santoro et al.); False carries
            the memory that the previous episodes left over to the next batch.
        eval_episodes, eval_seed, eval_batch: the fixed evaluation episodes, drawn in batches.
    """

    def __init__(
        self,
        sampler: OneShotSequenceSampler,
        test: OneShotSequenceSampler,
        *,
        wipe_memory: bool,
        eval_episodes: int,
        eval_seed: int,
        eval_batch: int,
    ) -> None:
        self.sampler, self.test = sampler, test
        self.classes, self.instances = sampler.classes, sampler.instances
        self.wipe = wipe_memory
        self.eval_episodes, self.eval_seed, self.eval_batch = eval_episodes, eval_seed, eval_batch
        self.inputs = sampler.data.images[0, 0].numel() + sampler.classes
        self.outputs = sampler.classes

    def train_loss(
        self,
        model: MemoryAugmentedNetwork,
        batch: int,
        carry: RecurrentState | None,
        part: tuple[int, int] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], RecurrentState]:
        data = self.sampler.sample(batch, part)
        n = batch if part is None else part[1] - part[0]
        logits, state = model(data.inputs(self.classes), self._start(model, carry, n))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), data.labels.flatten())
        correct = (logits.argmax(-1) == data.labels).float()
        second = (correct * (data.instance == 2)).sum() / (data.instance == 2).sum()
        return (
            loss,
            {"loss": loss.detach(), "accuracy": correct.mean(), "accuracy_2nd": second},
            state,
        )

    def _start(
        self, model: MemoryAugmentedNetwork, carry: RecurrentState | None, batch: int
    ) -> RecurrentState | None:
        """Wiped memory (None), or, for the no-wipe variant, a fresh controller over the memory
        the previous episodes left (detached: no gradient across episodes)."""
        if self.wipe or carry is None or carry.hidden.shape[0] != batch:
            return None
        fresh = model.initial_state(batch, carry.hidden.device, carry.hidden.dtype)
        memory = type(carry.memory)(*(t.detach() for t in carry.memory))
        return fresh._replace(memory=memory)

    @torch.no_grad()
    def evaluate(self, model: MemoryAugmentedNetwork) -> dict[str, Any]:
        per_episode = []  # (episodes, instances): accuracy at each presentation, per episode
        carry = None
        for data in self.test.fixed_episodes(self.eval_episodes, self.eval_seed, self.eval_batch):
            logits, carry = model(
                data.inputs(self.classes), self._start(model, carry, data.labels.shape[0])
            )
            correct = (logits.argmax(-1) == data.labels).float()
            at = torch.nn.functional.one_hot(data.instance - 1, self.instances).float()
            per_episode.append(((correct.unsqueeze(-1) * at).sum(1) / at.sum(1)).cpu())
        table = 100 * torch.cat(per_episode)  # percent
        instances = {}
        for i in INSTANCES_REPORTED:
            if i <= self.instances:
                m, c = mean_ci95(table[:, i - 1])
                instances[str(i)] = {"accuracy": m, "ci95": c}
        return {
            "task": "one-shot episodes",
            "classes": self.classes,
            "instances": self.instances,
            "episodes": int(table.shape[0]),
            "wipe_memory": self.wipe,
            "accuracy_by_instance": instances,
        }

    def get_state(self) -> Tensor:
        return self.sampler.get_state()

    def set_state(self, state: Tensor) -> None:
        self.sampler.set_state(state)
