"""MAML family against hand-unrolled references, in float64 (Finn et al. 2017, eq. 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnemeta.algorithms.inner_loop import over_tasks
from mnemeta.algorithms.maml import MAML, Classifier, MAMLConfig
from mnemeta.algorithms.reptile import Reptile, ReptileConfig
from mnemeta.data.glyphs import make_glyphs
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.data.sinusoid import SinusoidTasks
from mnemeta.episode import EpisodeBatch
from mnemeta.errors import MnemetaError
from mnemeta.nn import MLP, Conv4
from mnemeta.registry import LEARNERS, BuildContext


def _sinusoid_batch(tasks: int = 3) -> EpisodeBatch:
    b = SinusoidTasks(shots=5, queries=4, seed=0).sample(tasks)
    return EpisodeBatch(
        b.support_x.double(), b.support_y.double(), b.query_x.double(), b.query_y.double(), 0
    )


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(1, (8, 8), 1).double()


def _meta_grads(learner: nn.Module, batch: EpisodeBatch) -> dict[str, torch.Tensor]:
    learner.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def test_two_step_meta_gradient_equals_hand_unrolled() -> None:
    net = _mlp()
    batch = _sinusoid_batch()
    alpha = 0.05
    learner = MAML(net, task="regression", inner_lr=alpha, inner_steps=2, strategy="loop")
    ours = _meta_grads(learner, batch)

    # By hand: θ1 = θ0 − α∇L_s(θ0), θ2 = θ1 − α∇L_s(θ1), meta-loss = mean_i L_q(θ2_i).
    theta = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]

    def forward(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(0, len(weights) - 2, 2):
            h = torch.relu(h @ weights[i].T + weights[i + 1])
        return h @ weights[-2].T + weights[-1]

    total = torch.zeros((), dtype=torch.float64)
    for t in range(batch.n_tasks):
        w = theta
        for _ in range(2):
            support_loss = (forward(w, batch.support_x[t]) - batch.support_y[t]).square().mean()
            g = torch.autograd.grad(support_loss, w, create_graph=True)
            w = [wi - alpha * gi for wi, gi in zip(w, g, strict=True)]
        total = total + (forward(w, batch.query_x[t]) - batch.query_y[t]).square().mean()
    reference = torch.autograd.grad(total / batch.n_tasks, theta)
    for name, ref in zip(names, reference, strict=True):
        torch.testing.assert_close(ours[f"model.{name}"], ref, rtol=1e-10, atol=1e-12)


def test_vmap_meta_gradient_equals_per_task_loop_on_conv4_with_batch_norm() -> None:
    torch.manual_seed(0)
    data = make_glyphs(8, 4, image_size=16)
    b = EpisodeSampler(data, ways=3, shots=1, queries=2, seed=0).sample(4)
    batch = EpisodeBatch(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y, 3)
    model = Classifier(Conv4(1, 4, track_running_stats=False, channels_last=False), 4, 3).double()
    grads = {}
    for strategy in ("vmap", "loop"):
        grads[strategy] = _meta_grads(
            MAML(model, inner_lr=0.4, inner_steps=2, strategy=strategy), batch
        )
    for k in grads["loop"]:
        torch.testing.assert_close(grads["vmap"][k], grads["loop"][k], rtol=1e-9, atol=1e-12)


def test_vmap_in_chunks_equals_whole_batch() -> None:
    batch = _sinusoid_batch(5)
    whole = _meta_grads(MAML(_mlp(), task="regression", strategy="vmap"), batch)
    chunked = _meta_grads(MAML(_mlp(), task="regression", strategy="vmap", task_chunk=2), batch)
    for k in whole:
        torch.testing.assert_close(whole[k], chunked[k])


def test_first_and_second_order_differ_on_a_nonlinear_net() -> None:
    batch = _sinusoid_batch()
    second = _meta_grads(MAML(_mlp(), task="regression", inner_lr=0.1), batch)
    first = _meta_grads(MAML(_mlp(), task="regression", inner_lr=0.1, first_order=True), batch)
    diff = max((second[k] - first[k]).abs().max().item() for k in second)
    assert diff > 1e-4


def test_first_order_gradient_is_the_query_gradient_at_the_fast_weights() -> None:
    net, batch = _mlp(), _sinusoid_batch(1)
    alpha = 0.1
    ours = _meta_grads(MAML(net, task="regression", inner_lr=alpha, first_order=True), batch)
    w = list(net.parameters())
    sl = (net(batch.support_x[0]) - batch.support_y[0]).square().mean()
    g = torch.autograd.grad(sl, w)
    fast = [wi.detach() - alpha * gi for wi, gi in zip(w, g, strict=True)]
    fast = [f.requires_grad_() for f in fast]
    clone = _mlp()
    for p, f in zip(clone.parameters(), fast, strict=True):
        p.data = f
    ql = (clone(batch.query_x[0]) - batch.query_y[0]).square().mean()
    ref = torch.autograd.grad(ql, list(clone.parameters()))
    for (name, _), r in zip(net.named_parameters(), ref, strict=True):
        torch.testing.assert_close(ours[f"model.{name}"], r)


def test_meta_sgd_step_sizes_receive_gradients_and_start_at_alpha() -> None:
    learner = MAML(_mlp(), task="regression", inner_lr=0.01, learn_inner_lr=True)
    assert all(torch.all(a == 0.01) for a in learner.inner_lrs.values())
    grads = _meta_grads(learner, _sinusoid_batch())
    lr_grads = [g for n, g in grads.items() if n.startswith("inner_lrs.")]
    assert len(lr_grads) == len(list(learner.model.parameters()))
    assert all(g.abs().sum() > 0 for g in lr_grads)


def test_anil_adapts_only_the_head() -> None:
    torch.manual_seed(0)
    model = Classifier(nn.Sequential(nn.Linear(4, 6), nn.ReLU()), 6, 2).double()
    learner = MAML(model, inner_lr=0.5, adapt=("head.",))
    params, fixed = learner.split_params()
    assert set(params) == {"head.weight", "head.bias"}
    assert {"encoder.0.weight", "encoder.0.bias"} <= set(fixed)
    with pytest.raises(ValueError, match="no parameter"):
        MAML(model, adapt=("nothing.",))


def test_adapt_improves_the_support_fit_without_touching_meta_parameters() -> None:
    net, batch = _mlp(), _sinusoid_batch()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    learner = MAML(net, task="regression", inner_lr=0.01, eval_inner_steps=10)
    with torch.no_grad():  # evaluation runs under no_grad: the inner loop must still work
        adapted = learner.adapt(batch.support)(batch.support_x)
        unadapted = net(batch.support_x.flatten(0, 1)).view_as(adapted)
    assert (adapted - batch.support_y).square().mean() < (
        unadapted - batch.support_y
    ).square().mean()
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_reptile_step_equals_its_closed_form() -> None:
    # One inner Adam step with β1 = 0 from θ: m̂ = g, v̂ = g², so φ = θ − lr·g/(|g| + 1e-8).
    # An outer SGD step of size ε on the surrogate gives θ + ε(mean φ − θ) (Algorithm 2).
    net, batch = _mlp(), _sinusoid_batch(2)
    theta = {n: p.detach().clone() for n, p in net.named_parameters()}
    lr, eps = 0.01, 0.5
    learner = Reptile(net, task="regression", inner_lr=lr, inner_steps=1, inner_batch=100)
    phis = []
    for t in range(batch.n_tasks):
        net.zero_grad()
        (net(batch.support_x[t]) - batch.support_y[t]).square().mean().backward()
        phis.append(
            {n: theta[n] - lr * p.grad / (p.grad.abs() + 1e-8) for n, p in net.named_parameters()}
        )
    optimizer = torch.optim.SGD(learner.parameters(), lr=eps)
    optimizer.zero_grad()
    learner.meta_loss(batch)[0].backward()
    optimizer.step()
    for n, p in net.named_parameters():
        mean_phi = sum(phi[n] for phi in phis) / len(phis)
        torch.testing.assert_close(p.detach(), theta[n] + eps * (mean_phi - theta[n]))


def test_reptile_loop_equals_vmap() -> None:
    batch = _sinusoid_batch(3)
    out = {}
    for strategy in ("loop", "vmap"):
        torch.manual_seed(1)
        learner = Reptile(
            _mlp(), task="regression", inner_steps=3, inner_batch=2, strategy=strategy
        )
        torch.manual_seed(2)
        out[strategy] = _meta_grads(learner, batch)
    for k in out["loop"]:
        torch.testing.assert_close(out["loop"][k], out["vmap"][k])


def _context(per_task: list[bool]) -> BuildContext:
    """A 3-way context for 1x16x16 images whose backbone records the statistics asked for."""

    def backbone(*, per_task_statistics: bool) -> nn.Module:
        per_task.append(per_task_statistics)
        return Conv4(1, 4, track_running_stats=not per_task_statistics)

    return BuildContext(input_shape=(1, 16, 16), outputs=3, backbone=backbone)


@pytest.mark.parametrize(
    "name,first_order,learn_lr,adapt",
    [
        ("maml", False, False, None),
        ("fomaml", True, False, None),
        ("metasgd", False, True, None),
        ("anil", False, False, ("head.",)),
    ],
)
def test_registered_maml_family_builds_from_its_config(
    name: str, first_order: bool, learn_lr: bool, adapt: tuple[str, ...] | None
) -> None:
    """What the CLI builds for each name: every config key reaches the learner, the head has
    n_way outputs over the backbone's features, BN uses per-task statistics (the MAML paper)."""
    per_task: list[bool] = []
    cfg = MAMLConfig(
        inner_lr=0.3,
        inner_steps=2,
        eval_inner_steps=4,
        eval_inner_lr=0.05,
        strategy="loop",
        task_chunk=7,
    )
    learner = LEARNERS.get(name).build(cfg, _context(per_task))
    assert isinstance(learner, MAML) and isinstance(learner.model, Classifier)
    assert per_task == [True]
    assert (learner.inner_lr, learner.inner_steps) == (0.3, 2)
    assert (learner.eval_inner_steps, learner.eval_inner_lr) == (4, 0.05)
    assert (learner.strategy, learner.task_chunk) == ("loop", 7)
    assert learner.first_order is first_order and learner.learn_inner_lr is learn_lr
    assert learner.adapt_prefixes == adapt
    head = learner.model.head
    assert (head.in_features, head.out_features) == (4, 3)
    assert isinstance(learner.model.encoder, Conv4)  # the backbone the context built
    # Defaults: test-time settings as in training, and no chunking (0: all tasks at once).
    default = LEARNERS.get(name).build(MAMLConfig(), _context([]))
    assert (default.eval_inner_steps, default.eval_inner_lr) == (1, 0.4)
    assert default.task_chunk == 0 and default.strategy == "auto"


