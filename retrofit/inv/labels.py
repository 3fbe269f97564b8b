"""Automatic labels of cluster maps: CLIP scores of each map's revealed crops (section 9.3).

A map's six revealed crops (its top 2 .. 30 % of pixels, the rest of the crop filled with the
image's mean colour, cropped to the revealed box) are embedded with a retrofit concept encoder
and scored against the vocabulary; like INV's human score, earlier steps count more
(weight 1 - 0.1 x step), so a concept recognisable from few pixels wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from retrofit.concepts.encoders import ConceptEncoder, embed_concepts, load_encoder
from retrofit.concepts.scoring import WPMI_TEMPERATURE, concept_probabilities
from retrofit.concepts.vocabulary import Vocabulary, load_vocabulary
from retrofit.errors import ConfigError
from retrofit.inv.maps import ClusterMaps
from retrofit.inv.reveal import REVEAL_FRACTIONS, reveal_masks

STEP_PENALTY = 0.1
MIN_CROP = 1 / 8  # the smallest crop side, as a share of the image side
TOP_LABELS = 3
MAPS_PER_BATCH = 32


def step_weights(steps: int = len(REVEAL_FRACTIONS)) -> torch.Tensor:
    return 1 - STEP_PENALTY * torch.arange(steps, dtype=torch.float32)


def revealed_crops(image: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """(S, C, H, W): the image at each reveal step, unrevealed pixels in the image's mean
    colour, cropped to the revealed pixels' box (at least MIN_CROP of the side) and resized back."""
    channels, height, width = image.shape
    mean = image.mean(dim=(1, 2), keepdim=True)
    crops = []
    for mask in reveal_masks(saliency):
        shown = torch.where(mask[None], image, mean)
        rows, cols = mask.any(dim=1).nonzero()[:, 0], mask.any(dim=0).nonzero()[:, 0]
        top, bottom = _span(int(rows.min()), int(rows.max()) + 1, height)
        left, right = _span(int(cols.min()), int(cols.max()) + 1, width)
        crop = shown[:, top:bottom, left:right][None]
        crops.append(
            F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
        )
    return torch.cat(crops)


def _span(low: int, high: int, size: int) -> tuple[int, int]:
    """Widen [low, high) to at least MIN_CROP x size, kept inside [0, size)."""
    need = max(1, round(MIN_CROP * size))
    if high - low >= need:
        return low, high
    low = max(0, min(size - need, (low + high - need) // 2))
    return low, low + need


def auto_labels(
    result: ClusterMaps,
    concepts: Vocabulary | Sequence[str] | str | None = None,
    encoder: ConceptEncoder | str | None = None,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    temperature: float = WPMI_TEMPERATURE,
) -> list[dict[str, Any]]:
    """Per cluster map (in `result.maps` order): its best concepts and their scores.

    `concepts`/`encoder` take what retrofit's naming takes (default: the curated vocabulary and
    the bundled tiny CLIP); `input_mean`/`input_std` undo the loader's normalisation.
    """
    if not result.maps:
        raise ConfigError("There are no cluster maps to label.")
    vocabulary = load_vocabulary(concepts)
    encoder = load_encoder(encoder)
    texts = embed_concepts(encoder, vocabulary.concepts, vocabulary.templates)
    weights = step_weights()
    steps = len(weights)
    labels = []
    for start in range(0, len(result.maps), MAPS_PER_BATCH):
        chunk = result.maps[start : start + MAPS_PER_BATCH]
        crops = torch.cat(
            [revealed_crops(result.images[m.image].float(), m.saliency) for m in chunk]
        )
        embeddings = encoder.encode_images(crops, input_mean, input_std)
        probabilities = concept_probabilities(embeddings @ texts.T, temperature)
        probabilities = probabilities.view(len(chunk), steps, -1)
        all_scores = (weights[None, :, None] * probabilities).sum(dim=1) / weights.sum()
        for cluster_map, scores in zip(chunk, all_scores):
            top = torch.argsort(scores, descending=True, stable=True)[:TOP_LABELS]
            labels.append(
                {
                    "map": cluster_map.id,
                    "label": vocabulary.concepts[int(top[0])],
                    "score": float(scores[top[0]]),
                    "top": [
                        {"concept": vocabulary.concepts[int(i)], "score": float(scores[i])}
                        for i in top
                    ],
                }
            )
    return labels
