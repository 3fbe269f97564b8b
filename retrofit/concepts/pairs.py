"""Class-conditional names: why class c uses feature j, grounded in what the feature responds to.

A feature is usually polysemantic, so its one global name is often not the reason a given
class uses it. For every (class c, feature j) pair with a positive weight:

1. the class's concepts are those its images show clearly more often than other images
   (presence from concept labels, or from CLIP similarity thresholded per concept);
2. each candidate concept v is scored by how well feature j separates images with v from
   images without it — the AUC of φ_j against v's presence — over images of *other* classes,
   so a feature that merely fires on class c cannot ground every concept of c;
3. within a class, features are matched to distinct grounded concepts (maximum total AUC), a
   feature left over keeps its best grounded concept (status "duplicate"), and a feature with no
   grounded concept of the class is reported as "unexplained" instead of a confident wrong word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from retrofit.errors import ConfigError, DataError

MIN_AUC = 0.75  # the grounding bar: the feature must really respond to the concept
MIN_FREQUENCY = 0.5  # a class's concept is present in at least half of its images ...
MIN_LIFT = 0.2  # ... and in clearly more of them than of other classes' images
SAME_CONCEPT = 0.8  # presence Jaccard above which two concepts are one for these images
# A word the images show splits them into two groups: the Otsu cut of its similarity column
# explains at least this share of the column's variance (`separability`). Any unimodal column
# explains less: 2/π ≈ 0.64 for a Gaussian, 0.75 for a uniform one. A word the images never
# show still gets an Otsu split of its noise, which a probe then learns as a mixture of real
# concepts ("knitted" = some red + some sand background). With the tiny CLIP on three worlds
# every world concept scored 0.87-0.98 and every absent word at most 0.72 (median 0.64-0.65),
# but for one mixture of white objects, "white background" (0.84-0.86).
SHOWN_SEPARABILITY = 0.8
MIN_GROUP = 5  # fewest images with (and without) a concept for an AUC to be meaningful
CANDIDATES_KEPT = 3


@dataclass(frozen=True)
class PairSettings:
    """Thresholds of the naming rule (see the module docstring)."""

    min_auc: float = MIN_AUC
    min_frequency: float = MIN_FREQUENCY
    min_lift: float = MIN_LIFT

    def __post_init__(self) -> None:
        for name in ("min_auc", "min_frequency"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ConfigError(f"{name} must be in (0, 1), got {value!r}.")
        if not 0 <= self.min_lift < 1:
            raise ConfigError(f"min_lift must be in [0, 1), got {self.min_lift!r}.")


def presence_from_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """(N, V) bool: concept v present where its image–concept similarity is above the Otsu
    threshold of its column (the cut that best splits the images into two groups)."""
    sim = similarity.float()
    lo, hi = sim.min(dim=0).values, sim.max(dim=0).values
    grid = torch.linspace(0, 1, 65)[1:-1]
    cuts = lo[None] + grid[:, None] * (hi - lo).clamp_min(1e-12)[None]  # (63, V)
    above = sim[None] > cuts[:, None]  # (63, N, V)
    n_above = above.sum(dim=1).float()
    n = sim.shape[0]
    mean_above = (above * sim[None]).sum(dim=1) / n_above.clamp_min(1)
    mean_below = ((~above) * sim[None]).sum(dim=1) / (n - n_above).clamp_min(1)
    between = n_above * (n - n_above) * (mean_above - mean_below) ** 2
    best = between.argmax(dim=0)
    threshold = cuts.gather(0, best[None])[0]
    return sim > threshold[None]


def separability(similarity: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """(V,) share of each similarity column's variance that its present/absent split explains."""
    sim, p = similarity.float(), presence.float()
    w = p.mean(dim=0)
    m1 = (sim * p).sum(dim=0) / p.sum(dim=0).clamp_min(1)
    m0 = (sim * (1 - p)).sum(dim=0) / (1 - p).sum(dim=0).clamp_min(1)
    return w * (1 - w) * (m1 - m0) ** 2 / sim.var(dim=0, unbiased=False).clamp_min(1e-12)


def distinct_concepts(presence: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Indices of concepts kept when those present on nearly the same images (Jaccard ≥
    SAME_CONCEPT) are merged into the one with the higher `quality` — the probe images cannot
    tell them apart, so naming a feature by either would be a guess."""
    p = presence.float()
    inter = p.T @ p
    union = p.sum(dim=0)[:, None] + p.sum(dim=0)[None] - inter
    jaccard = inter / union.clamp_min(1)
    kept: list[int] = []
    for v in torch.argsort(quality, descending=True, stable=True).tolist():
        if all(float(jaccard[v, k]) < SAME_CONCEPT for k in kept):
            kept.append(v)
    return torch.tensor(sorted(kept), dtype=torch.long)


def shown_concepts(
    similarity: torch.Tensor, presence: torch.Tensor, min_separability: float = SHOWN_SEPARABILITY
) -> torch.Tensor:
    """Indices of the distinct words (`distinct_concepts`) whose similarity splits the images
    in two (`separability` ≥ `min_separability`): the words the images show."""
    split = separability(similarity, presence)
    keep = distinct_concepts(presence, split)
    return keep[split[keep] >= min_separability]


def class_concepts(
    presence: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: PairSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, V) bool: the concepts each class shows, and (C, V) their frequency in the class."""
    presence = presence.float()
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).float()  # (N, C)
    counts = onehot.sum(dim=0)  # (C,)
    inside = onehot.T @ presence  # (C, V)
    frequency = inside / counts.clamp_min(1)[:, None]
    outside = (presence.sum(dim=0)[None] - inside) / (len(labels) - counts).clamp_min(1)[:, None]
    shown = (frequency >= settings.min_frequency) & (frequency - outside >= settings.min_lift)
    return shown & (counts[:, None] > 0), frequency


