"""INV cluster maps on the demo world: do they find the objects, are they faithful, are their
automatic labels right, and what do they cost?

Run: python -m benchmarks.inv   (writes benchmarks/results/inv.json)
Model: the shipped demo classifier (DemoCNN) on `--images` test scenes of the synthetic concept
world, explained for its predicted class in its last three stages (the default layers).
- IoU: each cluster map binarised at 0.5 against every true object mask; per image and layer,
  the best map's best object; compared with the Grad-CAM map and seeded uniform-noise maps
  (both binarised the same way).
- Reveal curve: p(predicted class) with only the top 2..30 % of a map's pixels shown; area
  normalised to [0, 1]; all cluster maps, each image's best map per layer, random, Grad-CAM.
- Automatic labels (tiny CLIP, the world's concept names): a label agrees when it is a concept
  of the object that most of the map's top 8 % pixels fall on (the background's name when
  they fall on no object); chance: the same labels against another map's object.
- Cost: seconds of cluster_maps (and of labelling and reveal curves) over one forward pass of
  the same images.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import machine, timed, write_result
from retrofit.datasets import SyntheticConceptDataset, load_demo_classifier
from retrofit.inv import auto_labels, cluster_maps, reveal_curves
from retrofit.inv.reveal import reveal_masks

LABEL_STEP = 2  # the 8 % reveal step decides which object a map shows


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def best_iou(saliency: torch.Tensor, masks: torch.Tensor) -> float:
    shown = saliency >= 0.5
    return max((iou(shown, mask) for mask in masks), default=0.0)


def shown_object(saliency: torch.Tensor, masks: torch.Tensor) -> int | None:
    """The object most of the map's top pixels fall on, or None for the background."""
    top = reveal_masks(saliency)[LABEL_STEP]
    inside = [int((top & mask).sum()) for mask in masks]
    background = int(top.sum()) - sum(inside)
    best = max(range(len(inside)), key=inside.__getitem__, default=None)
    return best if best is not None and inside[best] >= background else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    measured_on = machine(["scikit-learn"])

    model = load_demo_classifier()
    dataset = SyntheticConceptDataset(args.images, split="test")
    scenes = [dataset.render(i) for i in range(args.images)]
    images = torch.stack([s.image for s in scenes])

    def forward() -> None:
        with torch.no_grad():
            for start in range(0, len(images), 64):
                model(images[start : start + 64])

    forward_seconds = statistics.median(timed(forward) for _ in range(args.repeats))
    start = time.perf_counter()
    result = cluster_maps(model, images, max_images=args.images, progress=False)
    cluster_seconds = time.perf_counter() - start
    start = time.perf_counter()
    curves = reveal_curves(model, result)
    reveal_seconds = time.perf_counter() - start
    start = time.perf_counter()
    labels = auto_labels(result, concepts=dataset.concept_names)
    label_seconds = time.perf_counter() - start

    noise = torch.rand(
        images.shape[0], *images.shape[2:], generator=torch.Generator().manual_seed(0)
    )
    per_layer = {}
    for layer in result.layers:
        best = []
        for image, scene in enumerate(scenes):
            maps = result.of_image(image, layer)
            if maps:
                best.append(max(best_iou(m.saliency, scene.masks) for m in maps))
        per_layer[layer] = {"best_cluster_map_iou": statistics.mean(best), "n_images": len(best)}
    overall = [
        max(best_iou(m.saliency, scene.masks) for m in result.of_image(i))
        for i, scene in enumerate(scenes)
        if result.of_image(i)
    ]
    truths = []
    for m in result.maps:
        scene = scenes[m.image]
        obj = shown_object(m.saliency, scene.masks)
        if obj is None:
            names = {dataset.concept_names[k] for k in scene.concepts.nonzero()[:, 0].tolist()}
            names = {n for n in names if n in dataset.concept_groups.get("background", [])}
        else:
            names = {
                dataset.concept_names[k]
                for k in scene.object_concepts[obj].nonzero()[:, 0].tolist()
            }
        truths.append(names)
    agree = [label["label"] in names for label, names in zip(labels, truths)]
    chance = [label["label"] in names for label, names in zip(labels, truths[1:] + truths[:1])]
    by_layer_agreement = {
        layer: statistics.mean(a for a, m in zip(agree, result.maps) if m.layer == layer)
        for layer in result.layers
    }
    accuracy = float((result.predictions == dataset.labels[: args.images]).float().mean())
    payload = {
        "settings": {
            "images": args.images,
            "layers": result.layers,
            "model": "demo classifier (shipped weights)",
            "accuracy_on_these_images": accuracy,
        },
        "maps": {
            "n_maps": len(result.maps),
            "maps_per_image_and_layer": len(result.maps) / (args.images * len(result.layers)),
            "mean_k": statistics.mean(s["k"] for s in result.stats),
            "mean_kept_channels": statistics.mean(s["kept_channels"] for s in result.stats),
        },
        "iou": {
            "best_cluster_map_any_layer": statistics.mean(overall),
            "by_layer": per_layer,
            "gradcam": statistics.mean(
                best_iou(cam / cam.max().clamp(min=1e-12), scene.masks)
                for cam, scene in zip(result.gradcam, scenes)
            ),
            "random": statistics.mean(best_iou(n, scene.masks) for n, scene in zip(noise, scenes)),
        },
        "reveal_auc": {
            key: curves[key]["auc"]
            for key in ("cluster_maps", "best_cluster_map", "random", "gradcam")
        },
        "reveal_auc_by_layer": {layer: curves["by_layer"][layer]["auc"] for layer in result.layers},
        "reveal_curves": {
            key: curves[key]["curve"]
            for key in ("cluster_maps", "best_cluster_map", "random", "gradcam")
        },
        "auto_labels": {
            "agreement": statistics.mean(agree),
            "chance_other_map": statistics.mean(chance),
            "by_layer": by_layer_agreement,
        },
        "cost": {
            "forward_seconds": forward_seconds,
            "cluster_maps_seconds": cluster_seconds,
            "cluster_maps_over_forward": cluster_seconds / forward_seconds,
            "reveal_curves_over_forward": reveal_seconds / forward_seconds,
            "auto_labels_over_forward": label_seconds / forward_seconds,
        },
    }
    path = write_result("inv", payload, measured_on)
    print(f"wrote {path}")
    print(payload["iou"], payload["reveal_auc"], payload["auto_labels"], payload["cost"])


if __name__ == "__main__":
    main()
