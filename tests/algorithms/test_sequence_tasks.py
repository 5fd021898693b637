"""The sequence tasks' training losses and metrics, checked against the same quantities written
out step by step in the test, and the no-wipe variant's carried memory."""

from __future__ import annotations

import math

import torch

from mnemeta.algorithms.mann import MemoryAugmentedNetwork, RecurrentState
from mnemeta.algorithms.sequence_tasks import CopyTask, OneShotTask
from mnemeta.data.classes import ClassImages
from mnemeta.data.sequences import CopySampler, OneShotSequenceSampler

CPU = torch.device("cpu")


def _copy_task(**overrides: object) -> CopyTask:
    keys: dict = {"device": CPU, "eval_seed": 4, "eval_max_length": 40, "eval_per_length": 2}
    keys.update(overrides)
    return CopyTask(CopySampler(bits=3, min_length=2, max_length=5, seed=7), **keys)


def test_copy_task_sizes() -> None:
    """Input: the bits plus the delimiter channel; output: the bits; evaluated on the lengths of
    COPY_EVAL_LENGTHS up to eval_max_length."""
    task = _copy_task()
    assert (task.inputs, task.outputs, task.bits) == (4, 3, 3)
    assert (task.max_length, task.eval_seed, task.eval_per_length) == (5, 4, 2)
    assert task.eval_lengths == [10, 20, 30, 40]
    assert task.device == CPU and isinstance(task.sampler, CopySampler)
    assert _copy_task(eval_max_length=9).eval_lengths == []


def test_copy_loss_and_bits_wrong_by_hand() -> None:
    """The loss is the mean binary cross-entropy of the last L outputs (the recall phase) with
    the L input vectors; bits wrong counts, per sequence, the outputs on the wrong side of 0.5
    (logit 0), and the metric is its mean over the batch."""
    torch.manual_seed(0)
    net = MemoryAugmentedNetwork(4, 3, controller=8, memory="none")
    with torch.no_grad():
        net.output.bias.copy_(torch.tensor([0.4, -0.3, 0.1]))  # both signs of logit
    task = _copy_task()
    twin = CopySampler(bits=3, min_length=2, max_length=5, seed=7)  # draws the same batch
    loss, metrics, state = task.train_loss(net, 6, None)
    data = twin.sample(6)
    length = data.targets.shape[1]
    with torch.no_grad():
        logits, want_state = net(data.inputs)
    wrong = torch.zeros(6)
    total = 0.0
    for b in range(6):
        for t in range(length):
            for bit in range(3):
                z = float(logits[b, length + 1 + t, bit])  # recall steps follow the delimiter
                y = float(data.targets[b, t, bit])
                p = 1 / (1 + math.exp(-z))
                total -= y * math.log(p) + (1 - y) * math.log(1 - p)
                wrong[b] += float((z > 0) != (y == 1))
    assert loss.requires_grad and loss.shape == ()
    assert abs(float(loss.detach()) - total / (6 * length * 3)) < 1e-5  # float32 logits
    assert float(metrics["loss"]) == float(loss.detach()) and not metrics["loss"].requires_grad
    assert 0 < wrong.mean() < length * 3  # neither all right nor all wrong: the count can err
    torch.testing.assert_close(metrics["bits_wrong"], wrong.mean())
    torch.testing.assert_close(state.hidden, want_state.hidden)


def test_copy_task_runs_on_its_device() -> None:
    """The sampler draws on the CPU; the task moves the batch to its device (meta here: a tensor
    left on the CPU would be an error against a meta network, as against a GPU one)."""
    meta = torch.device("meta")
    net = MemoryAugmentedNetwork(4, 3, controller=8, memory="ntm", rows=5, width=2).to(meta)
    loss, metrics, state = _copy_task(device=meta).train_loss(net, 2, None)
    assert loss.device == meta and metrics["bits_wrong"].device == meta
    assert state.hidden.device == meta


def test_copy_task_state_restores_the_sampler() -> None:
    task = _copy_task()
    state = task.get_state()
    first = task.sampler.sample(3)
    other = _copy_task()
    other.sampler.sample(5)
    other.set_state(state)
    again = other.sampler.sample(3)
    assert torch.equal(first.inputs, again.inputs)


def _images(n_classes: int = 4, per_class: int = 5) -> ClassImages:
    torch.manual_seed(3)
    images = torch.randint(0, 256, (n_classes, per_class, 1, 2, 3), dtype=torch.uint8)
    return ClassImages.from_equal_classes(images, [f"c{i}" for i in range(n_classes)])


def _one_shot(wipe: bool, seed: int = 1) -> OneShotTask:
    data = _images()
    return OneShotTask(
        OneShotSequenceSampler(data, classes=3, instances=4, seed=seed),
        OneShotSequenceSampler(data, classes=3, instances=4, seed=99),
        wipe_memory=wipe,
        eval_episodes=5,
        eval_seed=2,
        eval_batch=4,
    )


def test_one_shot_task_sizes() -> None:
    """Input: the flattened image (1·2·3 = 6) and the previous step's one-hot label (3)."""
    task = _one_shot(wipe=False)
    assert (task.inputs, task.outputs, task.classes, task.instances) == (9, 3, 3, 4)
    assert task.wipe is False and _one_shot(wipe=True).wipe is True
    assert (task.eval_episodes, task.eval_seed, task.eval_batch) == (5, 2, 4)


