from __future__ import annotations

import math

import torch

from mnemeta.data.sinusoid import SinusoidTasks


def test_points_lie_on_the_task_sine() -> None:
    s = SinusoidTasks(shots=10, queries=5, seed=0)
    g = torch.Generator().manual_seed(1)
    tasks = s.sample_tasks(4, g)
    assert (tasks[:, 0] >= 0.1).all() and (tasks[:, 0] <= 5).all()
    assert (tasks[:, 1] >= 0).all() and (tasks[:, 1] <= math.pi).all()
    b = s.episodes_for(tasks, g)
    assert b.support_x.shape == (4, 10, 1) and b.query_y.shape == (4, 5, 1)
    assert (b.support_x.abs() <= 5).all()
    expected = tasks[:, None, :1] * torch.sin(b.support_x - tasks[:, None, 1:])
    torch.testing.assert_close(b.support_y, expected)


def test_fixed_episodes_repeat_and_state_restores() -> None:
    s = SinusoidTasks(shots=5, queries=5)
    a = torch.cat([b.support_y for b in s.fixed_episodes(7, seed=3, batch_size=4)])
    b = torch.cat([b.support_y for b in s.fixed_episodes(7, seed=3, batch_size=4)])
    assert a.shape[0] == 7 and torch.equal(a, b)
    state = s.get_state()
    first = s.sample(2).query_x
    s.set_state(state)
    assert torch.equal(s.sample(2).query_x, first)
