"""FLINT's relevance of a feature to a decision (ALGORITHMS §9.1), for any linear head.

Local r_{j,x} = φ_j(x)·w_{j,ŷ} / max_i |φ_i(x)·w_{i,ŷ}|, in [−1, 1]: the feature's share of
the strongest contribution to the predicted class. Global r_{j,c} = mean of r_{j,x} over the
images predicted c. A feature is relevant when r > 1/τ (τ = 2 by default: at least half as
strong as the strongest).
"""

from __future__ import annotations

import torch

from retrofit.errors import ConfigError

DEFAULT_TAU = 2.0


def local_relevance(z: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N, n_f) r_{j,x} for class classes[i] of each row; a row without contributions is 0."""
    if z.ndim != 2 or weight.ndim != 2 or z.shape[1] != weight.shape[1]:
        raise ConfigError(
            f"activations (N, n_f) and head weight (C, n_f) must match, got {tuple(z.shape)} and "
            f"{tuple(weight.shape)}."
        )
    v = z.float() * weight[classes.to(weight.device)].to(z.device).float()
    scale = v.abs().amax(dim=1, keepdim=True)
    return torch.where(scale > 0, v / scale.clamp_min(1e-30), torch.zeros_like(v))


def class_relevance(
    z: torch.Tensor, weight: torch.Tensor, predicted: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(C, n_f) r_{j,c}: mean local relevance over the images predicted c (0 when none is)."""
    r = local_relevance(z, weight, predicted).cpu()
    predicted = predicted.cpu()
    total = torch.zeros(num_classes, z.shape[1])
    total.index_add_(0, predicted, r)
    count = torch.bincount(predicted, minlength=num_classes).clamp_min(1)
    return total / count[:, None]


def check_tau(tau: float) -> float:
    """τ > 1: relevance is at most 1, so 1/τ must be below it for anything to be relevant."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 1:
        raise ConfigError(f"tau must be a number > 1 (relevant: r > 1/tau), got {tau!r}.")
    return float(tau)
