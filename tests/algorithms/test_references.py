"""Every learner against a float64 reference written separately here (issue 19, deliverable 1).

Each reference below is plain tensor maths on the learner's own parameter tensors — matrix
products, a hand-written softmax, log-sum-exp, LSTM cell and Adam — differentiated with
``torch.autograd``. No mnemeta function runs inside a reference, so a bug in mnemeta's code
path cannot be copied into the expected value. Everything is float64 and the maths is the
same up to summation order, so the tolerance is ~1e-10 (``RTOL``).

The models are tiny and their shapes are chosen pairwise distinct (tasks T, support S, queries
Q, classes N, features F, embedding D), so that a reduction or a softmax on the wrong axis
cannot coincide with the right one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from mnemeta.algorithms import MatchingNet, ProtoNet
from mnemeta.algorithms.inner_loop import MemoryPull, inner_adapt
from mnemeta.algorithms.maml import MAML, Classifier
from mnemeta.algorithms.meta_memory import MetaMemoryNet
from mnemeta.algorithms.reptile import Reptile
from mnemeta.episode import EpisodeBatch, Support

DT = torch.float64
RTOL, ATOL = 1e-10, 1e-12

# Shapes of the optimisation-based tests: T tasks, N classes, S = N * shots, Q = N * queries,
# F input features, H hidden units. All distinct.
T, N, SHOTS, QUERIES, F, H = 3, 4, 2, 3, 5, 7

Params = dict[str, Tensor]


# ---------------------------------------------------------------------------------------------
# Hand-written building blocks (no mnemeta code)
# ---------------------------------------------------------------------------------------------


def _softmax(x: Tensor, dim: int) -> Tensor:
    e = (x - x.amax(dim=dim, keepdim=True)).exp()
    return e / e.sum(dim=dim, keepdim=True)


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of ``(n, C)`` logits: log Σ exp(z) − z_y, with the max pulled out."""
    top = logits.amax(dim=-1, keepdim=True)
    log_sum = top.squeeze(-1) + (logits - top).exp().sum(dim=-1).log()
    return (log_sum - logits[torch.arange(len(y)), y]).mean()


def _sigmoid(x: Tensor) -> Tensor:
    return 1.0 / (1.0 + (-x).exp())


def _norm(x: Tensor) -> Tensor:
    """Euclidean norm of each row (last axis), ``(n, D) -> (n,)``."""
    return x.square().sum(dim=-1).sqrt()


def _close(actual: Tensor, expected: Tensor, what: str = "") -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def _episodes(
    tasks: int, n_way: int, shots: int, queries: int, features: int, *, seed: int
) -> EpisodeBatch:
    """Random float64 episodes; labels are a shuffled ``shots``/``queries`` per class."""
    g = torch.Generator().manual_seed(seed)

    def labels(per_class: int) -> Tensor:
        return torch.stack(
            [torch.randperm(n_way * per_class, generator=g) % n_way for _ in range(tasks)]
        )

    sy, qy = labels(shots), labels(queries)
    sx = torch.randn(tasks, n_way * shots, features, generator=g, dtype=DT)
    qx = torch.randn(tasks, n_way * queries, features, generator=g, dtype=DT)
    return EpisodeBatch(sx, sy, qx, qy, n_way)


def _batch(seed: int = 0) -> EpisodeBatch:
    return _episodes(T, N, SHOTS, QUERIES, F, seed=seed)


def _grads(learner: nn.Module, batch: EpisodeBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """mnemeta's meta-loss and the gradient it leaves on every parameter of ``learner``."""
    learner.zero_grad()
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    return metrics["loss"], {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for n, p in learner.named_parameters()
    }


# ---------------------------------------------------------------------------------------------
# MAML family: a tanh MLP classifier, x -> tanh(x W1ᵀ + b1) W2ᵀ + b2
# ---------------------------------------------------------------------------------------------


def _classifier(seed: int = 0) -> Classifier:
    """``encoder.0`` (F -> H, tanh) then ``head`` (H -> N); tanh so that the second-order terms
    of the meta-gradient are not zero (a ReLU net's Hessian vanishes almost everywhere)."""
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Linear(F, H), nn.Tanh()), H, N).to(DT)


