"""Memory-augmented adaptation: the memory-weighted update against a hand computation, warm
starts, label matching of stored heads, and write-back.

Every test runs on an in-memory stand-in for the store and, once ``mnemeta.store`` exists, on
the real :class:`~mnemeta.store.TaskMemory` too.
"""

from __future__ import annotations

import importlib.util
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mnemeta.algorithms.inner_loop import MemoryPull, inner_adapt, mse
from mnemeta.algorithms.maml import MAML, Classifier
from mnemeta.algorithms.task_memory_adapt import PROTOTYPES, MemoryAugmentedAdaptation
from mnemeta.episode import Support
from mnemeta.errors import MnemetaError

HAVE_STORE = importlib.util.find_spec("mnemeta.store") is not None and hasattr(
    importlib.import_module("mnemeta.store"), "TaskMemory"
)


@dataclass
class FakeHit:
    id: int
    similarity: float
    info: dict[str, Any]
    metrics: dict[str, float]


@dataclass
class FakeStore:
    """The TaskMemory contract, in a list: exact cosine search, best first."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        embedding: Tensor,
        params: dict[str, Tensor] | None = None,
        info: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> int:
        self.records.append(
            {
                "embedding": embedding.clone(),
                "params": {k: v.clone() for k, v in (params or {}).items()},
                "info": dict(info or {}),
                "metrics": dict(metrics or {}),
            }
        )
        return len(self.records) - 1

    def search(self, query: Tensor, k: int = 5) -> list[FakeHit]:
        sims = [
            float(nn.functional.cosine_similarity(query, r["embedding"], dim=0))
            for r in self.records
        ]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        return [
            FakeHit(i, sims[i], self.records[i]["info"], self.records[i]["metrics"]) for i in order
        ]

    def params(self, rid: int) -> dict[str, Tensor]:
        return self.records[rid]["params"]

    def __len__(self) -> int:
        return len(self.records)


@pytest.fixture(params=["fake", "real"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "fake":
        return FakeStore()
    if not HAVE_STORE:
        pytest.skip("mnemeta.store is not there yet")
    from mnemeta.store import TaskMemory

    return TaskMemory(tmp_path / "memory", dim=2, index="flat")


# ---- the memory-weighted update, by hand ----

ALPHA, BETA, TAU = 0.1, 0.3, 0.5
SIMS = (0.9, 0.5)


def _linear_regression() -> tuple[MAML, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(2, 1).double()
    learner = MAML(model, task="regression", inner_lr=ALPHA, eval_inner_steps=2, strategy="loop")
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3]], dtype=torch.float64)
    y = torch.tensor([[1.0], [0.0], [-2.0]], dtype=torch.float64)
    return learner, x, y


def _stored() -> list[dict[str, Tensor]]:
    return [
        {
            "weight": torch.tensor([[0.7, -0.2]], dtype=torch.float64),
            "bias": torch.tensor([0.4], dtype=torch.float64),
        },
        {
            "weight": torch.tensor([[-0.5, 1.1]], dtype=torch.float64),
            "bias": torch.tensor([-0.3], dtype=torch.float64),
        },
    ]


def _by_hand(w: Tensor, b: Tensor, x: Tensor, y: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """θ ← θ − α∇L(θ) + β Σᵢ ωᵢ (θᵢ − θ), with L = mean((x w + b − y)²), so
    ∇_w L = (2/n) xᵀ r and ∇_b L = (2/n) Σ r for residuals r = x wᵀ + b − y."""
    e = [math.exp(s / TAU) for s in SIMS]
    omega = [v / sum(e) for v in e]
    stored = _stored()
    n = x.shape[0]
    for _ in range(steps):
        r = x @ w.T + b - y  # (n, 1)
        grad_w = (2.0 / n) * r.T @ x
        grad_b = (2.0 / n) * r.sum(0)
        pull_w = sum(o * (s["weight"] - w) for o, s in zip(omega, stored, strict=True))
        pull_b = sum(o * (s["bias"] - b) for o, s in zip(omega, stored, strict=True))
        w, b = w - ALPHA * grad_w + BETA * pull_w, b - ALPHA * grad_b + BETA * pull_b
    return w, b


def test_inner_adapt_memory_pull_two_steps_by_hand() -> None:
    learner, x, y = _linear_regression()
    params = {k: v.detach() for k, v in learner.model.named_parameters()}
    e = torch.tensor(SIMS, dtype=torch.float64).div(TAU).softmax(0)
    stored = _stored()
    anchor = {k: e[0] * stored[0][k] + e[1] * stored[1][k] for k in params}
    fast = inner_adapt(
        learner.model,
        params,
        {},
        x,
        y,
        loss_fn=mse,
        steps=2,
        lr=ALPHA,
        first_order=True,
        pull=MemoryPull(anchor, BETA),
    )
    w, b = _by_hand(params["weight"], params["bias"], x, y, steps=2)
    torch.testing.assert_close(fast["weight"], w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fast["bias"], b, rtol=1e-12, atol=1e-14)


def test_memory_weighted_adaptation_two_steps_by_hand(store: Any) -> None:
    learner, x, y = _linear_regression()
    # Embeddings with the chosen cosine similarities to the query (1, 0).
    for s, params in zip(SIMS, _stored(), strict=True):
        store.add(torch.tensor([s, math.sqrt(1 - s * s)]), params, {}, {})
    adapter = MemoryAugmentedAdaptation(
        learner,
        store,
        k=2,
        tau=TAU,
        beta=BETA,
        warm_start=None,
        embed=lambda support: torch.tensor([[1.0, 0.0]]),
        write=False,
    )
    predict = adapter.adapt(Support(x[None], y[None], 0))
    w0 = learner.model.weight.detach()
    b0 = learner.model.bias.detach()
    w, b = _by_hand(w0, b0, x, y, steps=2)
    q = torch.tensor([[[0.3, -0.7], [2.0, 1.0]]], dtype=torch.float64)
    torch.testing.assert_close(predict(q), (q @ w.T + b), rtol=1e-6, atol=1e-8)
    assert len(store) == 2  # write=False


def test_warm_starts_with_zero_steps(store: Any) -> None:
    learner, x, y = _linear_regression()
    for s, params in zip(SIMS, _stored(), strict=True):
        store.add(torch.tensor([s, math.sqrt(1 - s * s)]), params, {}, {})
    q = torch.tensor([[[0.3, -0.7]]], dtype=torch.float64)
    omega = torch.tensor(SIMS, dtype=torch.float64).div(TAU).softmax(0)
    stored = _stored()
    expected = {
        "nearest": stored[0],
        "weighted": {k: omega[0] * stored[0][k] + omega[1] * stored[1][k] for k in stored[0]},
    }
    for mode, p in expected.items():
        adapter = MemoryAugmentedAdaptation(
            learner,
            store,
            k=2,
            tau=TAU,
            warm_start=mode,
            steps=0,
            embed=lambda support: torch.tensor([[1.0, 0.0]]),
            write=False,
        )
        out = adapter.adapt(Support(x[None], y[None], 0))(q)
        torch.testing.assert_close(out, q @ p["weight"].T + p["bias"], rtol=1e-6, atol=1e-8)


def test_empty_or_dissimilar_memory_is_plain_maml(store: Any) -> None:
    learner, x, y = _linear_regression()
    q = torch.tensor([[[0.3, -0.7], [1.0, 1.0]]], dtype=torch.float64)
    support = Support(x[None], y[None], 0)
    plain = learner.adapt(support)(q)
    store.add(torch.tensor([0.0, 1.0]), _stored()[0], {}, {})  # cosine 0 with the query
    adapter = MemoryAugmentedAdaptation(
        learner,
        store,
        beta=BETA,
        min_similarity=0.5,
        embed=lambda support: torch.tensor([[1.0, 0.0]]),
    )
    torch.testing.assert_close(adapter.adapt(support)(q), plain, rtol=1e-6, atol=1e-8)
    assert len(store) == 2  # written back


# ---- classification: stored heads in the new episode's label order ----


def _anil(n_way: int = 3) -> MAML:
    torch.manual_seed(0)
    model = Classifier(nn.Flatten(), 4, n_way).double()  # features = the raw 4 inputs
    return MAML(model, inner_lr=0.5, eval_inner_steps=3, adapt=("head.",), strategy="loop")


def _episode(order: list[int]) -> tuple[Support, Tensor]:
    """Three well-separated classes, 2 shots, labelled in ``order``; and 3 queries (one per
    class, in label order)."""
    centres = torch.tensor([[4.0, 0, 0, 1], [0, 4.0, 0, 1], [0, 0, 4.0, 1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(sum(order))
    c = centres[order]  # label j is class order[j]
    x = c.repeat_interleave(2, 0) + 0.1 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(2)
    return Support(x[None], y[None], 3), c[None]


def test_recurring_task_reuses_its_stored_head_in_the_new_label_order() -> None:
    learner = _anil()
    store = FakeStore()
    first, _ = _episode([0, 1, 2])
    adapter = MemoryAugmentedAdaptation(learner, store, k=1, warm_start="nearest", steps=3)
    adapter.adapt(first, info=[{"task": "abc"}])
    record = store.records[0]
    # ANIL: only the head is stored, with the class prototypes for matching labels later.
    assert set(record["params"]) == {"head.weight", "head.bias", PROTOTYPES}
    assert record["info"]["task"] == "abc" and record["info"]["n_way"] == 3
    assert record["metrics"]["support_accuracy_after"] == 1.0
    assert set(record["metrics"]) >= {"support_loss_before", "support_loss_after"}
    # The same classes, labelled the other way round: the stored head, rows permuted, must
    # label the queries correctly with no step at all.
    again, queries = _episode([2, 0, 1])
    zero_steps = MemoryAugmentedAdaptation(
        learner, store, k=1, warm_start="nearest", steps=0, write=False
    )
    logits = zero_steps.adapt(again)(queries)
    assert logits.argmax(-1).tolist() == [[0, 1, 2]]
    stored_head = record["params"]["head.weight"]
    retrieval = zero_steps.retrieve(again)
    torch.testing.assert_close(retrieval.params[0]["head.weight"], stored_head[[2, 0, 1]])
    assert retrieval.similarities[0] > 0.99  # same classes, new drawings
    # Without the memory, zero steps of ANIL is its initial head: no better than chance here.
    plain = MemoryAugmentedAdaptation(learner, FakeStore(), steps=0, write=False)
    assert plain.adapt(again)(queries).argmax(-1).tolist() != [[0, 1, 2]]


def test_other_n_way_records_are_skipped_and_parameters_unchanged() -> None:
    store = FakeStore()
    # A 5-way record (embeddings of 4 features have 4·5/2 = 10 numbers) beside a 3-way task.
    store.add(
        torch.ones(10),
        {"head.weight": torch.zeros(5, 4, dtype=torch.float64), PROTOTYPES: torch.zeros(5, 4)},
        {},
        {},
    )
    learner = _anil()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    adapter = MemoryAugmentedAdaptation(learner, store, k=5)
    support, _ = _episode([0, 1, 2])
    assert adapter.retrieve(support).params == []
    adapter.adapt(support)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert len(store) == 2


def test_user_errors() -> None:
    learner, _, _ = _linear_regression()
    with pytest.raises(MnemetaError, match="warm_start"):
        MemoryAugmentedAdaptation(learner, FakeStore(), warm_start="best", embed=lambda s: s.x)
    with pytest.raises(MnemetaError, match="embed="):
        MemoryAugmentedAdaptation(learner, FakeStore())
    anil = _anil()
    support, _ = _episode([0, 1, 2])
    with pytest.raises(MnemetaError, match="one per task"):
        MemoryAugmentedAdaptation(anil, FakeStore()).adapt(support, info=[{}, {}])


# ---- the settings, the record written, and stored tensors of another kind ----


def test_memory_adaptation_defaults() -> None:
    """k = 5 hits, τ = 0.1, no pull, a weighted warm start, no similarity floor, the learner's
    evaluation steps and step sizes, the model's encoder, the head as class parameters."""
    learner = _anil()
    a = MemoryAugmentedAdaptation(learner, FakeStore())
    assert (a.k, a.tau, a.beta, a.warm_start, a.min_similarity) == (5, 0.1, 0.0, "weighted", -1.0)
    assert a.steps == learner.eval_inner_steps == 3 and a.lr is None
    assert a.encoder is learner.model.encoder and a.embed is None
    assert a.class_params == ("head.",) and a.write is True


