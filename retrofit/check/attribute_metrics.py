"""FLINT's metrics for every head (ALGORITHMS §7, §9.1): fidelity@k, dead attributes, entropy.

The "attributes" are the activations the head reads (the bottleneck outputs z); for a flint model
these are the non-negative FLINT attributes Φ(x).
"""

from __future__ import annotations

import math

import torch

from retrofit.errors import DataError
from retrofit.methods.flint.losses import entropy

FIDELITY_KS: tuple[int, ...] = (1, 5)
DEAD_RANGE = 1e-6  # an attribute whose values span less than this on the data is dead


def fidelity_at_k(logits: torch.Tensor, reference_logits: torch.Tensor, k: int) -> float:
    """Share of images whose original top-1 class is among the interpretable model's top k."""
    if logits.shape != reference_logits.shape or logits.ndim != 2:
        raise DataError(
            f"logits {tuple(logits.shape)} and reference logits {tuple(reference_logits.shape)} "
            "must be the same (N, C)."
        )
    return float(top_k_hits(logits, reference_logits.argmax(dim=1), k).float().mean())


def top_k_hits(logits: torch.Tensor, reference_predicted: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) whether each image's original top-1 class is among the model's top k (per batch)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == reference_predicted[:, None].to(top.device)).any(dim=1)


def dead_share(z: torch.Tensor) -> float:
    """Share of attributes that are constant on the data (for ReLU attributes: always 0)."""
    if not z.numel():
        return math.nan
    spread = z.amax(dim=0) - z.amin(dim=0)
    return float((spread < DEAD_RANGE).float().mean())


def attribute_entropy(z: torch.Tensor) -> dict[str, float]:
    """Entropy of the batch-mean |attribute| share (FLINT's diversity term, as a measurement).

    `entropy` is log(effective number of attributes used); `max` = log n_f is reached when
    every attribute carries the same mean mass. The share is |z| normalised, not a softmax, so
    the value does not depend on the activations' scale.
    """
    mass = z.abs().double().mean(dim=0)
    total = float(mass.sum())
    n_f = z.shape[1]
    value = float(entropy(mass / total)) if total > 0 else math.nan
    return {"entropy": value, "max": math.log(n_f) if n_f else math.nan}