def _mlp(w: Params, x: Tensor) -> Tensor:
    hidden = torch.tanh(x @ w["encoder.0.weight"].T + w["encoder.0.bias"])
    return hidden @ w["head.weight"].T + w["head.bias"]


def _sgd(
    w: Params,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float | Params,
    adapted: tuple[str, ...],
    first_order: bool,
) -> Params:
    """``steps`` inner steps w ← w − α ∇L_support(w) on the names in ``adapted`` (MAML eq. 1;
    Meta-SGD when ``lr`` is a tensor per weight). First order: the inner gradient is a constant
    of the meta-gradient."""
    for _ in range(steps):
        g = torch.autograd.grad(
            _ce(_mlp(w, x), y),
            [w[k] for k in adapted],
            create_graph=not first_order,
            retain_graph=True,
        )
        w = dict(w)
        for k, gk in zip(adapted, g, strict=True):
            step = lr[k] if isinstance(lr, dict) else lr
            w[k] = w[k] - step * (gk.detach() if first_order else gk)
    return w


def _maml_reference(
    theta: Params,
    batch: EpisodeBatch,
    *,
    steps: int,
    lr: float | Params,
    adapted: tuple[str, ...],
    first_order: bool,
) -> Tensor:
    """Mean over tasks of the query loss after the inner steps."""
    total = torch.zeros((), dtype=DT)
    for t in range(batch.n_tasks):
        fast = _sgd(
            theta,
            batch.support_x[t],
            batch.support_y[t],
            steps=steps,
            lr=lr,
            adapted=adapted,
            first_order=first_order,
        )
        total = total + _ce(_mlp(fast, batch.query_x[t]), batch.query_y[t])
    return total / batch.n_tasks


ALL = ("encoder.0.weight", "encoder.0.bias", "head.weight", "head.bias")


def _check_maml(
    learner: MAML,
    batch: EpisodeBatch,
    extra: dict[str, Tensor],
    reference: Callable[[], Tensor],
) -> None:
    """mnemeta's loss and gradients equal the reference's, for the model's weights and for the
    learner parameters in ``extra`` (name in the reference -> the learner's tensor)."""
    loss, _ = _grads(learner, batch)
    theta = dict(learner.model.named_parameters())
    wrt = {**theta, **extra}
    expected = reference()
    expected_grads = torch.autograd.grad(expected, list(wrt.values()))
    _close(loss, expected.detach(), "meta-loss")
    for (name, p), g in zip(wrt.items(), expected_grads, strict=True):
        assert p.grad is not None, f"{name} received no gradient"
        assert g.abs().max() > 1e-6, f"reference gradient of {name} is ~0: the test is blind"
        _close(p.grad, g, name)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_maml_cross_entropy_two_steps(strategy: str) -> None:
    learner = MAML(_classifier(), inner_lr=0.3, inner_steps=2, strategy=strategy)
    batch = _batch()
    theta = dict(learner.model.named_parameters())
    _check_maml(
        learner,
        batch,
        {},
        lambda: _maml_reference(theta, batch, steps=2, lr=0.3, adapted=ALL, first_order=False),
    )


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_first_order_maml_cross_entropy(strategy: str) -> None:
    learner = MAML(_classifier(), inner_lr=0.3, inner_steps=2, first_order=True, strategy=strategy)
    batch = _batch(1)
    theta = dict(learner.model.named_parameters())
    _check_maml(
        learner,
        batch,
        {},
        lambda: _maml_reference(theta, batch, steps=2, lr=0.3, adapted=ALL, first_order=True),
    )


def test_first_and_second_order_references_differ() -> None:
    # Guards the two tests above: on this net the second-order terms are far above the
    # tolerance, so a learner that silently dropped them could not pass the second-order test.
    theta = dict(_classifier().named_parameters())
    batch = _batch()
    second, first = (
        torch.autograd.grad(
            _maml_reference(theta, batch, steps=2, lr=0.3, adapted=ALL, first_order=fo),
            list(theta.values()),
        )
        for fo in (False, True)
    )
    assert max((a - b).abs().max().item() for a, b in zip(second, first, strict=True)) > 1e-3


