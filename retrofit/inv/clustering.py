"""INV's per-image clustering of one layer's feature maps (ALGORITHMS.md section 9.3).

Channel weights are guided gradient x activation shares; channels below 0.9 x the uniform share
are dropped; the kept maps, min-max normalised and flattened, go through PCA (<= 50
components) and Ward clustering with k in 3..8 by the best silhouette; clusters whose summed
weight is below max(max_w / 3, mean_w / 2) are pruned, and the rest become weight-averaged,
normalised, Gaussian-smoothed saliency maps.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import AgglomerativeClustering
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from retrofit.errors import ConfigError

FILTER_FACTOR = 0.9
MAX_COMPONENTS = 50
K_RANGE = (3, 8)


def channel_shares(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """(K,) share of each channel in the layer's guided evidence for the class.

    relu(dy/dA) * relu(A) summed over the grid: for a linear head on pooled features this is
    exactly w_k * mean A_k (for w_k > 0), the channel's contribution to the logit.
    """
    if activations.shape != gradients.shape or activations.ndim != 3:
        raise ConfigError(
            f"activations and gradients must both be (K, H, W), got {tuple(activations.shape)} "
            f"and {tuple(gradients.shape)}."
        )
    evidence = (gradients.clamp(min=0) * activations.clamp(min=0)).flatten(1).sum(dim=1)
    total = evidence.sum()
    return evidence / total if total > 0 else torch.zeros_like(evidence)


def kept_channels(shares: torch.Tensor, factor: float = FILTER_FACTOR) -> torch.Tensor:
    """Indices of channels whose share is at least `factor` x the uniform share 1/K."""
    return torch.nonzero(shares >= factor / shares.numel()).flatten()


def normalised_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map min-max scaled to [0, 1] (constant maps become zero)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    return ((flat - low) / span.clamp(min=1e-12) * (span > 0)).view_as(maps)


def cluster_channels(
    maps: torch.Tensor, k_range: tuple[int, int] = K_RANGE, seed: int = 0, tsne: bool = False
) -> tuple[np.ndarray, float]:
    """(cluster label per map, silhouette) by PCA (then a seeded 2-D t-SNE when `tsne`) + Ward
    with k chosen by silhouette.

    Fewer maps than k_range allows give one cluster per map; identical maps give one cluster.
    """
    n = maps.shape[0]
    low, high = k_range
    if n <= low:
        return np.arange(n), float("nan")
    points = normalised_maps(maps).flatten(1).double().numpy()
    if np.ptp(points, axis=0).max() <= 1e-12:
        return np.zeros(n, dtype=int), float("nan")
    components = min(MAX_COMPONENTS, n, points.shape[1])
    reduced = PCA(n_components=components, svd_solver="full", random_state=seed).fit_transform(
        points
    )
    if tsne:
        reduced = TSNE(
            n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed
        ).fit_transform(reduced)
    best: tuple[float, int, np.ndarray] | None = None
    for k in range(low, min(high, n - 1) + 1):
        labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(reduced)
        if len(np.unique(labels)) < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = float(silhouette_score(reduced, labels))
        if best is None or score > best[0] + 1e-12:
            best = (score, k, labels)
    if best is None:
        return np.zeros(n, dtype=int), float("nan")
    return _canonical(best[2]), best[0]


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters in order of their first member, so results do not depend on sklearn's ids."""
    order = {label: i for i, label in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[label] for label in labels.tolist()], dtype=int)


@dataclass(frozen=True)
class ChannelCluster:
    """One pruned cluster: its channels (layer indices), summed share and (H, W) grid map."""

    channels: tuple[int, ...]
    weight: float
    grid_map: torch.Tensor


def prune_and_merge(
    maps: torch.Tensor, shares: torch.Tensor, labels: np.ndarray, channels: torch.Tensor
) -> list[ChannelCluster]:
    """The clusters above max(max_w / 3, mean_w / 2), heaviest first, with their merged maps."""
    ids = sorted(set(labels.tolist()))
    weights = [float(shares[torch.from_numpy(labels == i)].sum()) for i in ids]
    if not weights:
        return []
    threshold = max(max(weights) / 3, sum(weights) / len(weights) / 2)
    normalised = normalised_maps(maps)
    clusters = []
    for i, weight in zip(ids, weights):
        if weight < threshold or weight <= 0:
            continue
        members = torch.from_numpy(labels == i)
        member_shares = shares[members]
        merged = (normalised[members] * member_shares[:, None, None]).sum(0) / member_shares.sum()
        clusters.append(
            ChannelCluster(
                channels=tuple(int(c) for c in channels[members].tolist()),
                weight=weight,
                grid_map=merged,
            )
        )
    return sorted(clusters, key=lambda c: -c.weight)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def saliency_map(grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A grid map upsampled to the image, Gaussian-smoothed (sigma = half a grid cell), in [0, 1]."""
    height, width = size
    up = F.interpolate(
        grid_map[None, None].float(), size=size, mode="bilinear", align_corners=False
    )
    sigma = 0.5 * max(height / grid_map.shape[0], width / grid_map.shape[1])
    if sigma >= 0.5:
        kernel = gaussian_kernel(sigma)
        pad = kernel.numel() // 2
        up = F.pad(up, (pad, pad, pad, pad), mode="replicate")
        up = F.conv2d(up, kernel.view(1, 1, 1, -1))
        up = F.conv2d(up, kernel.view(1, 1, -1, 1))
    return normalised_maps(up[0])[0]


def cluster_layer(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    seed: int = 0,
    k_range: tuple[int, int] = K_RANGE,
    tsne: bool = False,
) -> tuple[list[ChannelCluster], dict[str, float]]:
    """One image's clusters in one layer from its (K, H, W) activations and gradients."""
    shares = channel_shares(activations, gradients)
    kept = kept_channels(shares)
    if kept.numel() == 0:
        return [], {"k": 0, "kept_channels": 0, "silhouette": float("nan")}
    labels, silhouette = cluster_channels(activations[kept], k_range, seed, tsne)
    clusters = prune_and_merge(activations[kept], shares[kept], labels, kept)
    stats = {
        "k": int(labels.max()) + 1,
        "kept_channels": int(kept.numel()),
        "silhouette": silhouette,
    }
    return clusters, stats
