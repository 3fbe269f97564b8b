"""Concept naming against ground truth on the synthetic world (writes results/concepts.json).

The demo classifier is converted (QPM, 50 features, 5 per class); each selected feature's
ground-truth concept is the planted concept it responds to most: the highest ROC AUC of its
activation against the concept-presence labels over the probe images. Naming is scored by
top-1 / top-3 accuracy against that, for
  - each CLIP scoring method (soft-WPMI, Pearson, Spearman) with the tiny CLIP, on the curated
    vocabulary and on the curated vocabulary padded with >= 1,000 distractor words from the
    general list (odd-indexed words, which the tiny CLIP never saw in training);
  - Δ-contrast with the concept labels (no CLIP).
Each CLIP setting runs with the default concept filters and without them ("/no_filters"): the
near-duplicate filter drops concepts the encoder cannot tell apart, world concepts included.
Also timed, side by side: naming 50 features (all scoring + permutation p-values) against
embedding the probe images with the tiny CLIP.

Run from the repository root: python -m benchmarks.concepts [--probe 10000]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from benchmarks.common import interleaved_medians, write_result
from retrofit.concepts import (
    auc_scores,
    curated_concepts,
    embed_images,
    general_words,
    load_tiny_clip,
    name_features,
    tiny_clip_settings,
)
from retrofit.datasets import SyntheticConceptDataset, demo_world_settings, load_demo_classifier

logger = logging.getLogger("benchmarks.concepts")

N_FEATURES, PER_CLASS = 50, 5
N_DISTRACTORS = 1500
N_PERMUTATIONS = 100
METHODS = ("wpmi", "correlation", "spearman")
# soft-WPMI as CLIP-Dissect sets it (a = 10, λ = 1), next to retrofit's defaults.
REFERENCE_WPMI = {"temperature": 10.0, "lam": 1.0}


def distractors(concept_names: list[str], n: int) -> list[str]:
    """Odd-indexed general words (unseen by the tiny CLIP) sharing no token with a concept."""
    tokens = {t for name in concept_names for t in name.split()}
    curated = set(curated_concepts())
    words = [
        w
        for w in general_words()[1::2]
        if w not in curated and not any(t in w or w in t for t in tokens)
    ]
    return words[:n]


def accuracy(imodel, truth: torch.Tensor, names: list[str], clear: torch.Tensor) -> dict:
    """Top-1 / top-3 naming accuracy over all features and over the clearly tuned ones."""
    top1, top3 = [], []
    for j in range(imodel.n_features):
        predicted = [c["concept"] for c in imodel.concepts[j]]
        top1.append(predicted[0] == names[int(truth[j])])
        top3.append(names[int(truth[j])] in predicted[:3])
    top1_t, top3_t = torch.tensor(top1), torch.tensor(top3)
    return {
        "top1": round(float(top1_t.float().mean()), 4),
        "top3": round(float(top3_t.float().mean()), 4),
        "top1_clear": round(float(top1_t[clear].float().mean()), 4),
        "top3_clear": round(float(top3_t[clear].float().mean()), 4),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe", type=int, default=10_000, help="probe images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = demo_world_settings()
    data = SyntheticConceptDataset(
        args.probe,
        n_classes=world["n_classes"],
        image_size=world["image_size"],
        seed=world["seed"],
        split="train",
    )
    images = torch.stack([data[i][0] for i in range(len(data))])
    loader = DataLoader(TensorDataset(images, data.labels), batch_size=250)
    model = load_demo_classifier()
    tiny = load_tiny_clip()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        features = retrofit.extract(model, loader, cache_dir=cache, progress=False)
        extract_s = time.perf_counter() - start
        imodel = retrofit.convert(
            model,
            loader,
            method="qpm",
            n_features=N_FEATURES,
            per_class=PER_CLASS,
            finetune="none",
            time_limit=120,
            threads=args.threads,
            cache_dir=cache,
            progress=False,
        )
    activations = imodel.adapter.transform(features.features)
    auc = auc_scores(activations, data.concepts)
    best_auc, truth = auc.max(dim=1)
    clear = best_auc >= 0.8
    names = data.concept_names
    logger.info("converted; %d of %d features respond clearly", int(clear.sum()), N_FEATURES)

    start = time.perf_counter()
    embeddings, _ = embed_images(tiny, loader, progress=False)
    logger.info("embedded %d images in %.1f s", len(embeddings), time.perf_counter() - start)

    curated = curated_concepts()
    padded = curated + distractors(names, N_DISTRACTORS)
    vocabularies = {"curated": curated, "padded": padded}
    results: dict = {}
    for vocab_name, vocab in vocabularies.items():
        for method in (*METHODS, "wpmi_reference"):
            for filters in (True, False):
                options = REFERENCE_WPMI if method == "wpmi_reference" else {}
                result = name_features(
                    imodel,
                    features,
                    image_embeddings=embeddings,
                    encoder=tiny,
                    concepts=vocab,
                    method=method.removesuffix("_reference"),
                    top_k=3,
                    filters=filters,
                    n_permutations=N_PERMUTATIONS,
                    progress=False,
                    **options,
                )
                entry = accuracy(imodel, truth, names, clear)
                entry["vocabulary_size"] = len(vocab)
                entry["after_filters"] = len(result.concepts)
                entry["world_concepts_filtered_out"] = sorted(set(result.removed) & set(names))
                entry["median_top1_p_value"] = round(
                    float(torch.tensor([c[0]["p_value"] for c in imodel.concepts]).median()), 4
                )
                key = f"{method}/{vocab_name}" + ("" if filters else "/no_filters")
                results[key] = entry
                logger.info("%s: %s", key, entry)
    name_features(
        imodel,
        features,
        concepts=names,
        concept_labels=data.concepts,
        top_k=3,
        n_permutations=N_PERMUTATIONS,
        progress=False,
    )
    results["delta/labels"] = accuracy(imodel, truth, names, clear)
    logger.info("delta/labels: %s", results["delta/labels"])

    def embed() -> None:
        embed_images(tiny, loader, progress=False)

    def name() -> None:
        name_features(
            imodel,
            features,
            image_embeddings=embeddings,
            encoder=tiny,
            concepts=padded,
            method="wpmi",
            n_permutations=N_PERMUTATIONS,
            progress=False,
        )

    times = interleaved_medians({"embed_images": embed, "name_features": name}, args.repeats)
    payload = {
        "description": __doc__.split("\n\n")[0],
        "probe_images": args.probe,
        "world": {k: world[k] for k in ("n_classes", "image_size", "seed")},
        "n_features": N_FEATURES,
        "per_class": PER_CLASS,
        "clear_features": int(clear.sum()),
        "clear_threshold_auc": 0.8,
        "ground_truth": [
            {"feature": j, "concept": names[int(truth[j])], "auc": round(float(best_auc[j]), 4)}
            for j in range(N_FEATURES)
        ],
        "naming": results,
        "distractors": {
            "count": len(padded) - len(curated),
            "source": "odd-indexed general_words.txt entries (never seen by the tiny CLIP), "
            "sharing no token with a world concept",
        },
        "tiny_clip": {
            "metrics": tiny_clip_settings()["metrics"],
            "weights": tiny_clip_settings()["weights"],
        },
        "timing_s": {
            "extract_demo_features": round(extract_s, 2),
            **{k: round(v, 3) for k, v in times.items()},
            "naming_over_embedding": round(times["name_features"] / times["embed_images"], 4),
            "note": "naming = text embeddings (padded vocabulary, templates averaged), filters, "
            f"soft-WPMI over all concepts and {N_PERMUTATIONS} permutations; embedding = tiny "
            "CLIP over the probe images",
        },
    }
    path = write_result("concepts", payload)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