def _step_sizes(learner: MAML) -> dict[str, Tensor]:
    """Meta-SGD's learned α, keyed by the name of the weight each scales (the ParameterDict
    ``inner_lrs`` replaces the dots of a name by ``__``)."""
    alphas = {k.replace("__", "."): v for k, v in learner.inner_lrs.items()}
    assert set(alphas) == set(dict(learner.model.named_parameters())), sorted(alphas)
    return alphas


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_meta_sgd_gradients_of_weights_and_of_every_step_size(strategy: str) -> None:
    learner = MAML(
        _classifier(), inner_lr=0.1, inner_steps=2, learn_inner_lr=True, strategy=strategy
    )
    alphas = _step_sizes(learner)
    # Distinct positive step sizes per element, so that a step size applied to the wrong
    # element (or one shared α) changes the result.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for a in alphas.values():
            a.copy_(0.05 + 0.3 * torch.rand(a.shape, generator=g, dtype=DT))
    batch = _batch(2)
    theta = dict(learner.model.named_parameters())
    extra = {f"α {k}": v for k, v in alphas.items()}
    _check_maml(
        learner,
        batch,
        extra,
        lambda: _maml_reference(theta, batch, steps=2, lr=alphas, adapted=ALL, first_order=False),
    )


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_anil_adapts_the_head_and_differentiates_the_body_through_it(strategy: str) -> None:
    learner = MAML(_classifier(), inner_lr=0.5, inner_steps=2, adapt=("head.",), strategy=strategy)
    batch = _batch(3)
    theta = dict(learner.model.named_parameters())
    head = ("head.weight", "head.bias")
    _check_maml(
        learner,
        batch,
        {},
        lambda: _maml_reference(theta, batch, steps=2, lr=0.5, adapted=head, first_order=False),
    )
    # The body's meta-gradient includes the path through the head's inner steps (the inner
    # gradient of the head depends on the body's features): without it, it would be the
    # gradient of the query loss at the adapted head with the inner steps held fixed.
    body = ["encoder.0.weight", "encoder.0.bias"]
    held = _maml_reference(theta, batch, steps=2, lr=0.5, adapted=head, first_order=True)
    fo_body = torch.autograd.grad(held, [theta[k] for k in body])
    gap = max((theta[k].grad - g).abs().max().item() for k, g in zip(body, fo_body, strict=True))
    assert gap > 1e-4


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_maml_adapt_uses_the_test_time_steps_and_step_size(strategy: str) -> None:
    learner = MAML(
        _classifier(),
        inner_lr=0.3,
        inner_steps=1,
        eval_inner_steps=3,
        eval_inner_lr=0.1,
        strategy=strategy,
    )
    batch = _batch(4)
    with torch.no_grad():  # evaluation runs under no_grad; the inner loop must still work
        logits = learner.adapt(batch.support)(batch.query_x)
    theta = {k: v.detach() for k, v in learner.model.named_parameters()}

    def by_hand(steps: int, lr: float) -> Tensor:
        out = []
        for t in range(batch.n_tasks):
            w = {k: v.clone().requires_grad_() for k, v in theta.items()}
            sx, sy = batch.support_x[t], batch.support_y[t]
            fast = _sgd(w, sx, sy, steps=steps, lr=lr, adapted=ALL, first_order=True)
            out.append(_mlp(fast, batch.query_x[t]).detach())
        return torch.stack(out)

    assert logits.shape == (T, N * QUERIES, N)
    _close(logits, by_hand(3, 0.1), "adapt with eval_inner_steps=3, eval_inner_lr=0.1")
    # Each of the training settings alone moves the predictions far beyond the tolerance, so
    # an adapt that used inner_steps or inner_lr could not pass the check above.
    for steps, lr in ((1, 0.3), (1, 0.1), (3, 0.3)):
        assert (logits - by_hand(steps, lr)).abs().max() > 1e-3, (steps, lr)


