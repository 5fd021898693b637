"""The inner optimiser's transforms against values worked out by hand (float64), and its
purity: the same numbers under torch.func.vmap, gradients through a learned step size under
torch.func.grad, one graph under torch.compile."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.func import grad, vmap

from mnemeta.algorithms.inner_optim import (
    InnerOptimizer,
    Params,
    adam,
    apply_updates,
    chain,
    memory_pull,
    momentum,
    sgd,
    weight_decay,
)
from mnemeta.errors import MnemetaError

F64 = torch.float64


def _t(*values: float) -> Tensor:
    return torch.tensor(values, dtype=F64)


def _step(opt: InnerOptimizer, grads: Params, state: object, params: Params):  # type: ignore[no-untyped-def]
    updates, state = opt.update(grads, state, params)
    return apply_updates(params, updates), state


def _close(actual: Tensor, expected: Tensor) -> None:
    # The maths is exact up to float64 rounding of a few operations.
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


# ---- SGD ----
def test_sgd_scalar_step() -> None:
    opt = sgd(0.1)
    params = {"w": _t(1.0, -2.0), "b": _t(0.5)}
    grads = {"w": _t(0.5, -3.0), "b": _t(2.0)}
    new, state = _step(opt, grads, opt.init(params), params)
    _close(new["w"], _t(0.95, -1.7))  # 1 - 0.1·0.5, -2 - 0.1·(-3)
    _close(new["b"], _t(0.3))  # 0.5 - 0.1·2
    assert state == ()
    _close(params["w"], _t(1.0, -2.0))  # nothing mutated


def test_sgd_per_tensor_step_broadcasts_against_the_weight() -> None:
    # Meta-SGD's α of the weight's shape for "w"; a per-feature (D,) α over a (T, N, D) weight
    # for "h", as the Meta Memory Network's α_w.
    lr = {"w": _t(0.1, 0.2), "h": _t(1.0, 0.5, 0.0)}
    params = {"w": _t(1.0, 1.0), "h": torch.ones(2, 1, 3, dtype=F64)}
    grads = {"w": _t(1.0, 1.0), "h": torch.full((2, 1, 3), 2.0, dtype=F64)}
    opt = sgd(lr)
    new, _ = _step(opt, grads, opt.init(params), params)
    _close(new["w"], _t(0.9, 0.8))
    _close(new["h"], _t(-1.0, 0.0, 1.0).expand(2, 1, 3))  # 1 - α·2 per feature


def test_sgd_per_tensor_step_must_cover_every_weight() -> None:
    with pytest.raises(MnemetaError, match=r"no step size for \['b'\]"):
        sgd({"w": _t(0.1)}).init({"w": _t(1.0), "b": _t(0.0)})


def test_meta_sgd_step_size_receives_its_gradient() -> None:
    # One step on L(θ) = ½‖θ − c‖² (∇L = θ − c), then the query loss Lq(θ') = ½‖θ' − d‖²:
    # θ' = θ − α ⊙ (θ − c), so ∂Lq/∂α = (θ' − d) ⊙ (−(θ − c)).
    theta, c, d = _t(1.0, 2.0), _t(0.0, 1.0), _t(3.0, -1.0)
    alpha = _t(0.5, 0.25).requires_grad_()
    opt = sgd({"w": alpha})
    params = {"w": theta}
    new, _ = _step(opt, {"w": theta - c}, opt.init(params), params)
    # θ' = (1 − 0.5·1, 2 − 0.25·1) = (0.5, 1.75)
    _close(new["w"].detach(), _t(0.5, 1.75))
    (0.5 * (new["w"] - d).square().sum()).backward()
    assert alpha.grad is not None
    _close(alpha.grad, _t((0.5 - 3.0) * -1.0, (1.75 + 1.0) * -1.0))  # (2.5, -2.75)


# ---- Adam ----
def _adam_reference(grads: list[float], lr: float, b1: float, b2: float, eps: float) -> float:
    """Kingma & Ba's Algorithm 1 on one scalar weight from 0, in plain Python floats."""
    theta = m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    return theta


