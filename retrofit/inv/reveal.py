"""INV's reveal steps and the model-side reveal curve (ALGORITHMS.md section 9.3).

A map is revealed in six steps: its top 2, 4.5, 8, 13, 20 and 30 % of pixels. The reveal
curve is the model's probability of the explained class when only those pixels are shown (the
rest set to the zero baseline, as in check/pixel.py); its area, over the 2..30 % range and
normalised to [0, 1], is compared with random maps and the full Grad-CAM map.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrofit.errors import ConfigError
from retrofit.extraction.outputs import logits_of
from retrofit.inv.maps import ClusterMaps, model_device

REVEAL_FRACTIONS: tuple[float, ...] = (0.02, 0.045, 0.08, 0.13, 0.20, 0.30)


def reveal_masks(
    saliency: torch.Tensor, fractions: tuple[float, ...] = REVEAL_FRACTIONS
) -> torch.Tensor:
    """(S, H, W) bool: the top `fraction` of pixels of an (H, W) map at each step (ties by
    position, so the result is deterministic)."""
    if saliency.ndim != 2:
        raise ConfigError(f"saliency must be an (H, W) map, got shape {tuple(saliency.shape)}.")
    flat = saliency.flatten().float()
    order = torch.argsort(-flat, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel())
    counts = torch.tensor([max(1, round(f * flat.numel())) for f in fractions])
    return (rank[None, :] < counts[:, None]).view(len(fractions), *saliency.shape)


def curve_area(curve: np.ndarray, fractions: tuple[float, ...] = REVEAL_FRACTIONS) -> np.ndarray:
    """Normalised area under reveal curves (..., S) over the fraction axis."""
    x = np.asarray(fractions)
    widths = np.diff(x)
    heights = (curve[..., 1:] + curve[..., :-1]) / 2
    return (heights * widths).sum(axis=-1) / (x[-1] - x[0])


@torch.no_grad()
def reveal_curve(
    model: nn.Module,
    images: torch.Tensor,
    saliency: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int = 64,
) -> np.ndarray:
    """(N, S) probability of each image's target with only its map's top pixels shown."""
    device = model_device(model)
    steps = len(REVEAL_FRACTIONS)
    masks = torch.stack([reveal_masks(s) for s in saliency])  # (N, S, H, W)
    out = []
    per_forward = max(1, batch_size // steps)
    for start in range(0, images.shape[0], per_forward):
        x = images[start : start + per_forward].to(device)
        m = masks[start : start + per_forward].to(device)
        shown = (x[:, None] * m[:, :, None]).flatten(0, 1)
        target = targets[start : start + per_forward].to(device).repeat_interleave(steps)
        probs = F.softmax(logits_of(model(shown)).float(), dim=1).gather(1, target[:, None])[:, 0]
        out.append(probs.view(-1, steps).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, steps))


def _summary(curves: np.ndarray) -> dict[str, Any]:
    if len(curves) == 0:
        return {"auc": None, "curve": [], "n": 0}
    return {
        "auc": float(curve_area(curves).mean()),
        "curve": curves.mean(axis=0).tolist(),
        "n": int(len(curves)),
    }


def reveal_curves(
    model: nn.Module, result: ClusterMaps, seed: int = 0, batch_size: int = 64
) -> dict[str, Any]:
    """Reveal-curve AUCs of every cluster map, of each image's best cluster map per layer, of
    seeded random maps and of the full Grad-CAM map, all for the explained class."""
    if not result.maps:
        raise ConfigError("There are no cluster maps to reveal.")
    images = result.images
    index = torch.tensor([m.image for m in result.maps])
    curves = reveal_curve(
        model,
        images[index],
        torch.stack([m.saliency for m in result.maps]),
        result.predictions[index],
        batch_size,
    )
    areas = curve_area(curves)
    for cluster_map, area in zip(result.maps, areas):
        cluster_map.reveal_auc = float(area)
    best: dict[tuple[int, str], int] = {}
    for i, m in enumerate(result.maps):
        key = (m.image, m.layer)
        if key not in best or areas[i] > areas[best[key]]:
            best[key] = i
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(images.shape[0], *images.shape[2:], generator=generator)
    random = reveal_curve(model, images, noise, result.predictions, batch_size)
    out: dict[str, Any] = {
        "fractions": list(REVEAL_FRACTIONS),
        "cluster_maps": _summary(curves),
        "best_cluster_map": _summary(curves[sorted(best.values())]),
        "random": _summary(random),
        "by_layer": {
            layer: _summary(curves[[i for i, m in enumerate(result.maps) if m.layer == layer]])
            for layer in result.layers
        },
    }
    if result.gradcam is not None:
        out["gradcam"] = _summary(
            reveal_curve(model, images, result.gradcam, result.predictions, batch_size)
        )
    return out
