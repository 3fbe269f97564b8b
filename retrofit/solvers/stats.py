"""Standardisation shared by every sparse fit: training-set mean and population std."""

from __future__ import annotations

import torch

MIN_STD = 1e-6


def standardise(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (standardised features, mean, std) with std the population std clamped >= 1e-6."""
    features = features.float()
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp_min(MIN_STD)
    return (features - mean) / std, mean, std
