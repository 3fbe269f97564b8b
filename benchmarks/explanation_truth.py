"""Are the global explanations true? Precision, recall and distinctness against the world's truth.

For each world (the demo world with the bundled demo CNN; every folder of benchmarks/weights/
holds another world: its CNN trained by scripts/train_demo_classifier.py with another seed and
class count, e.g. world2 and world3),
each head (qpm, qsenn, sparse) and each bottleneck variant, one conversion named with the bundled
tiny CLIP and the curated vocabulary; then, on held-out test images, the truth of the features'
global names and of the class-conditional pair names (retrofit.check.truth), with accuracy
retention beside each row. A name counts only when the feature responds to that concept
(AUC >= 0.75 over the test images' true concept labels).

    python -m benchmarks.explanation_truth [--quick]
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
from benchmarks.common import RESULTS, machine, write_result
from retrofit.check.truth import explanation_truth, model_names
from retrofit.datasets.demo import DemoCNN, load_demo_classifier
from retrofit.datasets.synthetic import SyntheticConceptDataset

WORLDS = Path(__file__).parent / "weights"
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "concept_features=False": {"concept_features": False},
    "linear_mix=False": {"linear_mix": False},
    "finetune=none": {"finetune": "none"},
    "align": {"concepts_extra": {"align": True}},
    "concept_retention=0": {"extra": {"concept_retention": 0.0}},
    "concept_min_separability=0": {"extra": {"concept_min_separability": 0.0}},
    "concept_prior=0": {"extra": {"concept_prior": 0.0}},
    "class_diversity=0": {"extra": {"class_diversity": 0.0}},
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
    return {k: truth[k] for k in ("precision", "recall", "distinct", "coverage", "pairs")}


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
    concepts = {"encoder": "tiny", "vocabulary": "curated", **settings.pop("concepts_extra", {})}
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
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    measured_on = machine()
    result: dict[str, Any] = {"settings": vars(args)}
    runs = [("qpm", name) for name in VARIANTS] + [("qsenn", "default"), ("sparse", "default")]
    if args.quick:
        runs = [("qpm", "default")]
        args.worlds = args.worlds or ["demo"]
    if args.methods:
        runs = [(method, "default") for method in args.methods]
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
                row = run_one(
                    model,
                    world,
                    method,
                    VARIANTS[variant_name],
                    args.train_images,
                    args.test_images,
                    cache,
                )
                result[key] = row
                print(key, json.dumps({k: row[k] for k in ("retention", "global", "pair")}))
                write_result(args.name, result, measured_on)


if __name__ == "__main__":
    main()
