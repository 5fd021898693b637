"""Meta Memory Network: a few-shot classifier that writes the support set into a key-value
memory, reasons over it in several hops, and fine-tunes its output layer on the support set
with meta-learned step sizes.

Five modules, each a few lines below:

input
    an encoder f_φ (Conv-4): ``z = f_φ(x)``, ``(N, D)``.
memory
    the support set written into a :mod:`~mnemeta.memory.key_value` memory, wiped per episode:
    keys ``zₛ``, values ``[zₛ ; onehot(yₛ)]``. Values carry the embedding as well as the label so
    that a read can move a query in embedding space (reasoning) and vote for labels (output).
reasoning
    H hops of content attention from the query: ``(r, ·) = read(M, qₕ)``,
    ``qₕ₊₁ = qₕ + Pₕ r_emb`` with ``Pₕ`` a learned D × D map, zero at initialisation (so an
    untrained network starts as a Prototypical Network); β of the reads is learned. Support
    items go through the same hops, so that queries and class centres live in one space.
output
    a linear classifier on ``q_H`` whose weights are initialised from memory as the Prototypical
    Network in linear form (Snell et al. §2.4: ``wₙ = 2cₙ``, ``bₙ = −‖cₙ‖²``, with ``cₙ`` the
    class means of the reasoned support), plus ``λ log p``, the label vote of a last read with
    ``q_H`` (λ learned).
meta-learning
    the output layer is fine-tuned on the support set before it classifies the queries:
    ``steps`` of gradient descent on the support cross-entropy with learned step sizes
    (Meta-SGD, Li et al. 2017). The step sizes are per feature, ``α_w`` of shape ``(D,)`` and one
    ``α_b``, shared by all classes: class labels are shuffled per episode, so nothing learned may
    belong to label ``n``. The support's own label votes are left out of that loss (each
    support item reads its own label back, which would make the loss trivially small).

Two phases, as every learner in mnemeta: :meth:`meta_loss` meta-trains all of it over many
episodes (second-order through the fine-tuning unless ``first_order``); :meth:`adapt`
fine-tunes the output layer on a target task's few examples and returns the predictor.

The fine-tuning runs batched over the tasks of a meta-batch without vmap: each task has its own
output weights, and the gradient of the *sum* of the per-task support losses with respect to
task t's weights is the gradient of task t's loss alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mnemeta.algorithms.inner_optim import apply_updates, sgd
from mnemeta.algorithms.protocol import Predictor, accuracy, embed_tasks
from mnemeta.checks import checked
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.errors import ConfigError
from mnemeta.memory import key_value as kv
from mnemeta.registry import LEARNERS, BuildContext, EpisodicConfig, LearnerSpec

# The label vote is a mixture of one-hot values, so its log needs a floor to stay finite when a
# class gets no attention at all (as in Matching Networks).
_LOG_FLOOR = 1e-8


class MetaMemoryNet(nn.Module):
    """Meta Memory Network over an encoder ``(N, *input_shape) -> (N, D)``.

    Args:
        encoder: the input module (Conv-4).
        feature_dim: D, the encoder's output size.
        hops: H, reasoning hops (0: a Prototypical Network with a label vote and fine-tuning).
        inner_lr: initial value of every learned step size α of the output layer.
        inner_steps: fine-tuning steps on the support set in meta-training.
        eval_inner_steps: the same at test time; ``None``: as in meta-training.
        strength: initial β of the memory reads (learned; cosines lie in [-1, 1], so β = 1
            would read almost uniformly, as Matching Networks' ``scale`` discusses).
        first_order: do not differentiate through the fine-tuning steps.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        *,
        hops: int = 2,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        strength: float = 10.0,
        first_order: bool = False,
    ) -> None:
        super().__init__()
        if hops < 0 or inner_steps < 0 or strength <= 0:
            raise ConfigError(
                f"need hops >= 0, inner_steps >= 0 and strength > 0; got hops={hops}, "
                f"inner_steps={inner_steps}, strength={strength}"
            )
        self.encoder = encoder
        self.feature_dim, self.hops = feature_dim, hops
        self.inner_steps = inner_steps
        self.eval_inner_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
        self.first_order = first_order
        maps = [nn.Linear(feature_dim, feature_dim, bias=False) for _ in range(hops)]
        for m in maps:
            nn.init.zeros_(m.weight)  # start as the identity hop: a Prototypical Network
        self.hop_maps = nn.ModuleList(maps)
        self.log_strength = nn.Parameter(torch.tensor(math.log(strength)))
        self.vote_weight = nn.Parameter(torch.tensor(1.0))  # λ
        self.step_weight = nn.Parameter(torch.full((feature_dim,), inner_lr))  # α_w
        self.step_bias = nn.Parameter(torch.tensor(inner_lr))  # α_b

    # ---- the protocol ----
    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, Tensor]]:
        # Support and query through the encoder together: one batch of BN statistics, as in
        # ProtoNet's reference implementation.
        n_s = batch.support_x.shape[1]
        z = embed_tasks(self.encoder, torch.cat([batch.support_x, batch.query_x], dim=1))
        logits = self._logits(
            z[:, :n_s],
            batch.support_y,
            batch.n_way,
            z[:, n_s:],
            steps=self.inner_steps,
            create_graph=not self.first_order,
        )
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, {"loss": loss.detach(), "accuracy": accuracy(logits, batch.query_y).mean()}

    def adapt(self, support: Support) -> Predictor:
        """Write the support into memory and fine-tune the output layer on it; the predictor
        classifies queries ``(T, Q, *input_shape)`` into ``(T, Q, n_way)`` logits."""
        support_z = embed_tasks(self.encoder, support.x).detach()
        memory, support_h = self._reason_support(support_z, support.y, support.n_way)
        weight, bias = self._fine_tune(
            support_h.detach(), support.y, support.n_way, self.eval_inner_steps, create_graph=False
        )
        weight, bias = weight.detach(), bias.detach()

        def predict(query_x: Tensor) -> Tensor:
            return self._query_logits(memory, embed_tasks(self.encoder, query_x), weight, bias)

        return predict

    # ---- the modules ----
    def _logits(
        self,
        support_z: Tensor,
        support_y: Tensor,
        n_way: int,
        query_z: Tensor,
        *,
        steps: int,
        create_graph: bool,
    ) -> Tensor:
        """Support ``(T, S, D)``, labels ``(T, S)``, queries ``(T, Q, D)`` -> ``(T, Q, N)``."""
        memory, support_h = self._reason_support(support_z, support_y, n_way)
        weight, bias = self._fine_tune(support_h, support_y, n_way, steps, create_graph)
        return self._query_logits(memory, query_z, weight, bias)

    def _reason_support(
        self, support_z: Tensor, support_y: Tensor, n_way: int
    ) -> tuple[kv.KeyValueState, Tensor]:
        """The memory module (write the support), and the support through the reasoning hops."""
        t, s, d = support_z.shape
        onehot = nn.functional.one_hot(support_y, n_way).to(support_z.dtype)
        memory = kv.init_state(t, s, d, d + n_way, device=support_z.device, dtype=support_z.dtype)
        memory = kv.write(memory, support_z, torch.cat([support_z, onehot], dim=-1))
        return memory, self._reason(memory, support_z)

    def _reason(self, memory: kv.KeyValueState, q: Tensor) -> Tensor:
        """H hops: ``q ← q + Pₕ read(q)_emb``; ``(T, Q, D)`` -> ``(T, Q, D)``."""
        for hop in self.hop_maps:
            read, _ = kv.read(memory, q, strength=self.log_strength.exp())
            q = q + hop(read[..., : self.feature_dim])
        return q

    def _fine_tune(
        self, support_h: Tensor, support_y: Tensor, n_way: int, steps: int, create_graph: bool
    ) -> tuple[Tensor, Tensor]:
        """The meta-learning module: the output layer, initialised from memory as ProtoNet in
        linear form, after ``steps`` Meta-SGD steps on the support loss.
        ``(T, N, D)`` weights and ``(T, N)`` biases."""
        onehot = nn.functional.one_hot(support_y, n_way).to(support_h.dtype)  # (T, S, N)
        centres = onehot.transpose(1, 2) @ support_h / onehot.sum(1).clamp_min(1).unsqueeze(-1)
        weight, bias = 2 * centres, -centres.square().sum(-1)
        if steps == 0:
            return weight, bias
        # The learned step sizes are per-tensor SGD rates: α_w of shape (D,) broadcasts over
        # the (T, N, D) weights (one α per feature, for every task and class), α_b over (T, N).
        opt = sgd({"weight": self.step_weight, "bias": self.step_bias})
        layer = {"weight": weight, "bias": bias}
        # Evaluation runs under no_grad, but the fine-tuning needs gradients; outside the
        # meta-gradient (adapt) the weights are fresh leaves, so nothing reaches the
        # meta-parameters.
        with torch.enable_grad():
            if not weight.requires_grad:
                layer = {k: v.requires_grad_() for k, v in layer.items()}
            state = opt.init(layer)
            for _ in range(steps):
                logits = support_h @ layer["weight"].transpose(1, 2) + layer["bias"].unsqueeze(1)
                # Sum over tasks of each task's mean loss: task t's gradient is its own.
                loss = (
                    nn.functional.cross_entropy(
                        logits.flatten(0, 1), support_y.flatten(), reduction="none"
                    )
                    .view(support_y.shape)
                    .mean(1)
                    .sum()
                )
                g_w, g_b = torch.autograd.grad(
                    loss, (layer["weight"], layer["bias"]), create_graph=create_graph
                )
                updates, state = opt.update({"weight": g_w, "bias": g_b}, state, layer)
                layer = apply_updates(layer, updates)
        return layer["weight"], layer["bias"]

    def _query_logits(
        self, memory: kv.KeyValueState, query_z: Tensor, weight: Tensor, bias: Tensor
    ) -> Tensor:
        """The output module: the fine-tuned linear layer on the reasoned query, plus λ times
        the log of the label vote read with it. ``(T, Q, D)`` -> ``(T, Q, N)``."""
        q = self._reason(memory, query_z)
        read, _ = kv.read(memory, q, strength=self.log_strength.exp())
        vote = read[..., self.feature_dim :]
        linear = q @ weight.transpose(1, 2) + bias.unsqueeze(1)
        return linear + self.vote_weight * (vote + _LOG_FLOOR).log()


