"""Tiny run settings shared by the recipe tests (``--set`` items, in the order applied).

Not a test module: the recipe tests import it with ``tests/recipes`` on ``sys.path``, as
``tests/store`` imports ``store_workers``.
"""

from __future__ import annotations

#: demo_glyphs_protonet in about a second a run.
EPISODIC = [
    "backbone.hidden=8",
    "train.ways=5",
    "train.queries=2",
    "train.log_every=1",
    "train.eval_every=4",
    "train.checkpoint_every=4",
    "eval.episodes=20",
    "eval.val_episodes=10",
    "eval.batch_size=10",
]
#: ntm_copy (or lstm_copy): a small NTM on sequences of 1-4 vectors.
COPY = [
    "model.controller=16",
    "model.memory_rows=24",
    "model.memory_width=6",
    "sequence.max_length=4",
    "sequence.eval_max_length=20",
    "train.log_every=1",
    "train.checkpoint_every=3",
    "eval.episodes=20",
]
#: mann_omniglot_5class on the embedded glyphs (no Omniglot needed): 3 classes x 4 drawings.
ONE_SHOT = [
    "data.dataset=glyphs",
    "data.image_size=12",
    "model.controller=16",
    "model.memory_rows=16",
    "model.memory_width=6",
    "model.read_heads=2",
    "sequence.classes=3",
    "sequence.instances=4",
    "train.meta_batch=4",
    "train.log_every=1",
    "train.checkpoint_every=3",
    "eval.episodes=12",
    "eval.batch_size=5",
]
#: maml_rl_navigation2d (and rl2_navigation2d's [rl] part): 2 tasks x 3 trajectories of 10 steps.
NAVIGATION = [
    "rl.trajectories=3",
    "rl.horizon=10",
    "train.meta_batch=2",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "eval.episodes=3",
]
