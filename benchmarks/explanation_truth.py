"""Are the global explanations true? Precision, recall and distinctness against the world's truth.

For each world (the demo world with the bundled demo CNN; every folder of benchmarks/weights/
holds another world: its CNN trained by scripts/train_demo_classifier.py with another seed and
class count, e.g. world2, world3 and world4 — world4, 40 classes and seed 13, was added after
every default was set), one conversion per row named with the curated vocabulary; then, on
held-out test images, the truth of the features' global names and of the class-conditional pair
names (retrofit.check.truth), with accuracy retention beside each row. A name counts only when
the feature responds to that concept (AUC >= 0.75 over the test images' true concept labels).

Rows: the encoder-quality axis with qpm (the shipped tiny CLIP; a weaker tiny CLIP of the same
architecture trained on 4 worlds for 250 CPU steps, benchmarks/encoders_weights/; the shipped
CLIP's image embeddings degraded by seeded noise, sigma 0.5 to 4), each with naming's own
estimate of its precision beside the measured one, the abstention share and the words shown;
qsenn and sparse with the shipped CLIP; and, with --variants, qpm's bottleneck variants.

    python -m benchmarks.explanation_truth [--quick] [--worlds demo world4] [--variants ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import retrofit
from benchmarks.common import RESULTS, commit, machine, write_result
from retrofit.check.truth import explanation_truth, model_names
from retrofit.concepts.encoders import load_encoder
from retrofit.datasets.demo import DemoCNN, load_demo_classifier
from retrofit.datasets.synthetic import SyntheticConceptDataset

WORLDS = Path(__file__).parent / "weights"
WEAK_CLIP = Path(__file__).parent / "encoders_weights" / "weak_tiny_clip"
NOISE_LEVELS = (0.5, 1.0, 2.0, 4.0)  # from "barely hurts" to "nearly blind"
ENCODERS = ["tiny", "weak", *(f"noise{sigma:g}" for sigma in NOISE_LEVELS)]
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "concept_features=False": {"concept_features": False},
    "linear_mix=False": {"linear_mix": False},
    "finetune=none": {"finetune": "none"},
    "align": {"concepts_extra": {"align": True}},
    "concept_retention=0": {"bottleneck": {"concept_retention": 0.0}},
    "concept_prior=0": {"head": {"concept_prior": 0.0}},
    "class_diversity=0": {"bottleneck": {"class_diversity": 0.0}},
    "concept labels": {"concept_source": "labels"},
}


def _trained_world(folder: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A world's CNN and settings, as scripts/train_demo_classifier.py wrote them to `folder`."""
    settings = json.loads((folder / "demo_cnn.json").read_text())
    arch = settings["architecture"]
    model = DemoCNN(settings["n_classes"], arch["width"], arch["feature_dim"])
    model.load_state_dict(load_file(str(folder / "demo_cnn.safetensors")))
    return model.eval(), settings


def worlds() -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    out = {"demo": (load_demo_classifier(), {"n_classes": 50, "seed": 0, "image_size": 64})}
    for folder in sorted(WORLDS.glob("*/demo_cnn.safetensors")):
        out[folder.parent.name] = _trained_world(folder.parent)
    return out


@torch.no_grad()
def _activations(imodel: Any, dataset: SyntheticConceptDataset) -> tuple[torch.Tensor, ...]:
    zs, logits = [], []
    for images, _ in DataLoader(dataset, batch_size=256):
        z = imodel.concept_activations(images)
        zs.append(z)
        logits.append(imodel.head(z))
    return torch.cat(zs), torch.cat(logits)


@torch.no_grad()
def _original_accuracy(model: torch.nn.Module, dataset: SyntheticConceptDataset) -> float:
    correct = 0
    for images, labels in DataLoader(dataset, batch_size=256):
        correct += int((model(images).argmax(dim=1) == labels).sum())
    return correct / len(dataset)


def _summary(truth: dict[str, Any]) -> dict[str, Any]:
    out = {k: truth[k] for k in ("precision", "recall", "distinct", "coverage", "pairs")}
    out["abstention"] = None if truth["coverage"] is None else round(1 - truth["coverage"], 4)
    return out


def concept_encoder(name: str) -> Any:
    """The encoder of one row of the encoder-quality axis."""
    if name == "tiny":
        return "tiny"
    if name == "weak":
        return f"tiny:{WEAK_CLIP}"
    if name.startswith("noise"):
        from benchmarks.encoders import NoisyEncoder

        return NoisyEncoder(load_encoder("tiny"), sigma=float(name[len("noise") :]), seed=0)
    raise ValueError(f"unknown encoder row {name!r}; known: {ENCODERS}")


