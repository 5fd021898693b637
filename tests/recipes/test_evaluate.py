"""Evaluation in bounded memory: the same numbers whatever the batching, streamed episodes.

The learners are untrained and tiny (16x16 glyphs, Conv-4 of 8 channels); what is checked is
that batching changes nothing, not what they score.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from mnemeta.algorithms import ProtoNet
from mnemeta.algorithms.maml import MAML, Classifier
from mnemeta.algorithms.protocol import Predictor, accuracy
from mnemeta.data.glyphs import make_glyphs
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.episode import Support
from mnemeta.errors import ConfigError
from mnemeta.nn import Conv4
from mnemeta.recipes.evaluate import MAX_IMAGES_PER_PASS, episodes_per_pass, evaluate
from mnemeta.stats import mean_ci95

DATA = make_glyphs(40, 8, image_size=16, seed=3)


def _protonet() -> nn.Module:
    torch.manual_seed(0)
    return ProtoNet(Conv4(1, 8))


def _maml() -> nn.Module:
    # Per-task batch statistics: a pass must hold whole episodes, and each is adapted alone.
    torch.manual_seed(0)
    net = Classifier(Conv4(1, 8, track_running_stats=False), 8, 5)
    return MAML(net, inner_lr=0.4, inner_steps=1, eval_inner_steps=2)


LEARNERS: dict[str, Callable[[], nn.Module]] = {"protonet": _protonet, "maml": _maml}

# mean and ci95 of evaluate(learner, 5-way 1-shot 3-query sampler, episodes=230, seed=7,
# batch_size=50), recorded with the code before evaluation was bounded (commit 6d1de3d: all
# index chunks drawn up front, 50 episodes per pass, a list of per-batch accuracies).
BEFORE = {
    "protonet": (28.086957931518555, 1.6169691892583242),
    "maml": (28.28985595703125, 1.4675287083724904),
}


def _sampler() -> EpisodeSampler:
    return EpisodeSampler(DATA, ways=5, shots=1, queries=3, seed=0)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_same_numbers_as_before_and_whatever_the_batching(name: str) -> None:
    learner = LEARNERS[name]()
    results = {
        (batch_size, max_images): evaluate(
            learner,
            _sampler(),
            episodes=230,
            seed=7,
            batch_size=batch_size,
            max_images=max_images,
        )
        for batch_size, max_images in [(50, 10**6), (50, 100), (7, 10**6), (1, 10**6), (50, 1)]
    }
    first = next(iter(results.values()))
    assert (first.mean, first.ci95) == BEFORE[name]
    assert all(r == first for r in results.values()), results


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_same_accuracies_as_one_pass_over_all_episodes(name: str) -> None:
    """The reference: every episode in one batch, accuracies concatenated (the old way)."""
    learner = LEARNERS[name]().eval()
    (everything,) = _sampler().fixed_episodes(120, seed=11, batch_size=120)
    with torch.no_grad():
        accs = accuracy(learner.adapt(everything.support)(everything.query_x), everything.query_y)
    mean, ci = mean_ci95(accs * 100.0)
    result = evaluate(learner, _sampler(), episodes=120, seed=11, batch_size=50, max_images=64)
    assert (result.mean, result.ci95) == (mean, ci)


class _Recorder(nn.Module):
    """A learner that scores nothing and records the images of each pass."""

    def __init__(self) -> None:
        super().__init__()
        self.passes: list[tuple[int, int]] = []  # (episodes, images) per pass

    def adapt(self, support: Support) -> Predictor:
        def predict(query_x: Tensor) -> Tensor:
            t = query_x.shape[0]
            images = support.x.shape[0] * support.x.shape[1] + t * query_x.shape[1]
            self.passes.append((t, images))
            return torch.zeros(t, query_x.shape[1], support.n_way)

        return predict


@pytest.mark.parametrize(
    ("ways", "queries", "max_images", "per_pass"),
    [(5, 3, 100, 5), (5, 3, 10**6, 50), (20, 15, 512, 1), (20, 15, 100, 1), (2, 1, 512, 50)],
)
def test_a_pass_holds_at_most_max_images_or_one_episode(
    ways: int, queries: int, max_images: int, per_pass: int
) -> None:
    data = make_glyphs(40, 16, image_size=4, seed=0)
    sampler = EpisodeSampler(data, ways=ways, shots=1, queries=queries)
    recorder = _Recorder()
    evaluate(recorder, sampler, episodes=123, seed=0, batch_size=50, max_images=max_images)
    episodes = [t for t, _ in recorder.passes]
    assert sum(episodes) == 123
    assert max(episodes) == per_pass == episodes_per_pass(sampler, 50, max_images)
    for t, images in recorder.passes:
        assert images == t * ways * (1 + queries)
        assert t == 1 or images <= max_images


def test_default_cap_for_the_usual_episodes() -> None:
    data = make_glyphs(40, 16, image_size=4, seed=0)
    five = EpisodeSampler(data, ways=5, shots=1, queries=15)
    twenty = EpisodeSampler(data, ways=20, shots=1, queries=15)
    assert episodes_per_pass(five, 50, MAX_IMAGES_PER_PASS) == 6  # 80 images each
    assert episodes_per_pass(twenty, 50, MAX_IMAGES_PER_PASS) == 1  # 320 images each


@pytest.mark.parametrize(("batch_size", "max_images"), [(0, 512), (50, 0), (True, 512), (2.5, 9)])
def test_bad_batch_size_or_cap_is_a_config_error(batch_size: object, max_images: object) -> None:
    with pytest.raises(ConfigError, match=r"must be a positive integer"):
        evaluate(
            _protonet(),
            _sampler(),
            episodes=10,
            seed=0,
            batch_size=batch_size,  # type: ignore[arg-type]
            max_images=max_images,  # type: ignore[arg-type]
        )


def test_fixed_episodes_are_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the 100-episode chunks a batch needs are drawn: memory does not grow with the
    number of episodes, and the episodes are those of drawing every chunk first."""
    sampler = _sampler()
    drawn: list[int] = []
    real = sampler._draw_indices

    def counted(n_tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        drawn.append(n_tasks)
        return real(n_tasks, generator)

    monkeypatch.setattr(sampler, "_draw_indices", counted)
    stream = sampler.fixed_episodes(10_000, seed=4, batch_size=30)
    first = [next(stream) for _ in range(4)]  # 120 episodes: two chunks
    assert drawn == [100, 100]
    rest = list(stream)
    assert len(drawn) == 100 and sum(b.n_tasks for b in first + rest) == 10_000
    # The whole chunks of a shorter run are the same episodes (its last, partial chunk draws
    # fewer rows from its generator, so it differs: a run is fixed by seed and episodes).
    (whole,) = _sampler().fixed_episodes(250, seed=4, batch_size=250)
    streamed = torch.cat([b.classes for b in first + rest])
    assert torch.equal(streamed[:200], whole.classes[:200])


def test_fixed_episodes_rejects_a_bad_batch_size() -> None:
    with pytest.raises(ConfigError, match=r"eval.batch_size must be a positive integer; got 0"):
        next(_sampler().fixed_episodes(10, seed=0, batch_size=0))