def test_explicit_encoder_wins() -> None:
    learner = _anil()
    mine = nn.Identity()
    assert MemoryAugmentedAdaptation(learner, FakeStore(), encoder=mine).encoder is mine


def test_memory_adaptation_bad_arguments() -> None:
    learner = _anil()
    for k, tau in [(0, 0.1), (1, 0.0), (2, -1.0)]:
        with pytest.raises(MnemetaError, match=rf"^need k >= 1 and tau > 0; got k={k}, tau={tau}$"):
            MemoryAugmentedAdaptation(learner, FakeStore(), k=k, tau=tau)
    MemoryAugmentedAdaptation(learner, FakeStore(), k=1, tau=1e-3)  # the smallest allowed
    no_encoder = MAML(nn.Linear(4, 3).double(), strategy="loop")
    with pytest.raises(
        MnemetaError,
        match=r"^the learner's model has no \.encoder for class prototypes; pass encoder=$",
    ):
        MemoryAugmentedAdaptation(no_encoder, FakeStore())
    regression, _, _ = _linear_regression()
    with pytest.raises(
        MnemetaError,
        match=r"^regression tasks have no classes to embed; pass embed=, a function from a "
        r"one-task Support to a \(1, E\) embedding$",
    ):
        MemoryAugmentedAdaptation(regression, FakeStore())
    support, _ = _episode([0, 1, 2])
    adapter = MemoryAugmentedAdaptation(learner, FakeStore())
    with pytest.raises(
        MnemetaError,
        match=r"^info is one mapping per task; pass a list, e\.g\. info=\[\{\.\.\.\}\]$",
    ):
        adapter.adapt(support, info={"task": "a"})
    with pytest.raises(MnemetaError, match="^info has 2 entries for 1 tasks; give one per task$"):
        adapter.adapt(support, info=[{}, {}])


