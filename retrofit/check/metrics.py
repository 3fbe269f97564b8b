"""Interpretability metrics of a model with a linear head (ALGORITHMS.md §7), on cached tensors.

Notation: z (N, n_f) are the bottleneck outputs the head reads, `weight` (C, n_f) the head,
`predicted` (N,) the classes the interpretable model predicts, maps (N, n_f, H, W) the spatial
maps of the selected features. Every function is a pure tensor computation so it can be checked
against cases with a known answer; values that are undefined for the input are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from retrofit.errors import ConfigError
from retrofit.methods.flint.relevance import local_relevance

CNS_TAUS: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
DIVERSITY_K = 5
SID_MIN_SCALE = 1e-5
GROUNDING_TOP = 50
CONTRAST_MAX_SAMPLES = 10_000
_CHUNK = 1024
_NAN = float("nan")


def nanmean(values: torch.Tensor) -> float:
    """Mean over the defined (non-NaN) entries; NaN when there are none."""
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else _NAN


def features_used(weight: torch.Tensor) -> int:
    """Features at least one class reads (a column of the head with a non-zero entry)."""
    return int((weight != 0).any(dim=0).sum())


def features_per_class(weight: torch.Tensor) -> float:
    """nnz(W) / C: how many features the explanation of one class lists on average."""
    return float((weight != 0).sum()) / max(1, weight.shape[0])


def top_features(weight: torch.Tensor, predicted: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) indices of each image's k features with the largest signed weight for its class."""
    rows = weight[predicted]
    return torch.argsort(rows, dim=1, descending=True, stable=True)[:, :k]


def localisation_per_image(
    maps: torch.Tensor,
    weight: torch.Tensor,
    predicted: torch.Tensor,
    k: int = DIVERSITY_K,
    scale_invariant: bool = False,
) -> torch.Tensor:
    """Per image Loc = (1/k) Σ_p max_{j∈K} softmax_p(M_ij); NaN where the class has < k features.

    K is the top-k features of the predicted class by signed weight. With `scale_invariant`
    (SID@k) each map is first divided by its mean absolute value, so that a feature cannot look
    local only because its activations are large.
    """
    if maps.ndim != 4 or maps.shape[1] != weight.shape[1]:
        raise ConfigError(
            f"maps must be (N, {weight.shape[1]}, H, W) to match the head, got {tuple(maps.shape)}."
        )
    predicted = predicted.to(weight.device)
    out = torch.full((maps.shape[0],), _NAN)
    eligible = (weight[predicted] != 0).sum(dim=1) >= k
    top = top_features(weight, predicted, k)
    for start in range(0, maps.shape[0], _CHUNK):
        rows = torch.arange(start, min(start + _CHUNK, maps.shape[0]))
        keep = rows[eligible[rows].cpu()]
        if not len(keep):
            continue
        index = top[keep.to(top.device)].to(maps.device)
        chosen = maps[keep.to(maps.device)].float()
        chosen = chosen.gather(1, index[:, :, None, None].expand(-1, -1, *maps.shape[2:]))
        flat = chosen.flatten(2)
        if scale_invariant:
            flat = flat / flat.abs().mean(dim=2, keepdim=True).clamp_min(SID_MIN_SCALE)
        out[keep] = (F.softmax(flat, dim=2).max(dim=1).values.sum(dim=1) / k).cpu()
    return out


def diversity_at_k(
    maps: torch.Tensor, weight: torch.Tensor, predicted: torch.Tensor, k: int = DIVERSITY_K
) -> float:
    """Diversity@k: how much the top-k features of the predicted class look at different places.

    Range [1/k, 1]; 1 when the k maps peak at k different positions.
    """
    return nanmean(localisation_per_image(maps, weight, predicted, k))


def sid_at_k(
    maps: torch.Tensor, weight: torch.Tensor, predicted: torch.Tensor, k: int = DIVERSITY_K
) -> float:
    """SID@k: Diversity@k on maps divided by their mean absolute value (scale-invariant)."""
    return nanmean(localisation_per_image(maps, weight, predicted, k, scale_invariant=True))