def _naming(imodel: Any) -> dict[str, Any]:
    """Naming's own account of how sure it is (no ground truth), for the row."""
    reliability = imodel.naming_reliability or {}
    pairs = reliability.get("pairs") or {}
    return {
        "estimated_precision": reliability.get("estimated_precision"),
        "named": pairs.get("named"),
        "tested": pairs.get("tested"),
        "words": reliability.get("vocabulary"),
        "encoder_fit": reliability.get("encoder_fit"),
    }


def run_one(
    model: torch.nn.Module,
    world: dict[str, Any],
    method: str,
    variant: dict[str, Any],
    n_train: int,
    n_test: int,
    cache_dir: str,
) -> dict[str, Any]:
    common = {"n_classes": world["n_classes"], "seed": world["seed"], "image_size": 64}
    train = SyntheticConceptDataset(n_train, split="train", **common)
    test = SyntheticConceptDataset(n_test, split="test", **common)
    settings = dict(variant)
    encoder = concept_encoder(settings.pop("encoder", "tiny"))
    concepts = {"encoder": encoder, "vocabulary": "curated", **settings.pop("concepts_extra", {})}
    if settings.pop("concept_source", "clip") == "labels":  # the true per-image labels, no CLIP
        concepts = {"labels": train.concepts, "label_names": train.concept_names}
    start = time.perf_counter()
    imodel = retrofit.convert(
        model,
        DataLoader(train, batch_size=256),
        method=method,
        class_names=train.class_names,
        concepts=concepts,
        time_limit=30,
        cache_dir=cache_dir,
        progress=False,
        **settings,
    )
    seconds = time.perf_counter() - start
    z, logits = _activations(imodel, test)
    accuracy = float((logits.argmax(dim=1) == test.labels).float().mean())
    original = _original_accuracy(model, test)
    truth = test.class_signatures.bool()
    rows = {}
    for kind, conditional in (("global", False), ("pair", True)):
        rows[kind] = _summary(
            explanation_truth(
                imodel.head.weight,
                model_names(imodel, conditional),
                truth,
                test.concept_names,
                test.class_names,
                activations=z,
                concept_labels=test.concepts,
            )
        )
    return {
        "accuracy": accuracy,
        "original_accuracy": original,
        "retention": accuracy / original,
        "convert_seconds": round(seconds, 1),
        "alignment": (imodel.stats.get("concepts") or {}).get("alignment", {}).get("accepted"),
        "naming": _naming(imodel),
        **rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="qpm, default variant, demo only")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--name", default="explanation_truth", help="results/NAME.json")
    parser.add_argument("--worlds", nargs="+", help="default: every world (--quick: the demo)")
    parser.add_argument("--cache-dir", help="reuse extracted features between runs")
    parser.add_argument(
        "--methods", nargs="+", help="only these heads, default variant (e.g. flint)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help="only these qpm variants; the other rows of results/NAME.json are kept",
    )
    parser.add_argument(
        "--encoders", nargs="+", choices=ENCODERS, help="rows of the encoder axis (default: all)"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    measured_on = machine()
    result: dict[str, Any] = {"settings": vars(args), "commit": commit()}
    encoders = args.encoders or ENCODERS
    runs = [("qpm", f"encoder={name}") for name in encoders]
    runs += [("qsenn", "default"), ("sparse", "default")] if not args.encoders else []
    if args.quick:
        runs = [("qpm", "default")]
        args.worlds = args.worlds or ["demo"]
    if args.methods:
        runs = [(method, "default") for method in args.methods]
    if args.variants or args.encoders or args.methods:
        if args.variants:
            runs = [("qpm", name) for name in args.variants]
        kept = RESULTS / f"{args.name}.json"
        if kept.exists():
            earlier = json.loads(kept.read_text())
            result = {**{k: v for k, v in earlier.items() if k != "machine"}, "rerun": vars(args)}
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or scratch
        for world_name, (model, world) in worlds().items():
            if args.worlds and world_name not in args.worlds:
                continue
            for method, variant_name in runs:
                key = f"{world_name}/{method}/{variant_name}"
                variant = (
                    {"encoder": variant_name.partition("=")[2]}
                    if variant_name.startswith("encoder=")
                    else VARIANTS[variant_name]
                )
                row = run_one(
                    model,
                    world,
                    method,
                    variant,
                    args.train_images,
                    args.test_images,
                    cache,
                )
                result[key] = row
                print(key, json.dumps({k: row[k] for k in ("retention", "pair", "naming")}))
                write_result(args.name, result, measured_on)


if __name__ == "__main__":
    main()