def test_stored_record_info() -> None:
    """What adapt writes beside the tensors: the episode's shape, how it was adapted, and which
    records it was adapted from (none the first time; then the first record, weighted)."""
    store = FakeStore()
    adapter = MemoryAugmentedAdaptation(_anil(), store, k=1, beta=0.25, steps=2)
    first, _ = _episode([0, 1, 2])
    adapter.adapt(first, info=[{"task": "abc"}])
    assert store.records[0]["info"] == {
        "n_way": 3,
        "support_size": 6,
        "steps": 2,
        "warm_start": None,
        "beta": 0.25,
        "retrieved": [],
        "task": "abc",
    }
    adapter.adapt(_episode([2, 0, 1])[0])
    assert store.records[1]["info"] == {
        "n_way": 3,
        "support_size": 6,
        "steps": 2,
        "warm_start": "weighted",
        "beta": 0.25,
        "retrieved": [0],
    }


class UUIDStore(FakeStore):
    """A store whose ids are UUIDs (the TaskStore protocol allows any id)."""

    def add(self, embedding, params=None, info=None, metrics=None):  # type: ignore[no-untyped-def, override]
        return uuid.UUID(int=super().add(embedding, params, info, metrics))

    def search(self, query: Tensor, k: int = 5) -> list[FakeHit]:
        return [
            FakeHit(uuid.UUID(int=h.id), h.similarity, h.info, h.metrics)  # type: ignore[arg-type]
            for h in super().search(query, k)
        ]

    def params(self, rid: Any) -> dict[str, Tensor]:
        return super().params(rid.int)