def contributions(z: torch.Tensor, weight: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """v_ij = z_ij · W_ĉi,j: what each feature adds to the predicted class's logit."""
    return z * weight[predicted.to(weight.device)].to(z.device)


def dependence(z: torch.Tensor, weight: torch.Tensor, predicted: torch.Tensor) -> float:
    """mean_i max_j |v_ij| / Σ_j |v_ij|: how much a decision rests on a single feature (lower is better)."""
    v = contributions(z, weight, predicted).abs()
    total = v.sum(dim=1)
    ok = total > 0
    return float((v.max(dim=1).values[ok] / total[ok]).mean()) if ok.any() else _NAN


def class_independence(z: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """CI = 1 − mean_j max_c P_cj, P_cj the share of feature j's (min-shifted) activation on class c.

    0 when every feature fires on one class only; 1 − 1/C when features fire equally on all of
    C balanced classes. Higher means features are shared concepts rather than class detectors.
    """
    if labels.shape != (z.shape[0],):
        raise ConfigError(f"labels must be ({z.shape[0]},), got {tuple(labels.shape)}.")
    g = z.double() - z.double().min(dim=0).values
    per_class = torch.zeros(n_classes, z.shape[1], dtype=torch.double, device=z.device)
    per_class.index_add_(0, labels.to(z.device), g)
    total = g.sum(dim=0)
    ok = total > 0
    if not ok.any():
        return _NAN
    share = per_class[:, ok] / total[ok]
    return float(1 - share.max(dim=0).values.mean())


def _normal_cdf(x: float, mean: float, std: float) -> float:
    return 0.5 * (1 + math.erf((x - mean) / (std * math.sqrt(2))))


def _normal_logpdf(x: float, mean: float, std: float) -> float:
    return -math.log(std) - 0.5 * ((x - mean) / std) ** 2


def overlap_coefficient(mean1: float, std1: float, mean2: float, std2: float) -> float:
    """∫ min(N(x; μ1, σ1), N(x; μ2, σ2)) dx, exactly: split the line where the densities cross."""
    if std1 <= 0 or std2 <= 0:
        raise ConfigError(f"standard deviations must be positive, got {std1} and {std2}.")
    # log N1 − log N2 = a x² + b x + c
    a = 1 / (2 * std2**2) - 1 / (2 * std1**2)
    b = mean1 / std1**2 - mean2 / std2**2
    c = mean2**2 / (2 * std2**2) - mean1**2 / (2 * std1**2) + math.log(std2 / std1)
    if abs(a) < 1e-12 * max(1 / std1**2, 1 / std2**2):
        roots = [-c / b] if abs(b) > 1e-300 else []
    else:
        disc = b * b - 4 * a * c
        roots = (
            sorted({(-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)})
            if disc > 0
            else []
        )
    if not roots:  # one density lies under the other everywhere: identical normals
        return 1.0
    edges = [-math.inf, *roots, math.inf]
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        if math.isinf(low):
            probe = high - 1.0
        elif math.isinf(high):
            probe = low + 1.0
        else:
            probe = (low + high) / 2
        lower = (
            (mean1, std1)
            if _normal_logpdf(probe, mean1, std1) <= _normal_logpdf(probe, mean2, std2)
            else (mean2, std2)
        )
        total += _normal_cdf(high, *lower) - _normal_cdf(low, *lower)
    return min(1.0, max(0.0, total))


def contrastiveness(z: torch.Tensor, seed: int = 0) -> float:
    """1 − mean overlap of the two normals of a seeded 2-component mixture per feature.

    Near 1 when each feature is clearly either on or off; near 0 when its activations form one
    blob. Fitted on at most CONTRAST_MAX_SAMPLES seeded rows.
    """
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    if z.shape[0] < 2:
        return _NAN
    values = z.detach().double().cpu()
    if values.shape[0] > CONTRAST_MAX_SAMPLES:
        generator = torch.Generator().manual_seed(seed)
        values = values[torch.randperm(values.shape[0], generator=generator)[:CONTRAST_MAX_SAMPLES]]
    overlaps = []
    # one thread: the tiny per-feature fits are many times slower with OpenMP oversubscription
    with threadpool_limits(limits=1):
        for column in values.T:
            x = column.numpy()
            scale = float(x.std())
            if scale < 1e-12:
                overlaps.append(1.0)
                continue
            x = ((x - x.mean()) / scale)[:, None]
            mixture = GaussianMixture(n_components=2, random_state=seed).fit(x)
            means = mixture.means_[:, 0]
            stds = np.sqrt(mixture.covariances_.reshape(2))
            overlaps.append(overlap_coefficient(means[0], stds[0], means[1], stds[1]))
    return 1.0 - float(np.mean(overlaps))


def _cosine_matrix(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.double()
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(0)
    return similarity


def structural_grounding(
    weight: torch.Tensor, attributes: torch.Tensor, top: int = GROUNDING_TOP
) -> float:
    """SG = Σ S[top] / Σ G[top]: do classes with similar attributes share features in the head?

    S and G are the cosine similarities between head rows and between rows of the
    class–attribute matrix (diagonals zeroed); `top` are the largest entries of G. 1 when the
    head reproduces the attribute structure.
    """
    attributes = torch.as_tensor(attributes)
    if attributes.ndim != 2 or attributes.shape[0] != weight.shape[0]:
        raise ConfigError(
            f"attributes must be a (classes, attributes) matrix with {weight.shape[0]} rows, "
            f"got shape {tuple(attributes.shape)}."
        )
    n = weight.shape[0]
    if n < 2:
        return _NAN
    s = _cosine_matrix(weight.detach().cpu())
    g = _cosine_matrix(attributes.detach().cpu().double())
    off = ~torch.eye(n, dtype=torch.bool)
    index = torch.argsort(g[off], descending=True, stable=True)[: min(top, n * (n - 1))]
    denominator = float(g[off][index].sum())
    return float(s[off][index].sum()) / denominator if denominator > 0 else _NAN


def correlation(z: torch.Tensor) -> float:
    """Mean over features of the largest cosine with another feature's column (lower is better)."""
    if z.shape[1] < 2:
        return _NAN
    columns = z.double()
    unit = columns / columns.norm(dim=0, keepdim=True).clamp_min(1e-12)
    similarity = unit.T @ unit
    similarity.fill_diagonal_(-math.inf)
    return float(similarity.max(dim=1).values.mean())


def conciseness(
    z: torch.Tensor,
    weight: torch.Tensor,
    predicted: torch.Tensor,
    taus: Sequence[float] = CNS_TAUS,
) -> dict[str, float]:
    """FLINT's CNS(τ): mean number of features with relevance r_j > 1/τ, r_j = v_j / max_i |v_i|
    (retrofit.methods.flint.relevance.local_relevance), over the images with a non-zero contribution."""
    relevance = local_relevance(z, weight, predicted)
    ok = relevance.abs().amax(dim=1) > 0
    relevance = relevance[ok]
    return {
        f"{tau:g}": float((relevance > 1 / tau).sum(dim=1).float().mean()) if ok.any() else _NAN
        for tau in taus
    }


def mass_inside(attribution: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) share of each map's positive mass inside its mask; NaN where a map has none."""
    if attribution.shape != masks.shape:
        raise ConfigError(
            f"attribution maps {tuple(attribution.shape)} and masks {tuple(masks.shape)} must have "
            "the same shape."
        )
    positive = attribution.float().clamp_min(0).flatten(1)
    total = positive.sum(dim=1)
    inside = (positive * masks.flatten(1).to(positive.dtype)).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.full_like(total, _NAN))
