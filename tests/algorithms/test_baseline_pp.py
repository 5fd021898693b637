"""Baseline++ (Chen et al. 2019) against hand-written float64 references: the pre-training loss
and its gradient, the fine-tuning of the new head (torch.optim.SGD's rule unrolled by hand), the
imprinted initial head; the contract's properties on Conv-4; and a tiny run of its preset
through the CLI, from the registry to a checkpoint that mnemeta.load rebuilds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import mnemeta
from mnemeta.algorithms.baseline_pp import BaselinePP, BaselinePPConfig
from mnemeta.cli import main
from mnemeta.data.glyphs import make_glyphs
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.errors import ConfigError, DataError
from mnemeta.nn import Conv4
from mnemeta.registry import LEARNERS, BuildContext

F64 = torch.float64


# ---------------------------------------------------------------- the references
def _pretrain_reference(
    a: Tensor, b: Tensor, w: Tensor, xs: list[Tensor], targets: list[int], s: float
) -> tuple[float, Tensor, Tensor, Tensor]:
    """The cosine classifier's cross-entropy on a linear encoder z = A x + b, image by image,
    with its gradient worked out by hand. For u = z/‖z‖, v_c = w_c/‖w_c‖, ℓ_c = s u·v_c and
    e_c = softmax(ℓ)_c − [c = y]:
        ∂L/∂w_c = e_c s (u − (u·v_c) v_c) / ‖w_c‖,   ∂L/∂z = Σ_c e_c s (v_c − (u·v_c) u) / ‖z‖,
    then ∂L/∂A = ∂L/∂z xᵀ and ∂L/∂b = ∂L/∂z; everything averaged over the images.
    Returns (loss, ∂A, ∂b, ∂W)."""
    n = len(xs)
    total = 0.0
    g_a, g_b, g_w = torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(w)
    for x, y in zip(xs, targets, strict=True):
        z = a @ x + b
        u = z / z.norm()
        v = [w[c] / w[c].norm() for c in range(w.shape[0])]
        logits = [s * float(u @ vc) for vc in v]
        top = max(logits)
        log_norm = top + math.log(sum(math.exp(q - top) for q in logits))
        total += log_norm - logits[y]
        g_z = torch.zeros_like(z)
        for c, vc in enumerate(v):
            e = math.exp(logits[c] - log_norm) - (1.0 if c == y else 0.0)
            cos = float(u @ vc)
            g_w[c] += e * s * (u - cos * vc) / w[c].norm()
            g_z += e * s * (vc - cos * u) / z.norm()
        g_a += torch.outer(g_z, x)
        g_b += g_z
    return total / n, g_a / n, g_b / n, g_w / n


def _normalise(v: Tensor) -> Tensor:
    return v / v.norm()


def _finetune_reference(
    features: Tensor,
    labels: list[int],
    n_way: int,
    *,
    steps: int,
    lr: float,
    mu: float,
    tau: float,
    lam: float,
    s: float,
) -> Tensor:
    """One task's head, by hand: imprinted from the normalised class means of the normalised
    features, then ``steps`` of torch.optim.SGD's rule on the mean support cross-entropy.
    ``features`` (S, D) -> head (n_way, D)."""
    u = [_normalise(f) for f in features]
    head = torch.stack(
        [
            _normalise(sum(ui for ui, y in zip(u, labels, strict=True) if y == j))
            for j in range(n_way)
        ]  # type: ignore[arg-type]
    )
    buf: Tensor | None = None
    for _ in range(steps):
        grad = torch.zeros_like(head)
        for ui, y in zip(u, labels, strict=True):
            v = [_normalise(head[j]) for j in range(n_way)]
            logits = torch.stack([s * (ui @ vj) for vj in v])
            p = torch.softmax(logits, 0)
            for j, vj in enumerate(v):
                e = float(p[j]) - (1.0 if j == y else 0.0)
                grad[j] += e * s * (ui - (ui @ vj) * vj) / head[j].norm() / len(u)
        d = grad + lam * head
        buf = d if buf is None else mu * buf + (1 - tau) * d  # first step undamped
        head = head - lr * buf
    return head


def _linear(seed: int, d_in: int = 4, d_out: int = 3) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out).double()


# ---------------------------------------------------------------- pre-training
def test_pretraining_loss_and_gradient_against_the_hand_written_classifier() -> None:
    # 2 tasks, 3-way, 1 support + 2 queries per class, 7 base classes; labels mapped through
    # `classes` (a learner that used the episode labels as classes would see other targets).
    g = torch.Generator().manual_seed(0)
    t, n_way, classes, scale = 2, 3, 7, 10.0
    learner = BaselinePP(_linear(1), 3, classes, scale=scale).double()
    sx = torch.randn(t, 3, 4, generator=g, dtype=F64)
    qx = torch.randn(t, 6, 4, generator=g, dtype=F64)
    sy = torch.tensor([[2, 0, 1], [1, 2, 0]])
    qy = torch.tensor([[0, 1, 2, 2, 1, 0], [0, 0, 1, 1, 2, 2]])
    base = torch.tensor([[6, 0, 3], [2, 5, 1]])
    batch = EpisodeBatch(sx, sy, qx, qy, n_way, base)

    loss, metrics = learner.meta_loss(batch)
    loss.backward()

    xs, targets = [], []
    for i in range(t):
        for x, y in [*zip(sx[i], sy[i], strict=True), *zip(qx[i], qy[i], strict=True)]:
            xs.append(x)
            targets.append(int(base[i, y]))
    enc = learner.encoder
    assert isinstance(enc, nn.Linear)
    ref_loss, g_a, g_b, g_w = _pretrain_reference(
        enc.weight.detach(),
        enc.bias.detach(),
        learner.classifier.weight.detach(),
        xs,
        targets,
        scale,
    )
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    assert metrics["loss"].item() == pytest.approx(ref_loss, rel=1e-12)
    for actual, expected in ((enc.weight.grad, g_a), (enc.bias.grad, g_b)):
        assert actual is not None
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-13)
    assert learner.classifier.weight.grad is not None
    torch.testing.assert_close(learner.classifier.weight.grad, g_w, rtol=1e-10, atol=1e-13)
    # The accuracy is over base classes, counted by hand from the same logits.
    with torch.no_grad():
        z = enc(torch.stack(xs))
        logits = (
            nn.functional.normalize(z, dim=-1)
            @ nn.functional.normalize(learner.classifier.weight, dim=-1).T
        )
    hits = sum(int(logits[i].argmax()) == y for i, y in enumerate(targets))
    assert metrics["accuracy"].item() == pytest.approx(hits / len(targets), abs=1e-7)


def test_a_batch_without_classes_is_refused() -> None:
    learner = BaselinePP(_linear(0), 3, 5).double()
    x = torch.zeros(1, 2, 4, dtype=F64)
    y = torch.tensor([[0, 1]])
    with pytest.raises(DataError, match="no `classes`; sample it with"):
        learner.meta_loss(EpisodeBatch(x, y, x, y, 2))


def test_out_of_range_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"finetune_momentum=1\.0"):
        BaselinePP(_linear(0), 3, 5, finetune_momentum=1.0)
    spec = LEARNERS.get("baseline_pp")
    ctx = BuildContext((1, 28, 28), 5, lambda **_: Conv4(1, 8), classes=0)
    with pytest.raises(ConfigError, match="number of those classes is unknown"):
        spec.build(BaselinePPConfig(algorithm="baseline_pp"), ctx)


# ---------------------------------------------------------------- adapt
def _support_batch() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(5)
    sx = torch.randn(3, 6, 4, generator=g, dtype=F64)  # 3 tasks, 3-way 2-shot
    sy = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0], [1, 0, 2, 2, 0, 1]])
    qx = torch.randn(3, 5, 4, generator=g, dtype=F64)
    return sx, sy, qx


@pytest.mark.parametrize(
    ("steps", "lr", "mu", "tau", "lam"),
    [(5, 0.5, 0.9, 0.9, 0.001), (3, 0.3, 0.5, 0.0, 0.1)],
    ids=["chen_momentum", "heavy_ball_strong_decay"],
)
def test_adapt_against_a_hand_unrolled_fine_tuning(
    steps: int, lr: float, mu: float, tau: float, lam: float
) -> None:
    sx, sy, qx = _support_batch()
    learner = BaselinePP(
        _linear(2),
        3,
        5,
        eval_scale=2.0,
        finetune_steps=steps,
        finetune_lr=lr,
        finetune_momentum=mu,
        finetune_dampening=tau,
        finetune_weight_decay=lam,
    ).double()
    # Under no_grad, as evaluation calls it: the fine-tuning must switch gradients back on.
    with torch.no_grad():
        logits = learner.adapt(Support(sx, sy, 3))(qx)
    assert logits.shape == (3, 5, 3)
    enc = learner.encoder
    for t in range(3):
        with torch.no_grad():
            features = enc(sx[t])
            queries = [_normalise(q) for q in enc(qx[t])]
        head = _finetune_reference(
            features, sy[t].tolist(), 3, steps=steps, lr=lr, mu=mu, tau=tau, lam=lam, s=2.0
        )
        expected = torch.stack(
            [torch.stack([2.0 * (q @ _normalise(h)) for h in head]) for q in queries]
        )
        torch.testing.assert_close(logits[t], expected, rtol=1e-10, atol=1e-12)
        # The fine-tuning moved the head well beyond rounding (so this test sees it).
        imprinted = _finetune_reference(
            features, sy[t].tolist(), 3, steps=0, lr=lr, mu=mu, tau=tau, lam=lam, s=2.0
        )
        start = torch.stack(
            [torch.stack([2.0 * (q @ _normalise(h)) for h in imprinted]) for q in queries]
        )
        assert (expected - start).abs().max() > 1e-3


def test_imprinting_is_the_normalised_mean_of_normalised_features() -> None:
    # Identity encoder, 2-way 2-shot, by hand. Class 0: (1, 0) and (0, 3) -> unit vectors
    # (1, 0), (0, 1) -> head (1, 1)/√2 (the raw mean (0.5, 1.5) would point elsewhere).
    # Class 1: (-1, 0), (0, -2) -> head -(1, 1)/√2. Queries (1, 1) and (2, 0): cosines
    # (1, -1) and (1/√2, -1/√2), times eval_scale = 2.
    enc = nn.Linear(2, 2).double()
    with torch.no_grad():
        enc.weight.copy_(torch.eye(2, dtype=F64))
        enc.bias.zero_()
    learner = BaselinePP(enc, 2, 4, eval_scale=2.0, finetune_steps=0)
    sx = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, -2.0]]], dtype=F64)
    sy = torch.tensor([[0, 0, 1, 1]])
    qx = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]], dtype=F64)
    logits = learner.adapt(Support(sx, sy, 2))(qx)
    r = math.sqrt(2.0)
    expected = torch.tensor([[[2.0, -2.0], [r, -r]]], dtype=F64)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-14)


# ---------------------------------------------------------------- the contract, on Conv-4
@pytest.fixture(scope="module")
def batch() -> EpisodeBatch:
    sampler = EpisodeSampler(make_glyphs(12, 6, image_size=16), ways=3, shots=2, queries=2, seed=1)
    return sampler.sample(4)


def _conv_learner() -> BaselinePP:
    torch.manual_seed(0)
    return BaselinePP(Conv4(1, 8), 8, 12, finetune_steps=4, finetune_lr=0.5)


def _float64(b: EpisodeBatch) -> EpisodeBatch:
    return EpisodeBatch(
        b.support_x.double(), b.support_y, b.query_x.double(), b.query_y, b.n_way, b.classes
    )


def test_every_parameter_gets_a_gradient(batch: EpisodeBatch) -> None:
    # As in the contract suite: conv biases before batch norm are structurally zero (BN
    # removes a per-channel shift); everything else, the classifier of every base class
    # included (the softmax normaliser reaches classes absent from the batch), is not.
    learner = _conv_learner().double()
    loss, _ = learner.meta_loss(_float64(batch))
    loss.backward()
    grads = {}
    for name, p in learner.named_parameters():
        assert p.grad is not None, name
        grads[name] = p.grad.abs().max().item()
    largest = max(grads.values())
    for name, g in grads.items():
        if name.endswith("conv.bias"):
            assert g <= 1e-7 * largest, name
        else:
            assert g > 1e-6 * largest, f"{name}: {g / largest:.1e} of the largest"


def test_adapt_leaves_the_meta_parameters_alone(batch: EpisodeBatch) -> None:
    learner = _conv_learner().eval()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    logits = learner.adapt(batch.support)(batch.query_x)
    assert logits.shape == (*batch.query_y.shape, batch.n_way)
    assert learner.adapt(batch.support)(batch.query_x[:, :1]).shape == (4, 1, 3)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), f"adapt changed {k}"
    assert all(p.grad is None for p in learner.parameters())


def test_same_seed_same_result(batch: EpisodeBatch) -> None:
    a, b = _conv_learner(), _conv_learner()
    assert torch.equal(a.meta_loss(batch)[0], b.meta_loss(batch)[0])
    a.eval(), b.eval()
    first = a.adapt(batch.support)(batch.query_x)
    assert torch.equal(first, b.adapt(batch.support)(batch.query_x))
    assert torch.equal(first, a.adapt(batch.support)(batch.query_x))  # and again: no RNG


def test_batch_of_tasks_equals_tasks_one_by_one(batch: EpisodeBatch) -> None:
    learner = _conv_learner().double().eval()
    b64 = _float64(batch)
    loss = learner.meta_loss(b64)[1]["loss"]
    per_task = [learner.meta_loss(b64.task(i))[1]["loss"] for i in range(b64.n_tasks)]
    torch.testing.assert_close(loss, torch.stack(per_task).mean())
    logits = learner.adapt(b64.support)(b64.query_x)
    for i in range(b64.n_tasks):
        one = b64.task(i)
        torch.testing.assert_close(logits[i : i + 1], learner.adapt(one.support)(one.query_x))


# ---------------------------------------------------------------- through the registry
def test_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "baseline_pp_omniglot_5w1s" in out
    assert "baseline_pp  Baseline++" in out


def test_the_preset_trains_and_evaluates_on_glyphs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    tiny = {
        "data.dataset": "glyphs",
        "data.image_size": "16",
        "backbone.hidden": "8",
        "train.ways": "10",
        "train.steps": "4",
        "train.log_every": "2",
        "train.eval_every": "2",
        "train.checkpoint_every": "2",
        "eval.episodes": "20",
        "eval.val_episodes": "10",
        "model.finetune_steps": "5",
    }
    sets = [arg for key, value in tiny.items() for arg in ("--set", f"{key}={value}")]
    argv = ["train", "baseline_pp_omniglot_5w1s", "--out", str(out), "--no-progress"]
    assert main([*argv, "--device", "cpu", *sets]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 4
    assert result["test"]["episodes"] == 20 and result["test"]["ways"] == 5
    assert 0.0 <= result["test"]["mean"] <= 100.0
    # The classifier covers every trainval class of the glyphs (400 train + 50 val), over
    # Conv-4's 8 features of a 16-pixel image; the checkpoint rebuilds without the data.
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["model"]["classifier.weight"].shape == (450, 8)
    learner = mnemeta.load(out / "checkpoint.pt")
    assert isinstance(learner, BaselinePP) and not learner.training
    x = torch.randn(2, 5, 1, 16, 16)
    predict = learner.adapt(Support(x, torch.arange(5).repeat(2, 1), 5))
    assert predict(torch.randn(2, 7, 1, 16, 16)).shape == (2, 7, 5)