def test_jsonable_ids() -> None:
    """Record info is JSON: ids that are not int or str are stored as str; ints stay ints."""
    store = UUIDStore()
    adapter = MemoryAugmentedAdaptation(_anil(), store, k=1)
    support, _ = _episode([0, 1, 2])
    adapter.adapt(support)
    adapter.adapt(support)
    assert store.records[1]["info"]["retrieved"] == [str(uuid.UUID(int=0))]
    ints = FakeStore()
    adapter = MemoryAugmentedAdaptation(_anil(), ints, k=1)
    adapter.adapt(support)
    adapter.adapt(support)
    assert ints.records[1]["info"]["retrieved"] == [0]


def _one_step(lr: float, learner: MAML, x: Tensor, y: Tensor) -> Tensor:
    """w − lr ∇L(w) for the linear regression of _linear_regression, by hand."""
    w, b = learner.model.weight.detach(), learner.model.bias.detach()
    r = x @ w.T + b - y
    return w - lr * (2.0 / x.shape[0]) * r.T @ x


def test_memory_adaptation_uses_eval_lr_and_its_own() -> None:
    """Without lr= the learner's *test-time* step size (eval_inner_lr 0.1, not inner_lr 0.4);
    with lr= that one."""
    torch.manual_seed(0)
    learner = MAML(
        nn.Linear(2, 1).double(),
        task="regression",
        inner_lr=0.4,
        eval_inner_lr=0.1,
        eval_inner_steps=1,
        strategy="loop",
    )
    _, x, y = _linear_regression()
    support = Support(x[None], y[None], 0)
    embed = lambda s: s.x.flatten(1)[:, :2].float()  # noqa: E731 - uses the support
    for lr, want in [(None, 0.1), (0.05, 0.05)]:
        a = MemoryAugmentedAdaptation(learner, FakeStore(), embed=embed, lr=lr, write=False)
        retrieval = a.retrieve(support)
        fast = a.fast_weights(support, a.start(retrieval), retrieval=retrieval)
        torch.testing.assert_close(
            fast["weight"], _one_step(want, learner, x, y), rtol=1e-12, atol=1e-14
        )
        # an explicit steps= overrides the adapter's
        none = a.fast_weights(support, a.start(retrieval), retrieval=retrieval, steps=0)
        assert torch.equal(none["weight"], learner.model.weight.detach())


