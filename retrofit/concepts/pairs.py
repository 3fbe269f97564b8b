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
   grounded concept of the class is reported as "unexplained" instead of a confident wrong word;
4. steps 1-3 read only the naming half of the probe images; each chosen name is then tested on
   the other half and kept only when accepted under false-discovery-rate control
   (retrofit.concepts.evidence): a name that does not hold on fresh images becomes
   "unexplained", with its evidence (held-out AUC, p- and q-value, images) beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from retrofit.concepts.evidence import (
    DEFAULT_Q,
    DEFAULT_TEST_SHARE,
    ShownWords,
    auc_p_values,
    average_ranks,
    check_procedure,
    check_q,
    estimated_precision,
    fdr_accept,
    proportion_p_values,
    shown_words,
    split_rows,
)
from retrofit.errors import ConfigError, DataError

MIN_AUC = 0.75  # the grounding bar: the feature must really respond to the concept
MIN_FREQUENCY = 0.5  # a class's concept is present in at least half of its images ...
MIN_LIFT = 0.2  # ... and in clearly more of them than of other classes' images
SAME_CONCEPT = 0.8  # presence Jaccard above which two concepts are one for these images
MIN_GROUP = 5  # fewest images with (and without) a concept for an AUC to be meaningful
CANDIDATES_KEPT = 3


@dataclass(frozen=True)
class PairSettings:
    """Thresholds of the naming rule (see the module docstring)."""

    min_auc: float = MIN_AUC
    min_frequency: float = MIN_FREQUENCY
    min_lift: float = MIN_LIFT
    q: float = DEFAULT_Q
    procedure: str = "bh"
    test_share: float = DEFAULT_TEST_SHARE
    seed: int = 0

    def __post_init__(self) -> None:
        check_q(self.q)
        check_procedure(self.procedure)
        if not 0 < self.test_share < 1:
            raise ConfigError(f"test_share must be in (0, 1), got {self.test_share!r}.")
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
    similarity: torch.Tensor,
    null_similarity: torch.Tensor,
    q: float = DEFAULT_Q,
    procedure: str = "bh",
) -> tuple[torch.Tensor, ShownWords, torch.Tensor]:
    """(indices of the distinct words the images show, the test behind it, (N, V) presence).

    A word is shown when its similarity column splits the images more clearly than the
    encoder's similarity to concept-free prompts (`null_similarity`, (N, P)) does
    (retrofit.concepts.evidence.shown_words); of words present on nearly the same images, the
    clearer one is kept (`distinct_concepts`)."""
    presence = presence_from_similarity(similarity)
    null_split = separability(null_similarity, presence_from_similarity(null_similarity))
    shown = shown_words(
        separability(similarity, presence),
        null_split,
        q,
        procedure,
        sampling_std=gaussian_separability_std(len(similarity)),
    )
    keep = distinct_concepts(presence, shown.statistic)
    return keep[torch.isin(keep, shown.index)], shown, presence


def gaussian_separability_std(n: int, columns: int = 64, max_rows: int = 4000) -> float:
    """How much the separability of a unimodal (Gaussian) column of `n` images varies from one
    draw of images to the next (simulated, seeded; beyond `max_rows` scaled as 1/√n)."""
    rows = max(2, min(n, max_rows))
    sample = torch.randn(rows, columns, generator=torch.Generator().manual_seed(0))
    spread = float(separability(sample, presence_from_similarity(sample)).std())
    return spread * (rows / max(n, rows)) ** 0.5


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
    ranks = average_ranks(x)  # (N, F), 1-based
    n_pos = p.sum(dim=0)  # (V,)
    n_neg = p.shape[0] - n_pos
    u = ranks.T @ p - (n_pos * (n_pos + 1) / 2)[None]  # (F, V)
    auc = u / (n_pos * n_neg).clamp_min(1)[None]
    valid = (n_pos >= MIN_GROUP) & (n_neg >= MIN_GROUP)
    auc[:, ~valid] = float("nan")
    return auc.float()


