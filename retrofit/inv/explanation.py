"""Global explanations by layer: label scores aggregated over each class's images, per layer,
with the slope of each label's score against depth (which concepts emerge deeper)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from retrofit.inv.answers import merge_same_labels
from retrofit.inv.maps import ClusterMaps


def auto_label_records(result: ClusterMaps, labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`auto_labels` output as label records (same-label maps of an image and layer merged)."""
    records = [
        {
            "maps": [m.id],
            "image": m.image,
            "layer": m.layer,
            "depth": m.depth,
            "predicted": result.class_name(int(result.predictions[m.image])),
            "label": label["label"],
            "score": label["score"],
            "n_answers": 0,
        }
        for m, label in zip(result.maps, labels)
    ]
    return merge_same_labels(records)


def depth_slope(scores: list[float]) -> float:
    """Least-squares slope of scores against layer position (0 .. L-1); 0 for one layer."""
    if len(scores) < 2:
        return 0.0
    slope = float(np.polyfit(np.arange(len(scores)), np.asarray(scores, dtype=float), 1)[0])
    return 0.0 if abs(slope) < 1e-12 else slope


def layer_explanation(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per class: each label's mean score per layer over the class's images, its total and its
    depth slope, labels sorted by total."""
    layers = [
        name for name, _ in sorted({(r["layer"], r["depth"]) for r in records}, key=lambda x: x[1])
    ]
    images: dict[str, set[int]] = defaultdict(set)
    sums: dict[str, dict[str, np.ndarray]] = defaultdict(
        lambda: defaultdict(lambda: np.zeros(len(layers)))
    )
    for record in records:
        images[record["predicted"]].add(record["image"])
        sums[record["predicted"]][record["label"]][layers.index(record["layer"])] += record["score"]
    classes = {}
    for name in sorted(sums):
        n = len(images[name])
        rows = [
            {
                "label": label,
                "by_layer": (total / n).tolist(),
                "total": float(total.sum() / n),
                "slope": depth_slope((total / n).tolist()),
            }
            for label, total in sums[name].items()
        ]
        classes[name] = {
            "n_images": n,
            "labels": sorted(rows, key=lambda r: (-r["total"], r["label"])),
        }
    return {"layers": layers, "classes": classes}