def test_one_shot_loss_and_accuracies_by_hand() -> None:
    """Cross-entropy over every step; accuracy over every step; accuracy_2nd over the steps that
    show a class for the second time only (Santoro et al.'s headline column)."""
    torch.manual_seed(0)
    net = MemoryAugmentedNetwork(9, 3, controller=8, memory="lrua", rows=4, width=3)
    task = _one_shot(wipe=True)
    twin = OneShotSequenceSampler(_images(), classes=3, instances=4, seed=1)
    loss, metrics, _ = task.train_loss(net, 5, None)
    data = twin.sample(5)
    with torch.no_grad():
        logits, _ = net(data.inputs(3))
    nll, right, right_2nd, seen_2nd = 0.0, 0, 0, 0
    for b in range(5):
        for t in range(12):
            z = logits[b, t].double()
            label = int(data.labels[b, t])
            nll -= float(z[label] - torch.logsumexp(z, 0))
            hit = int(z.argmax()) == label
            right += hit
            if int(data.instance[b, t]) == 2:
                seen_2nd += 1
                right_2nd += hit
    assert seen_2nd == 5 * 3  # each of the 3 classes is shown a second time once per episode
    assert abs(float(loss.detach()) - nll / 60) < 1e-5 and loss.requires_grad
    assert float(metrics["loss"]) == float(loss.detach())
    assert abs(float(metrics["accuracy"]) - right / 60) < 1e-6
    assert abs(float(metrics["accuracy_2nd"]) - right_2nd / seen_2nd) < 1e-6
    # not 0 or 1 by accident of the seed for accuracy: it is a count that can go either way
    assert 0 < right < 60


def test_no_wipe_carries_the_memory_but_a_fresh_controller() -> None:
    """Without the wipe the next batch starts from the memory that the previous one left
    (detached: no gradient across episodes) and from a zero controller and zero reads; with the
    wipe, with no carry, or with a carry of another batch size, from a wiped memory."""
    torch.manual_seed(0)
    net = MemoryAugmentedNetwork(9, 3, controller=8, memory="lrua", rows=4, width=3)
    task = _one_shot(wipe=False)
    _, _, carry = task.train_loss(net, 5, None)
    assert carry.memory.memory.requires_grad  # the carry has a graph; the start must not
    start = task._start(net, carry, 5)
    assert isinstance(start, RecurrentState)
    fresh = net.initial_state(5, CPU, torch.float32)
    for got, want in zip(start[:3], fresh[:3], strict=True):
        assert torch.equal(got, want)
    assert type(start.memory) is type(carry.memory)
    for got, want in zip(start.memory, carry.memory, strict=True):
        assert torch.equal(got, want) and not got.requires_grad
    assert task._start(net, carry, 4) is None
    assert task._start(net, None, 5) is None
    assert _one_shot(wipe=True)._start(net, carry, 5) is None

    # train_loss starts from that state: its loss is the network's on the carried memory.
    twin = OneShotSequenceSampler(_images(), classes=3, instances=4, seed=1)
    twin.set_state(task.get_state())
    loss, _, _ = task.train_loss(net, 5, carry)
    data = twin.sample(5)
    with torch.no_grad():
        logits, _ = net(data.inputs(3), start)
        wiped, _ = net(data.inputs(3))
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data.labels.flatten())
    torch.testing.assert_close(loss.detach(), want)
    assert not torch.allclose(logits, wiped)  # the carried memory does change the outputs


def test_one_shot_state_restores_the_sampler() -> None:
    task, other = _one_shot(wipe=True), _one_shot(wipe=True, seed=8)
    other.set_state(task.get_state())
    assert torch.equal(task.sampler.sample(2).labels, other.sampler.sample(2).labels)


def test_second_presentation_accuracy_with_two_instances() -> None:
    """With 2 instances per class, accuracy_2nd is over the last presentation of each class
    (3 classes x 5 episodes = 15 steps): a finite value equal to the count by hand."""
    data = _images()
    task = OneShotTask(
        OneShotSequenceSampler(data, classes=3, instances=2, seed=1),
        OneShotSequenceSampler(data, classes=3, instances=2, seed=2),
        wipe_memory=True,
        eval_episodes=2,
        eval_seed=0,
        eval_batch=2,
    )
    torch.manual_seed(0)
    net = MemoryAugmentedNetwork(9, 3, controller=8, memory="lrua", rows=4, width=3)
    twin = OneShotSequenceSampler(data, classes=3, instances=2, seed=1)
    _, metrics, _ = task.train_loss(net, 5, None)
    batch = twin.sample(5)
    with torch.no_grad():
        logits, _ = net(batch.inputs(3))
    second = batch.instance == 2
    right = ((logits.argmax(-1) == batch.labels) & second).sum()
    assert int(second.sum()) == 15
    assert abs(float(metrics["accuracy_2nd"]) - float(right) / 15) < 1e-6


def test_no_wipe_start_keeps_the_carry_device_and_dtype() -> None:
    """The fresh controller is made where the carried memory is, in its dtype (meta: a state
    made on the CPU by default would fail there as on a GPU; float64 shows a float32 one)."""
    net = MemoryAugmentedNetwork(9, 3, controller=8, memory="lrua", rows=4, width=3)
    task = _one_shot(wipe=False)
    meta = torch.device("meta")
    carry = net.initial_state(5, meta, torch.float64)
    start = task._start(net, carry, 5)
    assert start is not None
    for x in [start.hidden, start.cell, start.reads, *start.memory]:
        assert x.device == meta and x.dtype == torch.float64
