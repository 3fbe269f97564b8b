"""Constants of the QPM program: feature-class correlation A, feature redundancy R, locality bias.

Everything here is computed in chunks over images so the memory stays bounded by the chunk
size and the D x C / D x D results, whatever N is.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from retrofit.errors import ConfigError, DataError, FeatureError

logger = logging.getLogger(__name__)

_ROWS_PER_CHUNK = 16384  # 256 MB of float64 at D = 2,048
_MAP_ELEMENTS_PER_CHUNK = 1 << 24
_CONSTANT_STD = 1e-12
MIN_ROWS_PER_CLASS = 50  # rows_within never estimates A from fewer on average


@dataclass(frozen=True)
class ClassCorrelation:
    """A (D x C) and, from the same pass, every column's mean and population std (float64)."""

    assoc: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def class_correlation(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    chunk_size: int = _ROWS_PER_CHUNK,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """A (D x C): see correlation_with_moments."""
    return correlation_with_moments(
        features, labels, n_classes, chunk_size=chunk_size, rows=rows
    ).assoc


def correlation_with_moments(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    chunk_size: int = _ROWS_PER_CHUNK,
    rows: torch.Tensor | None = None,
) -> ClassCorrelation:
    """A (D x C): Pearson correlation of feature j with the indicator 1[y = c], divided by max|A|.

    Pearson correlation does not change under standardisation, so the raw features can be
    passed: this avoids an N x D standardised copy. One pass over the rows (chunk means and
    centred squares merged as Chan et al.'s parallel variance), or over `rows` only (ascending
    indices: an estimate from a subset when a full pass does not fit the time limit). Constant
    features and empty classes get zero correlation. Returned in float64 so that ties are
    decided the same way everywhere.
    """
    if features.ndim != 2:
        raise FeatureError(f"features must be (N, D), got shape {tuple(features.shape)}.")
    total = int(features.shape[0])
    if labels.shape != (total,):
        raise DataError(
            f"labels must have shape ({total},) to match features, got {tuple(labels.shape)}."
        )
    labels = labels.long()
    if rows is not None:
        labels = labels[rows]
    n = int(labels.shape[0])
    dim = int(features.shape[1])
    mean = torch.zeros(dim, dtype=torch.float64)
    centred_sq = torch.zeros(dim, dtype=torch.float64)
    class_sums = torch.zeros(n_classes, dim, dtype=torch.float64)
    seen = 0
    for start in range(0, n, chunk_size):
        part = slice(start, start + chunk_size)
        x = (features[part] if rows is None else features[rows[part]]).to(torch.float64)
        class_sums.index_add_(0, labels[part], x)
        count = int(x.shape[0])
        chunk_mean = x.mean(dim=0)
        delta = chunk_mean - mean
        centred_sq += ((x - chunk_mean) ** 2).sum(dim=0) + delta**2 * (
            seen * count / (seen + count)
        )
        mean += delta * (count / (seen + count))
        seen += count
    if not torch.isfinite(centred_sq).all():
        raise FeatureError(
            "features contain NaN or infinite values; clean them before fitting QPM."
        )
    std = (centred_sq / n).sqrt()
    prior = torch.bincount(labels, minlength=n_classes).to(torch.float64) / n
    class_std = (prior * (1 - prior)).sqrt()
    cov = class_sums.T / n - mean[:, None] * prior[None, :]
    denom = std[:, None] * class_std[None, :]
    corr = torch.where(
        denom > _CONSTANT_STD, cov / denom.clamp_min(_CONSTANT_STD), torch.zeros_like(cov)
    )
    return ClassCorrelation(_divide_by_max_abs(corr), mean, std)


def rows_within(
    features: torch.Tensor,
    seconds: float,
    n_classes: int,
    chunk_size: int = _ROWS_PER_CHUNK,
) -> torch.Tensor | None:
    """Evenly spaced rows whose pass over `features` should take about `seconds`, or None when
    every row fits: times one chunk and extrapolates. At least MIN_ROWS_PER_CLASS per class on
    average are kept whatever the time, so the correlations stay estimates, not noise."""
    n = int(features.shape[0])
    if math.isinf(seconds) or n <= chunk_size:
        return None
    per_row = _seconds_per_row(features, torch.arange(chunk_size))
    if per_row * n <= seconds:
        return None
    # rows read far apart cost more each than a contiguous chunk: time them at that spacing
    stride = math.ceil(per_row * n / max(seconds, 1e-9))
    per_row = _seconds_per_row(features, torch.arange(0, n, stride)[:chunk_size])
    stride = math.ceil(per_row * n / max(seconds, 1e-9))
    stride = max(1, min(stride, n // max(1, MIN_ROWS_PER_CLASS * n_classes)))
    return None if stride == 1 else torch.arange(0, n, stride)


def _seconds_per_row(features: torch.Tensor, rows: torch.Tensor) -> float:
    began = time.perf_counter()
    features[rows].to(torch.float64).sum(dim=0)
    return (time.perf_counter() - began) / max(1, len(rows))


def redundancy(assoc: torch.Tensor) -> torch.Tensor:
    """R (K x K): cosine similarity of the rows of A, / max|R|, strict upper triangle, negatives -> 0.

    Two features that correlate with the same classes in the same way are redundant; the
    upper triangle lists every unordered pair once.
    """
    assoc = assoc.to(torch.float64)
    norms = assoc.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, assoc / norms.clamp_min(1e-300), torch.zeros_like(assoc))
    sim = _divide_by_max_abs(unit @ unit.T)
    return torch.triu(sim, diagonal=1).clamp_min(0.0)


def kth_largest(assoc: torch.Tensor, k: int) -> torch.Tensor:
    """Per feature, its k-th largest A over classes: how well it could serve k classes at once."""
    k = min(k, int(assoc.shape[1]))
    return assoc.topk(k, dim=1).values[:, -1]


def default_candidate_count(n_features: int, n_classes: int, dim: int) -> int:
    """A few hundred: 8 per selected feature, 2 per class, but at most 12 per selected feature.

    CUB scale (n_f=50, C=200) gets 400. The cap matters at ImageNet scale: with 2 per class
    (2,000 of 2,048) CBC could not solve a single LP in 60 s and the local search did worse
    than on 400-600 candidates (benchmarks/heads_qpm_candidates.py).
    """
    return min(dim, max(8 * n_features, min(2 * n_classes, 12 * n_features), n_features))


def select_candidates(
    assoc: torch.Tensor,
    n_features: int,
    per_class: int,
    *,
    n_candidates: int | None = None,
    duplicate_cut: float = 0.95,
) -> torch.Tensor:
    """Indices (ascending) of the features the program may choose from.

    Keeps the program small: first 2 * n_features features picked greedily for the program's
    main term (sum over classes of the top-k A among the picked), then every class's best
    features (so no class is left with weak ones only), then the features with the largest
    k-th largest A (k = per_class), each skipped when its cosine similarity to an already
    kept one exceeds `duplicate_cut`. At
    least `n_features` are always kept, duplicates included if need be, so the program stays
    feasible.
    """
    dim, n_classes = (int(s) for s in assoc.shape)
    if n_candidates is None:
        n_candidates = default_candidate_count(n_features, n_classes, dim)
    if not isinstance(n_candidates, int) or isinstance(n_candidates, bool) or n_candidates < 1:
        raise ConfigError(f"qpm.candidates must be a positive integer, got {n_candidates!r}.")
    if not 0 < duplicate_cut <= 1:
        raise ConfigError(f"qpm.duplicate_cut must be in (0, 1], got {duplicate_cut!r}.")
    target = min(dim, max(n_candidates, n_features))
    if target == dim:
        return torch.arange(dim)

    per_class_tops = max(1, math.ceil(target / (2 * n_classes)))
    class_order = torch.argsort(-assoc, dim=0, stable=True)[:per_class_tops]  # (t, C), best first
    by_score = torch.argsort(-kth_largest(assoc, per_class), stable=True)
    seed = _greedy_coverage(assoc.to(torch.float64), min(target, 2 * n_features), per_class)
    priority = _unique_in_order(torch.cat([seed, class_order.reshape(-1), by_score]))

    norms = assoc.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, assoc / norms.clamp_min(1e-300), torch.zeros_like(assoc))
    rows = unit[priority]
    # cosine of every pair in priority order (P x P, P <= D): one product instead of P matvecs
    duplicate = (rows @ rows.T) > duplicate_cut
    kept_mask = torch.zeros(len(priority), dtype=torch.bool)
    kept: list[int] = []
    skipped: list[int] = []
    for position, j in enumerate(priority.tolist()):
        if kept and bool(duplicate[position][kept_mask].any()):
            skipped.append(j)
            continue
        kept.append(j)
        kept_mask[position] = True
        if len(kept) == target:
            break
    if len(kept) < n_features:
        kept.extend(skipped[: n_features - len(kept)])
    logger.info(
        "QPM candidates: %d of %d features (%d near-duplicates skipped)",
        len(kept),
        dim,
        len(skipped),
    )
    return torch.sort(torch.tensor(kept, dtype=torch.long)).values


def locality_bias(
    maps: torch.Tensor,
    *,
    border_weight: float = 0.5,
    clip_quantile: float = 0.99,
    chunk_elements: int = _MAP_ELEMENTS_PER_CHUNK,
) -> torch.Tensor:
    """b (D,) in [0, 1]: how strongly and how locally each feature fires, on average.

    Per image, a feature's share of the total activation times the peak of its spatial
    softmax (1 for a single hot spot, 1/HW for a flat map); peaks on the border of the map are
    multiplied by `border_weight`, since they tend to be background or padding artefacts. The
    mean over images is clipped at its `clip_quantile` quantile (outliers) and divided by its
    maximum.
    """
    if maps.ndim != 4:
        raise FeatureError(f"maps must be (N, D, H, W), got shape {tuple(maps.shape)}.")
    n, dim, height, width = (int(s) for s in maps.shape)
    border = torch.zeros(height, width, dtype=torch.bool)
    if height >= 3 and width >= 3:
        border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    border = border.reshape(-1)
    rows = max(1, chunk_elements // max(1, dim * height * width))
    total = torch.zeros(dim, dtype=torch.float64)
    for start in range(0, n, rows):
        m = maps[start : start + rows].to(torch.float32).reshape(-1, dim, height * width)
        if not torch.isfinite(m).all():
            raise FeatureError("maps contain NaN or infinite values.")
        activation = m.mean(dim=2).clamp_min(0.0)
        share = activation / activation.sum(dim=1, keepdim=True).clamp_min(1e-12)
        peak, where = torch.softmax(m, dim=2).max(dim=2)
        damp = torch.where(border[where], border_weight, 1.0)
        total += (share * peak * damp).sum(dim=0).to(torch.float64)
    bias = total / n
    if dim > 1:
        bias = bias.clamp_max(torch.quantile(bias, clip_quantile))
    return _divide_by_max_abs(bias)


def _greedy_coverage(assoc: torch.Tensor, count: int, k: int) -> torch.Tensor:
    """`count` features in greedy order for sum_c top_k(A[S, c]) (empty slots count as 0)."""
    dim, n_classes = (int(s) for s in assoc.shape)
    best = torch.zeros(k, n_classes, dtype=assoc.dtype)  # per class, its k best values so far
    taken = torch.zeros(dim, dtype=torch.bool)
    order = []
    for _ in range(min(count, dim)):
        gain = (assoc - best[-1]).clamp_min(0.0).sum(dim=1)
        gain[taken] = -1.0
        j = int(torch.argmax(gain))
        taken[j] = True
        order.append(j)
        best = torch.cat([best, assoc[j : j + 1]]).topk(k, dim=0).values
    return torch.tensor(order, dtype=torch.long)


def _divide_by_max_abs(values: torch.Tensor) -> torch.Tensor:
    peak = values.abs().max() if values.numel() else torch.tensor(0.0)
    return values / peak if peak > 0 else values


def _unique_in_order(values: torch.Tensor) -> torch.Tensor:
    seen: set[int] = set()
    out = []
    for v in values.tolist():
        if v not in seen:
            seen.add(v)
            out.append(v)
    return torch.tensor(out, dtype=torch.long)