# ---------------------------------------------------------------------------------------------
# Memory pull: θ ← θ − α∇L(θ) + β(θ̄ − θ), both terms at the same θ
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_order", [True, False])
def test_memory_pull_over_several_steps(first_order: bool) -> None:
    model = _classifier()
    batch = _batch(5)
    x, y, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    theta = dict(model.named_parameters())
    g = torch.Generator().manual_seed(7)
    # encoder.0.bias is left out of the anchor: a tensor missing from it is not pulled.
    anchor = {
        k: theta[k].detach() + 0.5 * torch.randn(theta[k].shape, generator=g, dtype=DT)
        for k in ("encoder.0.weight", "head.weight", "head.bias")
    }
    alpha, beta, steps = 0.3, 0.25, 4
    fast = inner_adapt(
        model,
        theta,
        {},
        x,
        y,
        loss_fn=lambda out, target: _ce(out, target),
        steps=steps,
        lr=alpha,
        first_order=first_order,
        pull=MemoryPull(anchor, beta),
    )

    w = dict(theta)
    for _ in range(steps):
        grads = torch.autograd.grad(
            _ce(_mlp(w, x), y), list(w.values()), create_graph=not first_order
        )
        new = {}
        for (k, wk), gk in zip(w.items(), grads, strict=True):
            gk = gk.detach() if first_order else gk
            new[k] = wk - alpha * gk + (beta * (anchor[k] - wk) if k in anchor else 0.0)
        w = new
    for k in ALL:
        _close(fast[k], w[k], k)
    # The meta-gradient through the pulled steps (first order: through the pull's (1 − β)θ
    # and the identity paths only).
    ours = torch.autograd.grad(_ce(_mlp(fast, qx), qy), list(theta.values()))
    ref = torch.autograd.grad(_ce(_mlp(w, qx), qy), list(theta.values()))
    for k, a, b in zip(ALL, ours, ref, strict=True):
        _close(a, b, f"meta-gradient {k}")


# ---------------------------------------------------------------------------------------------
# Reptile: k steps of Adam (β₁ = 0, β₂ = 0.999, ε = 1e-8), then θ + ε(mean φ − θ)
# ---------------------------------------------------------------------------------------------


def _adam(
    theta: Params,
    x: Tensor,
    y: Tensor,
    batches: list[Tensor],
    *,
    lr: float,
    betas: tuple[float, float] = (0.0, 0.999),
    eps: float = 1e-8,
) -> Params:
    """Adam (Kingma & Ba, Algorithm 1) with bias correction, one step per index set."""
    b1, b2 = betas
    phi = {k: v.detach().clone() for k, v in theta.items()}
    m = {k: torch.zeros_like(v) for k, v in phi.items()}
    v = {k: torch.zeros_like(p) for k, p in phi.items()}
    for t, idx in enumerate(batches, start=1):
        leaves = {k: p.clone().requires_grad_() for k, p in phi.items()}
        g = dict(
            zip(
                leaves,
                torch.autograd.grad(_ce(_mlp(leaves, x[idx]), y[idx]), list(leaves.values())),
                strict=True,
            )
        )
        for k in phi:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k]
            m_hat = m[k] / (1 - b1**t)
            v_hat = v[k] / (1 - b2**t)
            phi[k] = phi[k] - lr * m_hat / (v_hat.sqrt() + eps)
    return phi


def _epoch_draws(tasks: int, n: int, steps: int, size: int) -> list[list[Tensor]]:
    """The documented mini-batch rule of Reptile, drawn from the global RNG: per task in turn,
    shuffled epochs over its ``n`` support items (``torch.randperm(n)`` each), concatenated and
    cut into ``steps`` consecutive mini-batches of ``min(size, n)``."""
    size = min(size, n)
    epochs = math.ceil(steps * size / n)
    out = []
    for _ in range(tasks):
        order = torch.cat([torch.randperm(n) for _ in range(epochs)])[: steps * size]
        out.append(list(order.view(steps, size)))
    return out


def _full_batches(tasks: int, n: int, steps: int) -> list[list[Tensor]]:
    return [[torch.arange(n)] * steps for _ in range(tasks)]