@dataclass
class MetaMemoryConfig(EpisodicConfig):
    hops: int = checked(
        2, ge=0
    )  # H, reasoning hops over the support memory (0: ProtoNet + fine-tuning)
    # Initial Meta-SGD step sizes: logits move by ~α‖h‖², and ‖h‖² is O(10-100) on Conv-4.
    inner_lr: float = checked(0.01, gt=0)
    inner_steps: int = checked(1, ge=0)  # fine-tuning steps of the output layer in meta-training
    eval_inner_steps: int | None = checked(
        None, ge=0
    )  # the same at test time; None: as in training
    strength: float = checked(
        10.0, gt=0
    )  # initial β of the reads: cosines in [-1, 1] need a sharp softmax
    first_order: bool = False  # do not differentiate through the fine-tuning steps


def _build(cfg: MetaMemoryConfig, ctx: BuildContext) -> MetaMemoryNet:
    # Any n_way (the output layer is built from the memory per episode); BN keeps running
    # statistics for evaluation, as for the metric learners.
    encoder = ctx.build_backbone(per_task_statistics=False)
    return MetaMemoryNet(
        encoder,
        encoder.out_features(ctx.input_shape),
        hops=cfg.hops,
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        eval_inner_steps=cfg.eval_inner_steps,
        strength=cfg.strength,
        first_order=cfg.first_order,
    )


LEARNERS.register(
    LearnerSpec(
        "meta_memory",
        MetaMemoryConfig,
        "Meta Memory Network: support set in a key-value memory, multi-hop reads, Meta-SGD head",
        build=_build,
    )
)
