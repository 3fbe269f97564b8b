"""FLINT's MAS (maximum activating samples) for the relevant class–attribute pairs.

MAS(c, j, k) = the k images of class c (true label) on which attribute j is largest; a pair
(c, j) is shown when its global relevance r_{j,c} on the check images exceeds 1/τ. The images
are fetched with a second pass over the loader (no model runs), so only the shown ones are kept.
"""

from __future__ import annotations

from typing import Any

import torch

from retrofit.extraction.loaders import as_batches, iterate
from retrofit.methods.flint.relevance import DEFAULT_TAU, class_relevance

MAS_IMAGES = 3
DEFAULT_MAS_PAIRS = 24  # pairs shown in the report, most relevant first


def relevant_pairs(
    z: torch.Tensor,
    weight: torch.Tensor,
    predicted: torch.Tensor,
    tau: float = DEFAULT_TAU,
    limit: int = DEFAULT_MAS_PAIRS,
) -> list[tuple[int, int, float]]:
    """(class, feature, r_{j,c}) with r_{j,c} > 1/τ, most relevant first, at most `limit`."""
    table = class_relevance(z, weight.cpu(), predicted, weight.shape[0])
    classes, features = torch.nonzero(table > 1 / tau, as_tuple=True)
    values = table[classes, features]
    order = torch.argsort(values, descending=True, stable=True)[:limit]
    return [(int(classes[i]), int(features[i]), float(values[i])) for i in order]


def mas_indices(
    z: torch.Tensor, labels: torch.Tensor, pairs: list[tuple[int, int, float]], k: int = MAS_IMAGES
) -> list[list[int]]:
    """Per pair, the rows of the k images of class c with the largest feature j (fewer if the
    class has fewer images)."""
    out = []
    for c, j, _ in pairs:
        rows = torch.nonzero(labels == c).flatten()
        order = torch.argsort(z[rows, j], descending=True, stable=True)[:k]
        out.append(rows[order].tolist())
    return out


def gather_images(loader: Any, wanted: set[int], batch_size: int) -> dict[int, torch.Tensor]:
    """The images at the given positions of the loader's order (float16, CPU)."""
    found: dict[int, torch.Tensor] = {}
    seen = 0
    if not wanted:
        return found
    for images, _ in iterate(as_batches(loader, batch_size=batch_size)):
        for offset in range(len(images)):
            if seen + offset in wanted:
                found[seen + offset] = images[offset].detach().to("cpu", torch.float16)
        seen += len(images)
        if len(found) == len(wanted):
            break
    return found


def mas_visuals(
    loader: Any,
    z: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    weight: torch.Tensor,
    names: tuple[list[str], list[str]],
    limit: int,
    batch_size: int,
) -> list[dict[str, Any]]:
    """What the report's MAS section draws: per relevant pair, its names, r_{j,c}, images."""
    class_names, feature_names = names
    pairs = relevant_pairs(z, weight, predicted, limit=limit)
    rows = mas_indices(z, labels, pairs)
    images = gather_images(loader, {i for r in rows for i in r}, batch_size)
    return [
        {
            "class": class_names[c],
            "feature": feature_names[j],
            "index": j,
            "relevance": r,
            "activations": [float(z[i, j]) for i in ids],
            "images": [images[i].float() for i in ids if i in images],
        }
        for (c, j, r), ids in zip(pairs, rows)
    ]