def test_retrieval_honours_k_and_an_inclusive_floor() -> None:
    """k hits at most; a hit exactly at min_similarity is kept (only *less* similar ones are
    ignored); the embedding is the embed function's of this support."""
    learner, x, y = _linear_regression()
    store = FakeStore()
    for s, params in zip(SIMS, _stored(), strict=True):
        store.add(torch.tensor([s, math.sqrt(1 - s * s)]), params, {}, {})
    support = Support(x[None], y[None], 0)
    seen: list[Tensor] = []

    def embed(s: Support) -> Tensor:
        seen.append(s.x)
        return torch.tensor([[1.0, 0.0]])

    one = MemoryAugmentedAdaptation(learner, store, k=1, embed=embed, write=False)
    assert one.retrieve(support).ids == [0] and torch.equal(seen[0], support.x)
    floor = store.search(torch.tensor([1.0, 0.0]))[1].similarity  # the second hit's exactly
    kept = MemoryAugmentedAdaptation(
        learner, store, k=2, embed=embed, min_similarity=floor, write=False
    )
    assert kept.retrieve(support).ids == [0, 1]
    above = MemoryAugmentedAdaptation(
        learner, store, k=2, embed=embed, min_similarity=floor + 1e-6, write=False
    )
    assert above.retrieve(support).ids == [0]


def test_unfit_record_is_skipped_for_regression() -> None:
    """A record whose tensors have other shapes (another model) is not used, and does not stop
    retrieval: the fitting record after it is found."""
    learner, x, y = _linear_regression()
    store = FakeStore()
    store.add(
        torch.tensor([1.0, 0.0]), {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}, {}, {}
    )
    store.add(torch.tensor([0.9, math.sqrt(1 - 0.81)]), _stored()[0], {}, {})
    a = MemoryAugmentedAdaptation(
        learner, store, k=2, embed=lambda s: torch.tensor([[1.0, 0.0]]), write=False
    )
    assert a.retrieve(Support(x[None], y[None], 0)).ids == [1]


