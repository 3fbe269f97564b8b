"""Head method 'flint': FLINT's post-hoc interpreter g = h∘Φ (ALGORITHMS §9.1).

Φ is a dictionary of J non-negative attributes learned from the pooled penultimate features,
h a linear head on them; both are trained on the cache with the backbone frozen, for fidelity
to the original model's logits, reconstruction of the features, and conciseness/diversity
(settings: `convert(..., flint={...})`, see retrofit.methods.flint.attributes.FlintSettings). The head reads
Φ(x) as it is (no standardisation), so relevances r_j = φ_j·w_ĉj compare attribute strengths.
"""

from __future__ import annotations

import torch

from retrofit.config import RetrofitConfig
from retrofit.errors import DataError
from retrofit.fitting.bottleneck import Bottleneck
from retrofit.methods.base import HeadResult, register_head
from retrofit.methods.flint.attributes import fit_attributes
from retrofit.methods.flint.relevance import DEFAULT_TAU


@register_head("flint", learns_attributes=True, relevance_tau=DEFAULT_TAU)
def fit_flint(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: RetrofitConfig,
    maps: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
) -> HeadResult:
    """Learn Φ and h; result.bottleneck computes Φ(x) exactly (identity selection, mean 0, std 1)."""
    n_classes = len(config.class_names) if config.class_names else None
    if labels.numel() and int(labels.min()) < 0:
        raise DataError("labels must be class indices >= 0.")
    if logits is not None and n_classes is not None and logits.shape[1] != n_classes:
        raise DataError(
            f"the model outputs {logits.shape[1]} classes but {n_classes} class_names were given."
        )
    fit = fit_attributes(features, labels, config, logits, num_classes=n_classes)
    j = fit.attributes.n_attributes
    device = features.device
    zeros, ones = torch.zeros(j, device=device), torch.ones(j, device=device)
    bottleneck = Bottleneck(
        torch.arange(j), zeros, ones, features.shape[1], attributes=fit.attributes
    ).to(device)
    bottleneck.requires_grad_(False)  # Φ is the explanation: later fine-tuning must not rescale it
    return HeadResult(
        selected=torch.arange(j, device=device),
        weight=fit.weight,
        bias=fit.bias,
        mean=zeros,
        std=ones,
        stats={
            "method": "flint",
            "in_features": int(features.shape[1]),
            "train_agreement": fit.history["final_agreement"],
            "history": fit.history,
        },
        bottleneck=bottleneck,
    )