def _check_reptile_step(learner: Reptile, batch: EpisodeBatch, draws: list[list[Tensor]]) -> None:
    theta = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    lr, epsilon = learner.inner_lr, 0.7
    phis = [
        _adam(theta, batch.support_x[t], batch.support_y[t], draws[t], lr=lr)
        for t in range(batch.n_tasks)
    ]
    query_loss = sum(
        _ce(_mlp(phi, batch.query_x[t]), batch.query_y[t]).detach() for t, phi in enumerate(phis)
    )
    optimizer = torch.optim.SGD(learner.parameters(), lr=epsilon)
    optimizer.zero_grad()
    surrogate, metrics = learner.meta_loss(batch)
    surrogate.backward()
    optimizer.step()
    _close(metrics["loss"], query_loss / batch.n_tasks, "query loss at φ")
    for k, p in learner.model.named_parameters():
        mean_phi = sum(phi[k] for phi in phis) / len(phis)
        # The inner steps move the weights far beyond the tolerance (Adam's steps are ~lr).
        assert (mean_phi - theta[k]).abs().max() > 1e-3, k
        _close(p.detach(), theta[k] + epsilon * (mean_phi - theta[k]), k)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_reptile_three_full_batch_adam_steps(strategy: str) -> None:
    # inner_batch ≥ the support size: every step sees the whole support set (in some order,
    # which a mean loss does not see), so the result does not depend on the random draws.
    learner = Reptile(
        _classifier(), inner_lr=0.02, inner_steps=3, inner_batch=100, strategy=strategy
    )
    batch = _batch(6)
    _check_reptile_step(learner, batch, _full_batches(T, N * SHOTS, 3))


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_reptile_mini_batches_drawn_as_documented(strategy: str) -> None:
    # S = 8, batches of 3, 4 steps: 12 draws = two shuffled epochs (the last four of the second
    # epoch unused), and the third mini-batch straddles the epoch boundary.
    learner = Reptile(_classifier(), inner_lr=0.02, inner_steps=4, inner_batch=3, strategy=strategy)
    batch = _batch(7)
    torch.manual_seed(11)
    draws = _epoch_draws(T, N * SHOTS, 4, 3)
    torch.manual_seed(11)
    _check_reptile_step(learner, batch, draws)


def test_reptile_adapt_uses_the_test_time_steps_and_batch() -> None:
    learner = Reptile(
        _classifier(),
        inner_lr=0.02,
        inner_steps=2,
        inner_batch=100,
        eval_inner_steps=5,
        eval_inner_batch=3,
    )
    batch = _batch(8)
    theta = {k: v.detach() for k, v in learner.model.named_parameters()}
    s = N * SHOTS

    def by_hand(steps: int, size: int) -> Tensor:
        torch.manual_seed(13)
        draws = _epoch_draws(T, s, steps, size)
        return torch.stack(
            [
                _mlp(
                    _adam(theta, batch.support_x[t], batch.support_y[t], draws[t], lr=0.02),
                    batch.query_x[t],
                )
                for t in range(T)
            ]
        ).detach()

    torch.manual_seed(13)
    with torch.no_grad():
        logits = learner.adapt(batch.support)(batch.query_x)
    _close(logits, by_hand(5, 3), "adapt with eval_inner_steps=5, eval_inner_batch=3")
    for steps, size in ((2, 100), (2, 3), (5, 100)):
        assert (logits - by_hand(steps, size)).abs().max() > 1e-4, (steps, size)


# ---------------------------------------------------------------------------------------------
# Metric learners on a one-layer encoder z = tanh(x Wᵀ + b) (F -> D)
# ---------------------------------------------------------------------------------------------

# T = 2 tasks, N = 4 classes, S = 8, Q = 12, F = 5, D = 3: no two equal.
MT, MN, MSHOTS, MQUERIES, MF, MD = 2, 4, 2, 3, 5, 3


def _metric_batch(seed: int) -> EpisodeBatch:
    return _episodes(MT, MN, MSHOTS, MQUERIES, MF, seed=seed)


