"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016).

A query x̂ is labelled by attention over the support set (eq. 1):
``P(y | x̂, S) = Σᵢ a(x̂, xᵢ) yᵢ`` with ``a = softmax_i(c(f(x̂), g(xᵢ)))`` and ``c`` the cosine
similarity. Optional *full-context embeddings* (FCE, §2.1.2): ``g`` runs a bidirectional LSTM
over the support embeddings, and ``f`` refines the query embedding with K steps of an LSTM that
attends over ``g(S)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mnemeta.algorithms.protocol import Predictor, accuracy, embed_tasks
from mnemeta.checks import checked
from mnemeta.episode import EpisodeBatch, Support
from mnemeta.registry import LEARNERS, BuildContext, EpisodicConfig, LearnerSpec

# Probabilities are mixed, not logits, so the log needs a floor to stay finite when every
# support item of the true class gets zero attention.
_LOG_FLOOR = 1e-8


class MatchingNet(nn.Module):
    """Matching Networks over an encoder ``(N, *input_shape) -> (N, D)``.

    Args:
        encoder: the shared embedding f' = g' (Conv-4 in the paper).
        embedding_dim: D, needed only for the FCE LSTMs.
        fce: use full-context embeddings.
        fce_steps: K, the number of attention steps of the query LSTM.
        scale: multiplies the cosine before the softmax. The paper uses 1; cosines lie in
            [-1, 1], so with 1 the attention stays almost uniform and training is slow. A fixed
            scale (here 10, as in the cosine classifiers of Chen et al. 2019) trains faster and
            to the same accuracy; set 1.0 for the paper's exact form.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        embedding_dim: int = 64,
        fce: bool = False,
        fce_steps: int = 5,
        scale: float = 10.0,
    ) -> None:
        super().__init__()
        self.encoder, self.fce, self.fce_steps, self.scale = encoder, fce, fce_steps, scale
        if fce:
            self.support_lstm = nn.LSTM(
                embedding_dim, embedding_dim, batch_first=True, bidirectional=True
            )
            # Input: the query embedding concatenated with the last read-out r_{k-1}.
            self.query_cell = nn.LSTMCell(2 * embedding_dim, embedding_dim)

    def embed(self, x: Tensor) -> Tensor:
        return embed_tasks(self.encoder, x)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[Tensor, dict[str, Tensor]]:
        n_s = batch.support_x.shape[1]
        z = self.embed(torch.cat([batch.support_x, batch.query_x], dim=1))
        logits = self._log_probs(z[:, :n_s], batch.support_y, batch.n_way, z[:, n_s:])
        loss = nn.functional.nll_loss(logits.flatten(0, 1), batch.query_y.flatten())
        return loss, {"loss": loss.detach(), "accuracy": accuracy(logits, batch.query_y).mean()}

    def adapt(self, support: Support) -> Predictor:
        support_z = self.embed(support.x)

        def predict(query_x: Tensor) -> Tensor:
            return self._log_probs(support_z, support.y, support.n_way, self.embed(query_x))

        return predict

    def _log_probs(
        self, support_z: Tensor, support_y: Tensor, n_way: int, query_z: Tensor
    ) -> Tensor:
        """Support ``(T, S, D)`` with labels ``(T, S)``, queries ``(T, Q, D)`` -> ``(T, Q, N)``."""
        if self.fce:
            support_z = self._full_context_support(support_z)
            query_z = self._full_context_query(query_z, support_z)
        cos = nn.functional.normalize(query_z, dim=-1) @ nn.functional.normalize(
            support_z, dim=-1
        ).transpose(1, 2)  # (T, Q, S)
        attention = torch.softmax(self.scale * cos, dim=-1)
        onehot = nn.functional.one_hot(support_y, n_way).to(attention.dtype)  # (T, S, N)
        return torch.log((attention @ onehot).clamp_min(_LOG_FLOOR))

    def _full_context_support(self, g_prime: Tensor) -> Tensor:
        """g(xᵢ, S) = h→ᵢ + h←ᵢ + g'(xᵢ) (Vinyals et al., appendix A.2)."""
        out, _ = self.support_lstm(g_prime)  # (T, S, 2D)
        forward, backward = out.chunk(2, dim=-1)
        return forward + backward + g_prime

    def _full_context_query(self, f_prime: Tensor, g: Tensor) -> Tensor:
        """attLSTM(f'(x̂), g(S), K) (appendix A.1): K read steps over the support embeddings."""
        t, q, d = f_prime.shape
        x = f_prime.reshape(t * q, d)
        h, c = torch.zeros_like(x), torch.zeros_like(x)
        readout = torch.zeros_like(x)
        for _ in range(self.fce_steps):
            h_hat, c = self.query_cell(torch.cat([x, readout], dim=-1), (h, c))
            h = h_hat + x  # skip connection h_k = ĥ_k + f'(x̂)
            weights = torch.softmax(h.view(t, q, d) @ g.transpose(1, 2), dim=-1)  # (T, Q, S)
            readout = (weights @ g).reshape(t * q, d)
        return h.view(t, q, d)


@dataclass
class MatchingConfig(EpisodicConfig):
    fce: bool = False  # full-context embeddings (§2.1.2); the paper's Omniglot runs use none
    fce_steps: int = checked(5, ge=1)  # K, attention steps of the query LSTM (with fce)
    # Multiplies the cosine before the softmax: 1 is the paper's form, whose attention over
    # cosines in [-1, 1] stays nearly uniform; 10 (Chen et al. 2019) trains faster.
    scale: float = checked(10.0, gt=0)


def _build(cfg: MatchingConfig, ctx: BuildContext) -> MatchingNet:
    encoder = ctx.build_backbone(per_task_statistics=False)
    return MatchingNet(
        encoder,
        embedding_dim=encoder.out_features(ctx.input_shape),
        fce=cfg.fce,
        fce_steps=cfg.fce_steps,
        scale=cfg.scale,
    )


LEARNERS.register(
    LearnerSpec(
        "matching",
        MatchingConfig,
        "Matching Networks: attention over the support set (Vinyals et al. 2016)",
        build=_build,
    )
)