class HeadRegressor(nn.Module):
    """A regression model with an encoder and a 'head.' layer (names like a classifier's)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(2, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.encoder(x)))


def test_regression_with_a_head_parameter() -> None:
    """Regression has no prototypes, so a stored 'head.' tensor is used as it is (no label
    matching), and the warm start takes it."""
    torch.manual_seed(0)
    learner = MAML(HeadRegressor().double(), task="regression", strategy="loop")
    store = FakeStore()
    stored = {k: v.detach() + 1.0 for k, v in learner.model.named_parameters()}
    store.add(torch.tensor([1.0, 0.0]), stored, {}, {})
    a = MemoryAugmentedAdaptation(
        learner, store, k=1, warm_start="nearest", embed=lambda s: torch.tensor([[1.0, 0.0]])
    )
    _, x, y = _linear_regression()
    retrieval = a.retrieve(Support(x[None], y[None], 0))
    assert retrieval.ids == [0]
    start = a.start(retrieval)
    for k, v in stored.items():
        assert torch.equal(start[k], v), k


def _maml_classifier() -> MAML:
    """Full MAML (encoder and head adapted) on 4 raw features through a 4x4 encoder layer."""
    torch.manual_seed(0)
    model = Classifier(nn.Linear(4, 4), 4, 3).double()
    return MAML(model, inner_lr=0.5, eval_inner_steps=3, strategy="loop")


def test_warm_start_permutes_only_the_head() -> None:
    """A stored task with labels in another order: its head rows are permuted into the new
    order, its encoder tensors are taken as they are."""
    learner = _maml_classifier()
    store = FakeStore()
    MemoryAugmentedAdaptation(learner, store, k=1, steps=2).adapt(_episode([0, 1, 2])[0])
    record = store.records[0]["params"]
    again, _ = _episode([2, 0, 1])
    a = MemoryAugmentedAdaptation(learner, store, k=1, warm_start="nearest", write=False)
    start = a.start(a.retrieve(again))
    for k in ("encoder.weight", "encoder.bias"):
        assert torch.equal(start[k], record[k]), k
    # protos of the new episode are computed by the learner's encoder: matching assumes it
    # maps the same classes near one another, which the separated classes ensure here
    assert torch.equal(start["head.weight"], record["head.weight"][[2, 0, 1]])
    assert torch.equal(start["head.bias"], record["head.bias"][[2, 0, 1]])


def test_stored_head_only_keeps_the_other_initial_tensors() -> None:
    """A record that holds only the head (written by ANIL) warm-starts full MAML's head; the
    encoder starts from the meta-learned initialisation."""
    learner = _maml_classifier()
    store = FakeStore()
    head = {
        "head.weight": torch.ones(3, 4, dtype=torch.float64),
        "head.bias": torch.zeros(3, dtype=torch.float64),
    }
    support, _ = _episode([0, 1, 2])
    probe = MemoryAugmentedAdaptation(learner, FakeStore(), write=False)
    protos = probe.retrieve(support).prototypes
    store.add(probe.retrieve(support).embedding, {**head, PROTOTYPES: protos}, {}, {})
    a = MemoryAugmentedAdaptation(learner, store, k=1, warm_start="nearest", write=False)
    start = a.start(a.retrieve(support))
    assert torch.equal(start["head.weight"], head["head.weight"])
    assert torch.equal(start["encoder.weight"], learner.model.encoder.weight.detach())


def test_record_without_prototypes_is_skipped() -> None:
    """A classification record whose head came without prototypes (or with prototypes of
    another shape) cannot be put in the new label order, so it is not used."""
    learner = _anil()
    support, _ = _episode([0, 1, 2])
    probe = MemoryAugmentedAdaptation(learner, FakeStore(), write=False)
    embedding = probe.retrieve(support).embedding
    head = {k: v.detach() for k, v in learner.model.head.named_parameters(prefix="head")}
    store = FakeStore()
    store.add(embedding, dict(head), {}, {})
    store.add(embedding, {**head, PROTOTYPES: torch.zeros(2, 4, dtype=torch.float64)}, {}, {})
    a = MemoryAugmentedAdaptation(learner, store, k=5, write=False)
    assert a.retrieve(support).ids == []


def test_memory_adaptation_converts_stored_tensors() -> None:
    """A float64 learner warm-started (and pulled) from a memory written in float32 adapts in
    float64: start, anchor and prototypes are converted to the learner's dtype."""
    learner = _anil()
    store = FakeStore()
    MemoryAugmentedAdaptation(learner, store, k=1, steps=1).adapt(_episode([0, 1, 2])[0])
    rec = store.records[0]["params"]
    store.records[0]["params"] = {k: v.float() for k, v in rec.items()}
    a = MemoryAugmentedAdaptation(learner, store, k=1, beta=0.5, steps=1, write=False)
    again, queries = _episode([2, 0, 1])
    retrieval = a.retrieve(again)
    start = a.start(retrieval)
    assert all(v.dtype == torch.float64 for v in start.values())
    fast = a.fast_weights(again, start, retrieval=retrieval)
    assert all(v.dtype == torch.float64 for v in fast.values())
    assert a.adapt(again)(queries).dtype == torch.float64