def _linear(seed: int, out: int = MD) -> nn.Sequential:
    """z = tanh(x Wᵀ + b): a linear encoder with a squashing output. Purely linear, its bias
    would get an exactly zero gradient under the squared distance (every embedding shifts by
    b, the distances do not), and a bias bug would go unseen."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(MF, out), nn.Tanh()).to(DT)


def _embed(enc: nn.Module, x: Tensor) -> Tensor:
    layer = enc[0]
    return torch.tanh(x @ layer.weight.T + layer.bias)


def _check_metric(
    learner: nn.Module,
    batch: EpisodeBatch,
    reference: Callable[[Tensor, Tensor, Tensor], Tensor],
) -> None:
    """``reference(support_x, support_y, query_x) -> (Q, N)`` logits (or log-probabilities) of
    one task. The loss is the mean over every query of every task of −log softmax(logits)_y;
    for log-probabilities that sum to one this is the negative log-likelihood."""
    loss, _ = _grads(learner, batch)
    params = dict(learner.named_parameters())
    logits = [
        reference(batch.support_x[t], batch.support_y[t], batch.query_x[t])
        for t in range(batch.n_tasks)
    ]
    expected = torch.stack([_ce(lg, batch.query_y[t]) for t, lg in enumerate(logits)]).mean()
    _close(loss, expected.detach(), "loss")
    expected_grads = torch.autograd.grad(expected, list(params.values()))
    for (name, p), g in zip(params.items(), expected_grads, strict=True):
        assert g.abs().max() > 1e-6, f"reference gradient of {name} is ~0: the test is blind"
        assert p.grad is not None, f"{name} received no gradient"
        _close(p.grad, g, name)
    learner.eval()
    with torch.no_grad():
        predicted = learner.adapt(batch.support)(batch.query_x)
    _close(predicted, torch.stack(logits).detach(), "adapt's logits")


def _class_means(z: Tensor, y: Tensor, n_way: int) -> Tensor:
    return torch.stack([z[y == n].mean(dim=0) for n in range(n_way)])


def test_protonet_squared_euclidean_loss_and_gradient() -> None:
    learner = ProtoNet(_linear(0), distance="sqeuclidean")
    enc = learner.encoder

    def reference(sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        q, c = _embed(enc, qx), _class_means(_embed(enc, sx), sy, MN)
        # ‖q − c‖² = ‖q‖² + ‖c‖² − 2 q·c (exact enough in float64; mnemeta uses differences)
        d = q.square().sum(-1)[:, None] + c.square().sum(-1)[None, :] - 2 * q @ c.T
        return -d

    _check_metric(learner, _metric_batch(0), reference)


def test_protonet_cosine_loss_and_gradient() -> None:
    learner = ProtoNet(_linear(1), distance="cosine")
    enc = learner.encoder

    def reference(sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        q, c = _embed(enc, qx), _class_means(_embed(enc, sx), sy, MN)
        return (q @ c.T) / (_norm(q)[:, None] * _norm(c)[None, :])

    _check_metric(learner, _metric_batch(1), reference)


def _matching_attention(q: Tensor, g: Tensor, sy: Tensor, scale: float) -> Tensor:
    """Vinyals et al. eq. 1: log Σᵢ a(q, gᵢ) onehot(yᵢ), a = softmax over the support of the
    scaled cosine; the log floored at 1e-8 as mnemeta documents."""
    cos = (q @ g.T) / (_norm(q)[:, None] * _norm(g)[None, :])  # (Q, S)
    a = _softmax(scale * cos, dim=1)  # over the support items of each query
    p = a @ torch.eye(MN, dtype=DT)[sy]
    return p.clamp_min(1e-8).log()


def test_matching_networks_without_fce_loss_and_gradient() -> None:
    learner = MatchingNet(_linear(2), embedding_dim=MD, scale=2.5)
    enc = learner.encoder

    def reference(sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        return _matching_attention(_embed(enc, qx), _embed(enc, sx), sy, 2.5)

    _check_metric(learner, _metric_batch(2), reference)


def _lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """One LSTM step (Hochreiter & Schmidhuber; PyTorch's gate order i, f, g, o):
    c' = σ(f) c + σ(i) tanh(g), h' = σ(o) tanh(c')."""
    gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    d = h.shape[-1]
    i, f, gg, o = (gates[..., k * d : (k + 1) * d] for k in range(4))
    c = _sigmoid(f) * c + _sigmoid(i) * torch.tanh(gg)
    return _sigmoid(o) * torch.tanh(c), c


def _fce_support(lstm: nn.LSTM, g_prime: Tensor) -> Tensor:
    """Appendix A.2: g(xᵢ, S) = h→ᵢ + h←ᵢ + g'(xᵢ), a bidirectional LSTM over the support
    sequence in its given order, each direction from a zero state."""
    s, d = g_prime.shape
    zero = torch.zeros(d, dtype=DT)

    def run(order: range, suffix: str) -> list[Tensor]:
        w = [
            getattr(lstm, f"{n}_l0{suffix}")
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        h, c, out = zero, zero, [zero] * s
        for i in order:
            h, c = _lstm_cell(g_prime[i], h, c, *w)
            out[i] = h
        return out

    forward = run(range(s), "")
    backward = run(range(s - 1, -1, -1), "_reverse")
    return torch.stack([forward[i] + backward[i] + g_prime[i] for i in range(s)])


def _fce_query(cell: nn.LSTMCell, f_prime: Tensor, g: Tensor, steps: int) -> Tensor:
    """Appendix A.1, attLSTM(f'(x̂), g(S), K), in mnemeta's parametrisation: the cell's input is
    [f'(x̂); r_{k−1}] and its state (h_{k−1}, c_{k−1}) (the paper concatenates r into the
    hidden state instead; the equations are otherwise the same):
    ĥ_k, c_k = LSTM([f'; r_{k−1}], h_{k−1}, c_{k−1}); h_k = ĥ_k + f';
    a(h_k, g_i) = softmax_i(h_kᵀ g_i) over the support; r_k = Σᵢ a(h_k, g_i) g_i."""
    w = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    h = c = r = torch.zeros_like(f_prime)  # (Q, D)
    for _ in range(steps):
        h_hat, c = _lstm_cell(torch.cat([f_prime, r], dim=-1), h, c, *w)
        h = h_hat + f_prime
        a = _softmax(h @ g.T, dim=1)  # (Q, S): each query's attention over the support
        r = a @ g
    return h


def test_matching_networks_with_fce_loss_and_gradient() -> None:
    learner = MatchingNet(_linear(3), embedding_dim=MD, fce=True, fce_steps=3, scale=2.5).to(DT)
    enc = learner.encoder

    def reference(sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        g = _fce_support(learner.support_lstm, _embed(enc, sx))
        f = _fce_query(learner.query_cell, _embed(enc, qx), g, 3)
        return _matching_attention(f, g, sy, 2.5)

    # Every LSTM weight is among the parameters checked by _check_metric.
    names = {n for n, _ in learner.named_parameters()}
    assert {"support_lstm.weight_hh_l0_reverse", "query_cell.weight_ih"} <= names
    _check_metric(learner, _metric_batch(3), reference)


# ---------------------------------------------------------------------------------------------
# Meta Memory Network (meta_memory.py and memory/key_value.py)
# ---------------------------------------------------------------------------------------------

# Memory features D = 4 here (not MD), so that values [z; onehot(y)] are 4 + 4 wide and the
# reasoning maps D × D differ from every other shape.
MMN_D = 4


def _mmn(
    seed: int, *, hops: int, inner_steps: int, first_order: bool, eval_steps: int | None = None
) -> MetaMemoryNet:
    mmn = MetaMemoryNet(
        _linear(seed, MMN_D),
        MMN_D,
        hops=hops,
        inner_steps=inner_steps,
        eval_inner_steps=eval_steps,
        first_order=first_order,
    ).to(DT)
    # Away from the initial values (zero hop maps, equal step sizes), so that every term of
    # the equations carries weight.
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for hop in mmn.hop_maps:
            hop.weight.copy_(0.4 * torch.randn(hop.weight.shape, generator=g, dtype=DT))
        mmn.log_strength.fill_(math.log(3.0))
        mmn.vote_weight.fill_(0.7)
        mmn.step_weight.copy_(0.2 + 0.4 * torch.rand(MMN_D, generator=g, dtype=DT))
        mmn.step_bias.fill_(0.35)
    return mmn


def _mmn_task(
    mmn: MetaMemoryNet, sx: Tensor, sy: Tensor, qx: Tensor, *, steps: int, first_order: bool
) -> Tensor:
    """One task's ``(Q, N)`` logits, from the module docstrings:

    memory: keys zₛ, values [zₛ; onehot(yₛ)]; read(q) = softmax_i(β K(q, kᵢ)) V with
    K(u, v) = u·v / (‖u‖‖v‖ + 1e-8) (addressing.cosine_similarity's epsilon) and β = e^{log β};
    hops: q ← q + Pₕ read(q)[:D], for the support items and the queries alike;
    output layer: W = 2c, b = −‖c‖² from the class means c of the reasoned support, then
    ``steps`` of W ← W − α_w ⊙ ∇_W L, b ← b − α_b ∇_b L on the support cross-entropy;
    logits = q_H Wᵀ + b + λ log(read(q_H)[D:] + 1e-8).
    """
    d = MMN_D
    zs, zq = _embed(mmn.encoder, sx), _embed(mmn.encoder, qx)
    onehot = torch.eye(MN, dtype=DT)[sy]
    values = torch.cat([zs, onehot], dim=-1)
    beta = mmn.log_strength.exp()

    def read(q: Tensor) -> Tensor:
        sim = (q @ zs.T) / (_norm(q)[:, None] * _norm(zs)[None, :] + 1e-8)
        return _softmax(beta * sim, dim=1) @ values

    def reason(q: Tensor) -> Tensor:
        for hop in mmn.hop_maps:
            q = q + read(q)[:, :d] @ hop.weight.T
        return q

    hs = reason(zs)
    c = _class_means(hs, sy, MN)
    w, b = 2 * c, -c.square().sum(-1)
    for _ in range(steps):
        loss = _ce(hs @ w.T + b, sy)
        g_w, g_b = torch.autograd.grad(
            loss, (w, b), create_graph=not first_order, retain_graph=True
        )
        w = w - mmn.step_weight * g_w  # α_w (D,) per feature, shared by the classes
        b = b - mmn.step_bias * g_b
    q = reason(zq)
    vote = read(q)[:, d:]
    return q @ w.T + b + mmn.vote_weight * (vote + 1e-8).log()


@pytest.mark.parametrize(
    ("hops", "steps", "first_order"),
    [(2, 2, False), (1, 1, False), (2, 2, True)],
    ids=["2hops-2steps", "1hop-1step", "2hops-2steps-first-order"],
)
def test_meta_memory_network_meta_gradient(hops: int, steps: int, first_order: bool) -> None:
    mmn = _mmn(4, hops=hops, inner_steps=steps, first_order=first_order)

    def reference(sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        return _mmn_task(mmn, sx, sy, qx, steps=steps, first_order=first_order)

    _check_metric(mmn, _metric_batch(4), reference)


def test_meta_memory_first_and_second_order_references_differ() -> None:
    # Guards the first-order case above: the two meta-gradients differ well beyond RTOL.
    batch = _metric_batch(4)
    out = []
    for fo in (False, True):
        mmn = _mmn(4, hops=2, inner_steps=2, first_order=fo)
        loss = _ce(
            _mmn_task(
                mmn,
                batch.support_x[0],
                batch.support_y[0],
                batch.query_x[0],
                steps=2,
                first_order=fo,
            ),
            batch.query_y[0],
        )
        out.append(torch.autograd.grad(loss, [mmn.step_weight, mmn.encoder[0].weight]))
    gap = max((a - b).abs().max().item() for a, b in zip(*out, strict=True))
    assert gap > 1e-4


def test_meta_memory_adapt_uses_the_test_time_steps() -> None:
    mmn = _mmn(5, hops=2, inner_steps=1, first_order=False, eval_steps=3)
    batch = _metric_batch(5)
    with torch.no_grad():
        logits = mmn.adapt(Support(batch.support_x, batch.support_y, MN))(batch.query_x)

    def by_hand(steps: int) -> Tensor:
        return torch.stack(
            [
                _mmn_task(
                    mmn,
                    batch.support_x[t],
                    batch.support_y[t],
                    batch.query_x[t],
                    steps=steps,
                    first_order=True,
                )
                for t in range(MT)
            ]
        ).detach()

    _close(logits, by_hand(3), "adapt with eval_inner_steps=3")
    assert (logits - by_hand(1)).abs().max() > 1e-3
