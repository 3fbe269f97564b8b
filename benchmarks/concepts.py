"""Concept naming against ground truth on the synthetic world (writes results/concepts.json).

The demo classifier is converted (QPM, 50 features, 5 per class); each selected feature's
ground-truth concept is the planted concept it responds to most: the highest ROC AUC of its
activation against the concept-presence labels over the probe images. Naming is scored by
top-1 / top-3 accuracy against that, for
  - each CLIP scoring method (soft-WPMI, Pearson, Pearson with log p(concept | image),
    Spearman) with the tiny CLIP, on the curated
    vocabulary and on the curated vocabulary padded with >= 1,000 distractor words from the
    general list (odd-indexed words, which the tiny CLIP never saw in training);
  - Δ-contrast with the concept labels (no CLIP);
  - each method with perfect similarities ("/perfect_similarity": the concept-presence labels
    in place of CLIP's image-concept similarity, world concepts only): the most it can reach
    against this ground truth.
Each CLIP setting runs with the default concept filters and without them ("/no_filters"): the
near-duplicate filter drops concepts the encoder cannot tell apart. Accuracies are also given
over the clearly tuned features (best AUC >= 0.8) and the unambiguous ones (best AUC ahead of
the runner-up by >= 0.02; for the others the ground truth is a near tie).
Also timed, side by side: naming 50 features (all scoring + permutation p-values, with the
default method and with soft-WPMI) against embedding the probe images with the tiny CLIP.

Run from the repository root: python -m benchmarks.concepts [--probe 10000]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable

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
    score_matrix,
    tiny_clip_settings,
)
from retrofit.datasets import SyntheticConceptDataset, demo_world_settings, load_demo_classifier

logger = logging.getLogger("benchmarks.concepts")

N_FEATURES, PER_CLASS = 50, 5
N_DISTRACTORS = 1500
N_PERMUTATIONS = 100
METHODS = ("wpmi", "correlation", "log_prob", "spearman")
CLEAR_AUC = 0.8  # a feature responds clearly to its ground-truth concept
# Below this gap between a feature's two best AUCs, its ground truth is a near tie.
AMBIGUOUS_GAP = 0.02
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


def accuracy(predicted: list[list[str]], truth: list[str], subsets: dict) -> dict:
    """Top-1 / top-3 naming accuracy over all features and over each subset of them."""
    top1 = torch.tensor([p[0] == t for p, t in zip(predicted, truth)]).float()
    top3 = torch.tensor([t in p[:3] for p, t in zip(predicted, truth)]).float()
    out = {"top1": round(float(top1.mean()), 4), "top3": round(float(top3.mean()), 4)}
    for name, mask in subsets.items():
        out[f"top1_{name}"] = round(float(top1[mask].mean()), 4)
        out[f"top3_{name}"] = round(float(top3[mask].mean()), 4)
    return out


def named(imodel) -> list[list[str]]:
    return [[c["concept"] for c in entries] for entries in imodel.concepts]


def perfect_similarity(activations: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """Each method's top-3 with the concept-presence labels standing in for CLIP's similarity:
    what the method could reach with a perfect encoder and no distractors."""
    out = {}
    for method in (*METHODS, "delta"):
        signal = labels if method == "delta" else labels.float()
        scores = score_matrix(method, activations, signal, top_images=100)
        out[method] = [[names[int(v)] for v in row] for row in scores.topk(3, dim=1).indices]
    return out


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
    activations = imodel.bottleneck.transform(features.features)
    auc = auc_scores(activations, data.concepts)
    top_two = auc.topk(2, dim=1).values
    best_auc, truth = auc.max(dim=1)
    subsets = {
        "clear": best_auc >= CLEAR_AUC,
        "unambiguous": top_two[:, 0] - top_two[:, 1] >= AMBIGUOUS_GAP,
    }
    clear = subsets["clear"]
    names = data.concept_names
    truth_names = [names[int(t)] for t in truth]
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
                entry = accuracy(named(imodel), truth_names, subsets)
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
    results["delta/labels"] = accuracy(named(imodel), truth_names, subsets)
    logger.info("delta/labels: %s", results["delta/labels"])
    for method, predicted in perfect_similarity(activations, data.concepts, names).items():
        results[f"{method}/perfect_similarity"] = accuracy(predicted, truth_names, subsets)
        logger.info("%s/perfect_similarity: %s", method, results[f"{method}/perfect_similarity"])

    def embed() -> None:
        embed_images(tiny, loader, progress=False)

    def namer(method: str | None) -> Callable[[], None]:
        return lambda: name_features(
            imodel,
            features,
            image_embeddings=embeddings,
            encoder=tiny,
            concepts=padded,
            method=method,
            n_permutations=N_PERMUTATIONS,
            progress=False,
        )

    variants = {"embed_images": embed, "name_features": namer(None), "name_wpmi": namer("wpmi")}
    times = interleaved_medians(variants, args.repeats)
    payload = {
        "description": __doc__.split("\n\n")[0],
        "probe_images": args.probe,
        "world": {k: world[k] for k in ("n_classes", "image_size", "seed")},
        "n_features": N_FEATURES,
        "per_class": PER_CLASS,
        "clear_features": int(clear.sum()),
        "clear_threshold_auc": CLEAR_AUC,
        "unambiguous_features": int(subsets["unambiguous"].sum()),
        "unambiguous_auc_gap": AMBIGUOUS_GAP,
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
            "wpmi_naming_over_embedding": round(times["name_wpmi"] / times["embed_images"], 4),
            "note": "naming = text embeddings (padded vocabulary, templates averaged), filters, "
            f"scores over all concepts (default method, and soft-WPMI) and {N_PERMUTATIONS} "
            "permutations; embedding = tiny CLIP over the probe images",
        },
    }
    path = write_result("concepts", payload)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
