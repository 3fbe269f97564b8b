"""Feature Diversity Loss (QPM, ALGORITHMS §5): push the features a class uses to look at different places."""

from __future__ import annotations

import torch

from retrofit.errors import ConfigError

DIVERSITY_BETA = 0.196  # the reference's weight for ResNet-50


def feature_diversity_loss(
    maps: torch.Tensor,
    weight: torch.Tensor,
    predicted: torch.Tensor,
    beta: float = DIVERSITY_BETA,
) -> torch.Tensor:
    """−(β/B) Σ_i Σ_p max_j ω_ij · s_ij · softmax_p(M_ij·)_p for a batch.

    maps (B, F, H, W): the spatial maps of the F features the head reads, in the same order as
    the head's columns and non-negative (post-ReLU activations, or their non-negative linear mix;
    retrofit passes `Bottleneck.project_maps`, i.e. the maps before the bottleneck's centring and
    scaling, so a trainable scale cannot lower the loss by sharpening the softmax).
    weight (C, F): the head; predicted (B,): the predicted class of each image.
    ω_ij = |W_ĉj| / (‖W_ĉ‖₂ + 1e-5) and s_ij = a_ij / max(max_j' a_ij', 1e-6), a_ij = mean_p M_ijp.
    """
    if maps.ndim != 4:
        raise ConfigError(
            f"maps must be (batch, features, height, width), got shape {tuple(maps.shape)}."
        )
    b, f = maps.shape[:2]
    if weight.ndim != 2 or weight.shape[1] != f:
        raise ConfigError(
            f"weight must be (classes, {f}) to match the maps, got shape {tuple(weight.shape)}."
        )
    if predicted.shape != (b,):
        raise ConfigError(
            f"predicted must hold one class per image ({b}), got shape {tuple(predicted.shape)}."
        )
    rows = weight[predicted].to(maps.dtype)
    omega = rows.abs() / (rows.norm(dim=1, keepdim=True) + 1e-5)
    flat = maps.flatten(2)
    mean = flat.mean(dim=2)
    share = mean / mean.amax(dim=1, keepdim=True).clamp_min(1e-6)
    spread = torch.softmax(flat, dim=2)
    peak = (omega * share).unsqueeze(2) * spread
    return -(beta / b) * peak.amax(dim=1).sum()


def shared_class_pairs(weight: torch.Tensor) -> torch.Tensor:
    """(F, F) bool: pairs of distinct features that some class weighs positively together."""
    positive = (weight.detach() > 0).float()
    shared = (positive.T @ positive) > 0
    shared.fill_diagonal_(False)
    return shared


def class_decorrelation_loss(z: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """Mean over feature pairs that serve one class of their positive Pearson correlation
    (over the minibatch), squared: 0 while a class's features vary independently, so two of
    them cannot both become the same concept (a class explained as "+pink, +pink")."""
    if not bool(shared.any()):
        return z.new_zeros(())
    centred = z - z.mean(dim=0)
    unit = centred / centred.norm(dim=0).clamp_min(1e-8)
    return ((unit.T @ unit)[shared].clamp_min(0) ** 2).mean()