@pytest.mark.parametrize("b1", [0.0, 0.9], ids=["reptile_b1_0", "b1_0.9"])
def test_adam_three_steps_against_algorithm_1(b1: float) -> None:
    g_seq = [(1.0, -4.0), (-2.0, 0.5), (0.5, 3.0)]
    lr, b2, eps = 0.01, 0.999, 1e-8
    opt = adam(lr, b1, b2, eps)
    params = {"w": _t(0.0, 0.0)}
    state = opt.init(params)
    for i, g in enumerate(g_seq):
        params, state = _step(opt, {"w": _t(*g)}, state, params)
        if i == 0:
            # First step, by hand: m̂ = g and v̂ = g², so the step is α g / (|g| + ε).
            _close(params["w"], _t(-0.01 / (1 + 1e-8), 0.01 * 4 / (4 + 1e-8)))
    expected = [_adam_reference([g[j] for g in g_seq], lr, b1, b2, eps) for j in range(2)]
    _close(params["w"], _t(*expected))
    assert float(state.steps) == 3.0
    # With β₁ = 0 the first moment is the last gradient; with 0.9 it remembers the others.
    m_last = 0.5 if b1 == 0.0 else 0.1 * 0.5 + 0.9 * (0.1 * -2.0 + 0.9 * 0.1 * 1.0)
    _close(state.mu["w"][0], torch.tensor(m_last, dtype=F64))


def test_adam_update_leaves_its_input_state_untouched() -> None:
    opt = adam(0.1)
    params = {"w": _t(1.0)}
    state0 = opt.init(params)
    _, state1 = opt.update({"w": _t(2.0)}, state0, params)
    assert float(state0.steps) == 0.0 and float(state0.mu["w"]) == 0.0
    assert float(state1.steps) == 1.0 and float(state1.mu["w"]) != 0.0


# ---- memory pull ----
def test_pull_alone_moves_towards_the_anchor_and_skips_missing_tensors() -> None:
    opt = memory_pull({"w": _t(3.0, -1.0)}, 0.25)
    params = {"w": _t(1.0, 1.0), "head": _t(7.0)}
    new, _ = _step(opt, {"w": _t(9.0, 9.0), "head": _t(9.0)}, opt.init(params), params)
    _close(new["w"], _t(1.5, 0.5))  # θ + 0.25·(θ̄ − θ); the gradient plays no part
    _close(new["head"], _t(7.0))  # not in the anchor: not pulled


def test_sgd_then_pull_takes_both_terms_at_the_same_theta() -> None:
    # L(θ) = ½ a θ², ∇L = a θ; a = 2, α = 0.1, β = 0.5, θ̄ = 3, θ₀ = 1.
    # θ₁ = 1 − 0.1·2·1 + 0.5·(3 − 1) = 1.8 (a pull at the stepped θ, 0.8, would give 1.9);
    # θ₂ = 1.8 − 0.1·2·1.8 + 0.5·(3 − 1.8) = 2.04.
    opt = chain(sgd(0.1), memory_pull({"w": _t(3.0)}, 0.5))
    params = {"w": _t(1.0)}
    state = opt.init(params)
    for expected in (1.8, 2.04):
        params, state = _step(opt, {"w": 2.0 * params["w"]}, state, params)
        _close(params["w"], _t(expected))
    assert state == ((), ())


def test_adam_then_pull() -> None:
    # First Adam step is α g/(|g| + ε) ≈ α sign(g): θ₁ = 1 − 0.1·1/(1 + 1e-8) + 0.5·(3 − 1).
    opt = chain(adam(0.1, 0.0), memory_pull({"w": _t(3.0)}, 0.5))
    params = {"w": _t(1.0)}
    new, _ = _step(opt, {"w": _t(1.0)}, opt.init(params), params)
    _close(new["w"], _t(1.0 - 0.1 / (1 + 1e-8) + 1.0))


def test_chained_terms_round_as_the_one_line_formula() -> None:
    # Bit for bit in float32: (θ − α g) + β (θ̄ − θ), the order the learners always computed.
    # Folding both terms into one update first rounds differently (checked below on the same
    # numbers, so that this test can tell the two apart).
    g = torch.Generator().manual_seed(0)
    theta, grads, anchor = (torch.randn(1000, generator=g) for _ in range(3))
    alpha, beta = 0.4, 0.3
    opt = chain(sgd(alpha), memory_pull({"w": anchor}, beta))
    new, _ = _step(opt, {"w": grads}, opt.init({"w": theta}), {"w": theta})
    literal = (theta - alpha * grads) + beta * (anchor - theta)
    assert torch.equal(new["w"], literal)
    folded = theta - (alpha * grads + beta * (theta - anchor))
    assert not torch.equal(folded, literal)