def name_pairs(
    activations: torch.Tensor,
    labels: torch.Tensor,
    presence: torch.Tensor,
    concept_names: list[str],
    weight: torch.Tensor,
    feature_names: list[str] | None = None,
    settings: PairSettings | None = None,
    split: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[tuple[int, int], dict[str, Any]]:
    """Names for every (class, feature) pair with a non-zero weight (see the module docstring),
    each a tested claim: chosen on the naming rows of `split` (default: a seeded half of each
    class), tested on the others, accepted under FDR control (`settings.q`).

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
    naming, testing = (
        split if split is not None else split_rows(labels, settings.test_share, settings.seed)
    )
    shown, frequency = class_concepts(presence[naming], labels[naming], num_classes, settings)
    pairs: dict[tuple[int, int], dict[str, Any]] = {}
    for c in range(num_classes):
        used = torch.nonzero(weight[c]).flatten().tolist()
        if not used:
            continue
        others = naming[labels[naming] != c]
        auc = auc_matrix(activations[others][:, used], presence[others])  # (len(used), V)
        candidates = torch.nonzero(shown[c]).flatten().tolist()
        for j in used:
            if weight[c, j] < 0:
                pairs[(c, j)] = _negative(j, feature_names)
        positive = [(row, j) for row, j in enumerate(used) if weight[c, j] > 0]
        pairs.update(
            _match_class(positive, auc, candidates, frequency[c], concept_names, c, settings)
        )
    _test_pairs(pairs, activations, labels, presence, testing, concept_names, settings)
    return pairs


def _test_pairs(
    pairs: dict[tuple[int, int], dict[str, Any]],
    activations: torch.Tensor,
    labels: torch.Tensor,
    presence: torch.Tensor,
    testing: torch.Tensor,
    concept_names: list[str],
    settings: PairSettings,
) -> None:
    """Test every chosen name on the testing rows and keep those accepted under FDR control.

    The claim "class c uses feature j because it shows v" is the naming rule's own, and it
    must hold on images not used to choose it: c's images show v more often than other
    classes' by more than `min_lift` (a two-proportion test), and j separates v's presence on
    other classes' images with AUC above `min_auc` (the Mann–Whitney test at that null). Its
    p-value is the larger of the two (an intersection–union test). The margins are what a name
    means, not bars on an encoder's scores: a weak encoder's presence only makes them harder
    to show, so it names less, not worse."""
    index = {name: v for v, name in enumerate(concept_names)}
    chosen = [key for key, pair in pairs.items() if pair["status"] in NAMED]
    if not chosen:
        return
    y, x, present = labels[testing], activations[testing], presence[testing]
    rows = []
    for c, j in chosen:
        v = index[pairs[(c, j)]["concept"]]
        inside = y == c
        n_in, n_out = int(inside.sum()), int((~inside).sum())
        hits_in, hits_out = int(present[inside, v].sum()), int(present[~inside, v].sum())
        auc = auc_matrix(x[~inside][:, j : j + 1], present[~inside][:, v : v + 1])[0, 0]
        rows.append((auc, hits_out, n_out - hits_out, hits_in, n_in, n_out))
    table = torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
    auc, n_pos, n_neg, hits_in, n_in, n_out = table.unbind(dim=1)
    p_feature = auc_p_values(auc, n_pos, n_neg, null=settings.min_auc)
    p_class = proportion_p_values(hits_in, n_in, n_pos, n_out, margin=settings.min_lift)
    p = torch.maximum(p_feature, p_class)
    accepted, q_values = fdr_accept(p, settings.q, settings.procedure)
    for r, key in enumerate(chosen):
        pair = pairs[key]
        pair["evidence"] = {
            "held_out_auc": None if torch.isnan(auc[r]) else round(float(auc[r]), 4),
            "class_share": [
                round(float(hits_in[r] / max(1.0, float(n_in[r]))), 4),
                round(float(n_pos[r] / max(1.0, float(n_out[r]))), 4),
            ],
            "p_value": float(p[r]),
            "q_value": float(q_values[r]),
            "test_images": int(n_in[r] + n_out[r]),
        }
        if not bool(accepted[r]):
            pair["rejected"] = pair["concept"]
            pair["concept"] = pair["status"] = "unexplained"


NAMED = ("explained", "duplicate")


def pair_reliability(pairs: dict[tuple[int, int], dict[str, Any]]) -> dict[str, Any]:
    """How sure the pair names are, from their evidence alone (no ground truth): how many were
    tested and named, and Storey's estimate of the share of named ones that are true."""
    tested = [pair for pair in pairs.values() if "evidence" in pair]
    p = torch.tensor([pair["evidence"]["p_value"] for pair in tested], dtype=torch.float64)
    accepted = torch.tensor([pair["status"] in NAMED for pair in tested], dtype=torch.bool)
    return {
        "tested": len(tested),
        "named": int(accepted.sum()),
        "positive": sum(pair["status"] != "negative" for pair in pairs.values()),
        **estimated_precision(p, accepted),
    }


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