def auc_matrix(activations: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """(F, V): AUC of each feature's activation against each concept's presence (ties count
    half; NaN where a concept has fewer than MIN_GROUP images with or without it)."""
    x = activations.double()
    p = presence.double()
    ranks = _average_ranks(x)  # (N, F), 1-based
    n_pos = p.sum(dim=0)  # (V,)
    n_neg = p.shape[0] - n_pos
    u = ranks.T @ p - (n_pos * (n_pos + 1) / 2)[None]  # (F, V)
    auc = u / (n_pos * n_neg).clamp_min(1)[None]
    valid = (n_pos >= MIN_GROUP) & (n_neg >= MIN_GROUP)
    auc[:, ~valid] = float("nan")
    return auc.float()


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Column-wise ranks with ties averaged (so constant features get AUC 0.5)."""
    out = torch.empty_like(x)
    for j in range(x.shape[1]):
        values, inverse, counts = torch.unique(x[:, j], return_inverse=True, return_counts=True)
        ends = torch.cumsum(counts, 0).double()
        average = ends - (counts.double() - 1) / 2
        out[:, j] = average[inverse]
    return out


def name_pairs(
    activations: torch.Tensor,
    labels: torch.Tensor,
    presence: torch.Tensor,
    concept_names: list[str],
    weight: torch.Tensor,
    feature_names: list[str] | None = None,
    settings: PairSettings | None = None,
) -> dict[tuple[int, int], dict[str, Any]]:
    """Names for every (class, feature) pair with a non-zero weight (see the module docstring).

    `activations` (N, F) are the head's inputs on the probe images, `labels` (N,) their
    classes, `presence` (N, V) which concepts each image shows, `weight` (C, F) the head.
    """
    settings = settings or PairSettings()
    n, n_f = activations.shape
    num_classes = weight.shape[0]
    if labels.shape != (n,) or presence.ndim != 2 or presence.shape[0] != n:
        raise DataError(
            f"Pair naming needs labels ({n},) and concept presence ({n}, V) for {n} probe images, "
            f"got {tuple(labels.shape)} and {tuple(presence.shape)}."
        )
    if presence.shape[1] != len(concept_names):
        raise DataError(
            f"{presence.shape[1]} concept columns but {len(concept_names)} concept names."
        )
    if weight.shape[1] != n_f:
        raise DataError(f"The head reads {weight.shape[1]} features, the probe has {n_f}.")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"Probe labels must lie in [0, {num_classes}).")
    presence = presence.bool().cpu()
    labels = labels.long().cpu()
    activations = activations.float().cpu()
    weight = weight.detach().float().cpu()
    shown, frequency = class_concepts(presence, labels, num_classes, settings)
    pairs: dict[tuple[int, int], dict[str, Any]] = {}
    for c in range(num_classes):
        used = torch.nonzero(weight[c]).flatten().tolist()
        if not used:
            continue
        others = labels != c
        auc = auc_matrix(activations[others][:, used], presence[others])  # (len(used), V)
        candidates = torch.nonzero(shown[c]).flatten().tolist()
        for j in used:
            if weight[c, j] < 0:
                pairs[(c, j)] = _negative(j, feature_names)
        positive = [(row, j) for row, j in enumerate(used) if weight[c, j] > 0]
        pairs.update(
            _match_class(positive, auc, candidates, frequency[c], concept_names, c, settings)
        )
    return pairs


def _negative(j: int, feature_names: list[str] | None) -> dict[str, Any]:
    name = feature_names[j] if feature_names else f"feature_{j}"
    return {"concept": name, "status": "negative", "auc": None, "candidates": []}


def _match_class(
    positive: list[tuple[int, int]],
    auc: torch.Tensor,
    candidates: list[int],
    frequency: torch.Tensor,
    concept_names: list[str],
    c: int,
    settings: PairSettings,
) -> dict[tuple[int, int], dict[str, Any]]:
    """Distinct grounded concepts for one class's positive features (maximum total AUC)."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    if not positive:
        return out
    rows = [row for row, _ in positive]
    scores = auc[rows][:, candidates] if candidates else torch.zeros(len(rows), 0)
    scores = torch.nan_to_num(scores, nan=0.0)
    grounded = scores >= settings.min_auc
    matched: dict[int, int] = {}
    if candidates and bool(grounded.any()):
        cost = np.where(grounded.numpy(), -scores.numpy(), 1.0)
        for r, k in zip(*linear_sum_assignment(cost)):
            if grounded[r, k]:
                matched[int(r)] = int(k)
    for r, (_, j) in enumerate(positive):
        ranked = (
            torch.argsort(scores[r], descending=True, stable=True).tolist() if candidates else []
        )
        top = [
            {"concept": concept_names[candidates[k]], "auc": round(float(scores[r, k]), 4)}
            for k in ranked[:CANDIDATES_KEPT]
        ]
        if r in matched:
            k, status = matched[r], "explained"
        elif ranked and grounded[r, ranked[0]]:
            k, status = ranked[0], "duplicate"
        else:
            out[(c, j)] = {
                "concept": "unexplained",
                "status": "unexplained",
                "auc": top[0]["auc"] if top else None,
                "candidates": top,
            }
            continue
        v = candidates[k]
        out[(c, j)] = {
            "concept": concept_names[v],
            "status": status,
            "auc": round(float(scores[r, k]), 4),
            "class_frequency": round(float(frequency[v]), 4),
            "candidates": top,
        }
    return out