# ---- momentum and weight decay ----
def test_momentum_two_steps_by_hand() -> None:
    # θ₀ = 1, α = 0.1, μ = 0.9, τ = 0.9, λ = 0.5; gradients 2 then −1 (given, not computed).
    # t = 1: d = 2 + 0.5·1 = 2.5, b = d = 2.5 (undamped), θ = 1 − 0.1·2.5 = 0.75.
    # t = 2: d = −1 + 0.5·0.75 = −0.625, b = 0.9·2.5 + 0.1·(−0.625) = 2.1875,
    #        θ = 0.75 − 0.1·2.1875 = 0.53125.
    # A first step damped like the later ones (b = 0.1·2.5) would give θ₁ = 0.975.
    opt = momentum(0.1, 0.9, dampening=0.9, weight_decay=0.5)
    params = {"w": _t(1.0)}
    state = opt.init(params)
    params, state = _step(opt, {"w": _t(2.0)}, state, params)
    _close(params["w"], _t(0.75))
    _close(state.velocity["w"], _t(2.5))
    params, state = _step(opt, {"w": _t(-1.0)}, state, params)
    _close(state.velocity["w"], _t(2.1875))
    _close(params["w"], _t(0.53125))
    assert float(state.steps) == 2.0


def test_momentum_without_dampening_or_decay_is_the_heavy_ball() -> None:
    # b₁ = g₁ = 1, b₂ = 0.5·1 + 3 = 3.5, b₃ = 0.5·3.5 + (−2) = −0.25; θ₃ = −0.1·(1 + 3.5 − 0.25).
    opt = momentum(0.1, 0.5)
    params = {"w": _t(0.0)}
    state = opt.init(params)
    for g in (1.0, 3.0, -2.0):
        params, state = _step(opt, {"w": _t(g)}, state, params)
    _close(state.velocity["w"], _t(-0.25))
    _close(params["w"], _t(-0.425))


def test_momentum_follows_torch_optim_sgd() -> None:
    # A separately written reference: torch.optim.SGD with Chen et al.'s fine-tuning settings,
    # ten steps on a quadratic ½ θᵀAθ − cᵀθ (float64; the same maths, rounded alike to ~1e-16).
    g = torch.Generator().manual_seed(3)
    m = torch.randn(4, 4, generator=g, dtype=F64)
    a, c = m @ m.T + torch.eye(4, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    theta0 = torch.randn(4, generator=g, dtype=F64)
    settings = {"lr": 0.05, "momentum": 0.9, "dampening": 0.9, "weight_decay": 0.001}

    reference = theta0.clone().requires_grad_()
    sgd_torch = torch.optim.SGD([reference], **settings)
    opt = momentum(0.05, 0.9, dampening=0.9, weight_decay=0.001)
    params = {"w": theta0.clone()}
    state = opt.init(params)
    for _ in range(10):
        sgd_torch.zero_grad()
        (0.5 * reference @ a @ reference - c @ reference).backward()
        sgd_torch.step()
        params, state = _step(opt, {"w": a @ params["w"] - c}, state, params)
    torch.testing.assert_close(params["w"], reference.detach(), rtol=0, atol=1e-12)
    assert not torch.allclose(params["w"], theta0, atol=1e-2)  # it did move


def test_weight_decay_chained_onto_sgd_is_decoupled() -> None:
    # θ₁ = θ − α g − λ θ = 2 − 0.1·1 − 0.25·2 = 1.4: the term is taken at the same θ as g.
    opt = chain(sgd(0.1), weight_decay(0.25))
    params = {"w": _t(2.0), "frozen": _t(5.0)}
    new, state = _step(opt, {"w": _t(1.0)}, opt.init(params), params)
    _close(new["w"], _t(1.4))
    _close(new["frozen"], _t(5.0))  # no gradient given: not adapted, so not decayed
    assert state == ((), ())
    # Coupled into momentum, the decay is remembered: two steps of momentum(…, λ) differ from
    # momentum then a decoupled term (checked so that the two cannot be confused).
    coupled = momentum(0.1, 0.9, weight_decay=0.25)
    decoupled = chain(momentum(0.1, 0.9), weight_decay(0.1 * 0.25))
    results = []
    for o in (coupled, decoupled):
        p, s = {"w": _t(2.0)}, o.init({"w": _t(2.0)})
        for _ in range(2):
            p, s = _step(o, {"w": _t(1.0)}, s, p)
        results.append(float(p["w"]))
    # coupled: d₁ = 1.5, θ₁ = 1.85; d₂ = 1 + 0.4625, b₂ = 0.9·1.5 + 1.4625, θ₂ = 1.85 − 0.28125
    assert results[0] == pytest.approx(1.56875, abs=1e-12)
    # decoupled: θ₁ = 2 − 0.1 − 0.05 = 1.85; b₂ = 1.9, θ₂ = 1.85 − 0.19 − 0.025·1.85
    assert results[1] == pytest.approx(1.613750, abs=1e-12)


# ---- purity: vmap, grad, compile ----
def _three_steps(theta: Tensor, target: Tensor, anchor: Tensor, lr: Tensor) -> Tensor:
    """Three steps of SGD (learned α) + pull, then Adam + pull, then momentum (coupled decay)
    + decoupled decay, on ½‖θ − target‖²."""

    def loss(p: Params) -> Tensor:
        return 0.5 * (p["w"] - target).square().sum()

    params = {"w": theta}
    for opt in (
        chain(sgd({"w": lr}), memory_pull({"w": anchor}, 0.2)),
        chain(adam(0.05, 0.9), memory_pull({"w": anchor}, 0.2)),
        chain(momentum(0.1, 0.9, dampening=0.9, weight_decay=0.01), weight_decay(0.01)),
    ):
        state = opt.init(params)
        for _ in range(3):
            updates, state = opt.update(grad(loss)(params), state, params)
            params = apply_updates(params, updates)
    return loss(params)


def _tasks() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    theta, target, anchor = (torch.randn(4, 3, generator=g, dtype=F64) for _ in range(3))
    return theta, target, anchor, torch.rand(3, generator=g, dtype=F64)


def test_runs_under_vmap_with_the_loop_numbers() -> None:
    theta, target, anchor, lr = _tasks()
    batched = vmap(_three_steps, in_dims=(0, 0, 0, None))(theta, target, anchor, lr)
    looped = torch.stack([_three_steps(theta[i], target[i], anchor[i], lr) for i in range(4)])
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-14)