def test_registered_reptile_builds_from_its_config() -> None:
    """What the CLI builds for reptile: every key reaches the learner (non-default values), test
    time as in training when unset, BN with per-task statistics as for MAML."""
    per_task: list[bool] = []
    cfg = ReptileConfig(
        inner_lr=0.02,
        inner_steps=3,
        inner_batch=4,
        eval_inner_steps=7,
        eval_inner_batch=2,
        strategy="loop",
    )
    learner = LEARNERS.get("reptile").build(cfg, _context(per_task))
    assert isinstance(learner, Reptile) and per_task == [True]
    assert (learner.inner_lr, learner.inner_steps, learner.inner_batch) == (0.02, 3, 4)
    assert (learner.eval_inner_steps, learner.eval_inner_batch) == (7, 2)
    assert learner.strategy == "loop"
    assert learner.model.head.out_features == 3
    default = LEARNERS.get("reptile").build(ReptileConfig(inner_steps=6), _context([]))
    assert default.eval_inner_steps == 6 and default.inner_lr == 1e-3


def test_argument_errors_name_the_argument() -> None:
    """MAML and Reptile refuse a bad argument when built, with the same messages; zero steps
    and the smallest batch are allowed (a test-time evaluation without adaptation)."""
    net = nn.Linear(2, 1)
    for make in (MAML, Reptile):
        with pytest.raises(
            MnemetaError, match=r"^task must be 'classification' or 'regression'; got 'ranking'$"
        ):
            make(net, task="ranking")
        with pytest.raises(
            MnemetaError, match=r"^model\.strategy='gpu' is unknown; choose auto, vmap or loop$"
        ):
            make(net, strategy="gpu")
    with pytest.raises(
        MnemetaError,
        match=r"^need inner_steps, eval_inner_steps >= 0 and task_chunk >= 0; got 2, -1, 0$",
    ):
        MAML(net, inner_steps=2, eval_inner_steps=-1)
    with pytest.raises(MnemetaError, match=r"got -1, -1, 0$"):
        MAML(net, inner_steps=-1)  # eval_inner_steps None: as in training
    with pytest.raises(MnemetaError, match=r"got 1, 1, -2$"):
        MAML(net, task_chunk=-2)
    zero = MAML(net, inner_steps=0, eval_inner_steps=3, task_chunk=0)
    assert (zero.inner_steps, zero.eval_inner_steps) == (0, 3)
    with pytest.raises(
        MnemetaError,
        match=r"^need inner_steps, eval_inner_steps >= 0 and inner_batch, eval_inner_batch >= 1; "
        r"got 2, -1, 3, 1$",
    ):
        Reptile(net, inner_steps=2, eval_inner_steps=-1, inner_batch=3, eval_inner_batch=1)
    for bad in ({"inner_steps": -1}, {"inner_batch": 0}, {"eval_inner_batch": 0}):
        with pytest.raises(MnemetaError, match="need inner_steps"):
            Reptile(net, **bad)  # type: ignore[arg-type]
    Reptile(net, inner_steps=0, eval_inner_steps=0, inner_batch=1, eval_inner_batch=1)


def test_over_tasks_refuses_an_unknown_strategy() -> None:
    with pytest.raises(MnemetaError, match=r"^strategy must be 'vmap' or 'loop'; got 'auto'$"):
        over_tasks(lambda x: (x.sum(), x), [torch.zeros(2, 3)], strategy="auto")
