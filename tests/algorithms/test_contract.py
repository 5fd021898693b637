"""The contract every meta-learner in mnemeta passes (DESIGN.md: one common-checks suite).

Every learner registered for the episodic recipe (``mnemeta.registry.LEARNERS``) is checked as
``registered-<name>``, built from its own config's defaults through the registry exactly as the
CLI builds it (a tiny Conv-4, 16x16 images); LEARNERS below adds hand-built variants. Each is
checked for: the protocol's methods and what they return,
a finite loss and detached metrics, a non-zero gradient on every parameter (bar the listed
structural zeros, which are checked to be zero), metrics that agree with adapt's predictions,
``adapt`` leaving the meta-parameters unchanged, determinism under a seed, and a batch of
tasks scoring the same as the tasks one by one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from mnemeta.algorithms import MatchingNet, MetaLearner, ProtoNet
from mnemeta.algorithms.maml import MAML, Classifier
from mnemeta.algorithms.meta_memory import MetaMemoryNet
from mnemeta.algorithms.reptile import Reptile
from mnemeta.config import config_from_dict
from mnemeta.data.glyphs import make_glyphs
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.episode import EpisodeBatch
from mnemeta.nn import Conv4, ResidualAdapter
from mnemeta.recipes.build import build_learner
from mnemeta.registry import LEARNERS as REGISTRY

#: Settings the tiny batch below needs, beyond each learner's defaults: Reptile's test-time
#: mini-batches must hold the whole support set (6), or a batch of tasks and the same tasks one
#: by one would draw different mini-batches.
TINY: dict[str, dict[str, object]] = {"reptile": {"eval_inner_batch": 6}}


def _registered(name: str, hidden: int = 8, **settings: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = {"algorithm": name, **TINY.get(name, {}), **settings}
        config = config_from_dict({"model": model, "backbone": {"hidden": hidden}})
        learner: nn.Module = build_learner(config, (1, 16, 16), n_way=3, classes=12)
        return learner

    return build


REGISTERED = {
    f"registered-{spec.name}": _registered(spec.name)
    for spec in REGISTRY
    if spec.recipe == "episodic"
}

LEARNERS: dict[str, Callable[[], nn.Module]] = {
    **REGISTERED,
    # The backbones over flat features (sentence embeddings), here over flattened images.
    "protonet-adapter": _registered("protonet", backbone="adapter", distance="cosine", scale=10.0),
    "anil-adapter": _registered("anil", backbone="adapter"),
    # cosine: a shift of every embedding leaves squared Euclidean distances unchanged.
    "protonet-feature-scale": _registered(
        "protonet", hidden=0, backbone="adapter", distance="cosine", scale=10.0
    ),
    "protonet": lambda: ProtoNet(Conv4(1, 8, primitive_bn=False)),
    "protonet-cosine": lambda: ProtoNet(Conv4(1, 8), distance="cosine"),
    "matching": lambda: MatchingNet(Conv4(1, 8), embedding_dim=8),
    "matching-fce": lambda: MatchingNet(Conv4(1, 8), embedding_dim=8, fce=True),
    "maml": lambda: MAML(_net(), inner_lr=0.4, inner_steps=2, eval_inner_steps=3),
    "fomaml": lambda: MAML(_net(), first_order=True),
    "metasgd": lambda: MAML(_net(), inner_lr=0.1, learn_inner_lr=True),
    "anil": lambda: MAML(_net(), adapt=("head.",)),
    "maml-vmap": lambda: MAML(_net(), strategy="vmap"),
    # Full-batch inner steps (support = 6): mini-batches are random draws, which would make a
    # batch of tasks and the same tasks one by one see different mini-batches.
    "reptile": lambda: Reptile(
        _net(), inner_steps=2, eval_inner_steps=3, inner_batch=6, eval_inner_batch=6
    ),
    "meta_memory": lambda: MetaMemoryNet(Conv4(1, 8), 8, hops=2, inner_steps=2, eval_inner_steps=3),
    "meta_memory-first-order": lambda: MetaMemoryNet(Conv4(1, 8), 8, hops=1, first_order=True),
}


# The same learners with the test-time settings equal to the training ones, so that adapt's
# predictions are the ones meta_loss scores (the others differ only there).
SAME_AT_TEST_TIME: dict[str, Callable[[], nn.Module]] = {
    **LEARNERS,
    "maml": lambda: MAML(_net(), inner_lr=0.4, inner_steps=2),
    "reptile": lambda: Reptile(
        _net(), inner_steps=2, eval_inner_steps=2, inner_batch=6, eval_inner_batch=6
    ),
    "meta_memory": lambda: MetaMemoryNet(Conv4(1, 8), 8, hops=2, inner_steps=2),
    # Fine-tuning on the support happens in adapt only: with none, adapt is meta_loss's ProtoNet.
    "registered-support_finetune": _registered("support_finetune", finetune_steps=0),
}


def _net() -> nn.Module:
    """Conv-4 with per-task batch statistics and a 3-way head, as MAML uses it."""
    return Classifier(Conv4(1, 8, track_running_stats=False), 8, 3)


@pytest.fixture(scope="module")
def batch() -> EpisodeBatch:
    sampler = EpisodeSampler(make_glyphs(12, 6, image_size=16), ways=3, shots=2, queries=2, seed=1)
    return sampler.sample(4)


def _make(name: str, *, same_at_test_time: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return (SAME_AT_TEST_TIME if same_at_test_time else LEARNERS)[name]()


def _float64(batch: EpisodeBatch) -> EpisodeBatch:
    return EpisodeBatch(
        batch.support_x.double(),
        batch.support_y,
        batch.query_x.double(),
        batch.query_y,
        batch.n_way,
        batch.classes,
    )


@pytest.mark.parametrize("name", LEARNERS)
def test_follows_the_protocol(name: str, batch: EpisodeBatch) -> None:
    # isinstance on a runtime Protocol checks only that the two names exist; what they return
    # is checked below.
    learner = _make(name)
    assert isinstance(learner, MetaLearner)
    result = learner.meta_loss(batch)
    assert isinstance(result, tuple) and len(result) == 2
    loss, metrics = result
    assert isinstance(loss, Tensor) and loss.dim() == 0 and loss.requires_grad
    assert torch.isfinite(loss)
    assert isinstance(metrics, dict) and {"loss", "accuracy"} <= set(metrics)
    for key, value in metrics.items():
        assert isinstance(value, Tensor) and value.dim() == 0, key
        assert not value.requires_grad, f"metric {key} is not detached"
        assert torch.isfinite(value), key
    predict = learner.adapt(batch.support)
    assert callable(predict)
    t, q = batch.query_y.shape
    assert predict(batch.query_x).shape == (t, q, batch.n_way)
    # Any number of queries, not only the number meta_loss saw.
    assert predict(batch.query_x[:, :1]).shape == (t, 1, batch.n_way)


def _structurally_zero(name: str) -> bool:
    """Parameters whose gradient is zero for a reason of structure, not of a bug.

    Only one kind: the bias of a convolution followed by batch norm with batch statistics
    (every ConvBlock of Conv-4, in training mode). BN subtracts the channel's batch mean, and
    a bias adds the same constant to every entry of its channel, shifting that mean by the
    same amount: BN's output, hence the loss, does not depend on it. The zero carries over
    to Meta-SGD's step size of that bias (its inner step b − α·0 does not depend on α) and
    to Reptile (Adam does not move a weight whose gradient is zero, so θ − φ is zero there).
    """
    return name.endswith(("conv.bias", "conv__bias"))


def _behind_a_zero_layer(learner: nn.Module) -> set[str]:
    """The other structural zero: a ResidualAdapter starts as the identity, its last layer all
    zeros, so the layers before that layer get no gradient until it has moved (as every
    zero-initialised residual branch). Its own weights do get one."""
    names = set()
    for prefix, module in learner.named_modules():
        branch = module.branch if isinstance(module, ResidualAdapter) else None
        if branch is not None and not branch[-1].weight.any():
            for sub in ("0", "1"):  # its LayerNorm and first Linear
                names |= {
                    f"{prefix}.branch.{sub}.{n}" for n, _ in branch[int(sub)].named_parameters()
                }
    return names


@pytest.mark.parametrize("name", LEARNERS)
def test_every_parameter_gets_a_gradient(name: str, batch: EpisodeBatch) -> None:
    # Float64, so that the structural zeros stay at rounding level (~1e-16 of the largest
    # gradient; Reptile's Adam step g/(|g| + 1e-8) amplifies that rounding to ~4e-9), far
    # from real gradients: the smallest non-exempt one measured is 4.7e-4 of the largest
    # (ProtoNet's last BN bias, nearly shift-invariant under the squared distance). The two
    # thresholds sit between, with more than an order of magnitude to spare on each side.
    learner = _make(name).double()
    loss, _ = learner.meta_loss(_float64(batch))
    loss.backward()
    grads = {}
    for pname, p in learner.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient: it is not in the graph"
        assert torch.isfinite(p.grad).all(), pname
        grads[pname] = p.grad.abs().max().item()
    largest = max(grads.values())
    assert largest > 0
    zero_at_start = _behind_a_zero_layer(learner)
    # A structural zero is only zero up to rounding, and Reptile's inner Adam divides by
    # sqrt(v) + eps, which turns that rounding (~1e-16) into steps up to lr * noise / eps: up to
    # 1.3e-7 of the largest gradient seen with Reptile's default 5 steps. Real gradients are at
    # least 4.7e-4 of the largest here, so the two bounds stay 50x apart.
    for pname, g in grads.items():
        if _structurally_zero(pname) or pname in zero_at_start:
            assert g <= 1e-6 * largest, f"{pname}: {g / largest:.1e}, expected a structural 0"
        else:
            assert g > 1e-5 * largest, f"{pname}: gradient {g / largest:.1e} of the largest"


#: Learners whose meta-training loss is not a few-shot loss on the episode's queries: Baseline++
#: pre-trains a classifier over every base class (its metrics are base-class accuracy), and
#: only at test time learns a head for the episode's classes. Its own tests check both.
NOT_EPISODIC_LOSS = ("registered-baseline_pp",)


@pytest.mark.parametrize("name", [n for n in LEARNERS if n not in NOT_EPISODIC_LOSS])
def test_metrics_agree_with_the_predictions(name: str, batch: EpisodeBatch) -> None:
    # In eval mode, with the test-time settings equal to the training ones, adapt's logits are
    # those meta_loss scores, so its metrics are computable from them by hand. Accuracy:
    # the fraction of argmax hits (every task has the same number of queries, so the mean of
    # per-task fractions is the overall fraction); a count off by one moves it by
    # 1/24 = 0.04, far above the float32 rounding (1e-7) that `accuracy` computes in.
    learner = _make(name, same_at_test_time=True).double().eval()
    batch64 = _float64(batch)
    _, metrics = learner.meta_loss(batch64)
    with torch.no_grad():
        logits = learner.adapt(batch64.support)(batch64.query_x)
    hits = (logits.argmax(dim=-1) == batch64.query_y).sum().item()
    fraction = hits / batch64.query_y.numel()
    assert abs(metrics["accuracy"].item() - fraction) < 1e-6
    # The loss: the query cross-entropy of those logits. Matching Networks' logits are the
    # logs of attention mixtures floored at 1e-8: their softmax renormalises a sum that is 1
    # up to n_way * 1e-8, hence the looser bound there; elsewhere the two computations are
    # the same float64 maths.
    log_p = logits.log_softmax(dim=-1)
    by_hand = -log_p.gather(-1, batch64.query_y.unsqueeze(-1)).mean()
    atol = batch.n_way * 1e-8 if name.startswith("matching") else 1e-10
    torch.testing.assert_close(metrics["loss"], by_hand, rtol=1e-10, atol=atol)


@pytest.mark.parametrize("name", LEARNERS)
def test_adapt_leaves_meta_parameters_unchanged(name: str, batch: EpisodeBatch) -> None:
    learner = _make(name)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    learner.eval()
    logits = learner.adapt(batch.support)(batch.query_x)
    assert logits.shape == (*batch.query_y.shape, batch.n_way)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), f"adapt changed {k}"


@pytest.mark.parametrize("name", LEARNERS)
def test_same_seed_same_result(name: str, batch: EpisodeBatch) -> None:
    a, _ = _make(name).meta_loss(batch)
    b, _ = _make(name).meta_loss(batch)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", LEARNERS)
def test_batch_of_tasks_equals_tasks_one_by_one(name: str, batch: EpisodeBatch) -> None:
    # In eval mode nothing couples the tasks of a batch (BN uses running statistics or the
    # statistics of each task), so the reported query loss must be the mean of per-task losses
    # (the *optimised* loss need not be: Reptile's surrogate is not a mean over tasks), and
    # predictions must match exactly.
    learner = _make(name).double().eval()
    batch64 = _float64(batch)
    loss = learner.meta_loss(batch64)[1]["loss"]
    per_task = [learner.meta_loss(batch64.task(i))[1]["loss"] for i in range(batch.n_tasks)]
    torch.testing.assert_close(loss, torch.stack(per_task).mean())
    logits = learner.adapt(batch64.support)(batch64.query_x)
    for i in range(batch.n_tasks):
        one = batch64.task(i)
        torch.testing.assert_close(logits[i : i + 1], learner.adapt(one.support)(one.query_x))