def test_gradient_through_the_learned_step_size_under_func_grad() -> None:
    theta, target, anchor, lr = _tasks()

    def total(a: Tensor) -> Tensor:
        return vmap(_three_steps, in_dims=(0, 0, 0, None))(theta, target, anchor, a).sum()

    by_func = grad(total)(lr)
    a = lr.clone().requires_grad_()
    total(a).backward()
    assert a.grad is not None
    torch.testing.assert_close(by_func, a.grad, rtol=1e-12, atol=1e-14)
    # And against central differences (float64; the loss is smooth in α).
    h = 1e-6
    numeric = torch.stack(
        [(total(lr + h * e) - total(lr - h * e)) / (2 * h) for e in torch.eye(3, dtype=F64)]
    )
    torch.testing.assert_close(by_func, numeric, rtol=1e-6, atol=1e-8)


def test_compiles_to_one_graph() -> None:
    # Adam's step count lives in the state as a tensor: no Python-side counter, so no graph
    # break and no .item() (fullgraph=True makes either an error).
    torch._dynamo.reset()
    theta, target, anchor, lr = _tasks()
    eager = _three_steps(theta[0], target[0], anchor[0], lr)
    compiled = torch.compile(_three_steps, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(
        compiled(theta[0], target[0], anchor[0], lr), eager, rtol=1e-12, atol=0
    )


def test_chain_refuses_the_state_of_another_chain() -> None:
    """A chain's state is one entry per transform; a state of a shorter chain (say, a resumed
    optimiser built with another recipe) must fail, not silently drop the last transforms."""
    params = {"w": _t(1.0, 2.0)}
    grads = {"w": _t(0.5, 0.5)}
    two = chain(sgd(0.1), memory_pull({"w": _t(0.0, 0.0)}, 0.5))
    one = chain(sgd(0.1))
    with pytest.raises(ValueError, match="zip"):
        two.update(grads, one.init(params), params)
    updates, state = two.update(grads, two.init(params), params)
    assert len(updates) == 2 and len(state) == 2


def test_adam_defaults_are_kingma_and_bas() -> None:
    """adam(lr) is Algorithm 1 with β₁ = 0.9, β₂ = 0.999, ε = 1e-8 (the paper's defaults): two
    steps against the reference; its step count stays a float64 CPU scalar even when tensors
    are made elsewhere by default (meta here, as a GPU default device would)."""
    grads = [0.5, -1.5]
    theta = torch.tensor([1.0], dtype=F64)
    opt = adam(0.01)
    state = opt.init({"w": theta})
    for g in grads:
        theta_new, state = _step(opt, {"w": torch.tensor([g], dtype=F64)}, state, {"w": theta})
        theta = theta_new["w"]
    want = 1.0 + _adam_reference(grads, 0.01, 0.9, 0.999, 1e-8)  # the reference starts at 0
    _close(theta, torch.tensor([want], dtype=F64))
    with torch.device("meta"):
        steps = adam(0.1).init({"w": torch.zeros(2)}).steps
    assert steps.device.type == "cpu" and steps.dtype == F64
