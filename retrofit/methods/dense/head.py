"""Head method 'dense': a linear probe on all D standardised features, the accuracy reference."""

from __future__ import annotations

import torch

from retrofit.config import RetrofitConfig
from retrofit.extraction.streaming import Standardised, column_stats
from retrofit.methods.base import HeadResult, linear_accuracy, register_head
from retrofit.settings import DenseSettings
from retrofit.solvers.elastic_net import check_inputs, fit_elastic_net

DENSE_L2 = DenseSettings().l2  # ridge strength λ of ½λ‖W‖² by default; config.dense.l2


@register_head("dense", free_counts=True)
def fit_dense(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: RetrofitConfig,
    maps: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
) -> HeadResult:
    """L2-regularised multinomial logistic regression on every feature (selected = all D).

    Fitted with the elastic-net solver at α = 0 (pure ridge, smooth, so FISTA converges fast).
    Not interpretable; it measures what a linear head on these features can reach. The
    features are only read in row chunks, standardised on the fly (retrofit.extraction.streaming), so
    memory is one chunk plus O(D·C) (and the solver's N×C logit tables below
    MAX_TABLE_ELEMENTS), never an N×D copy of a memory-mapped cache.
    """
    mean, std = column_stats(features)
    x, y, c = check_inputs(
        Standardised(features, mean, std),
        labels,
        len(config.class_names) if config.class_names else None,
    )
    lam = float(config.dense.l2)
    point = fit_elastic_net(x, y, lam, alpha=0.0, num_classes=c, max_iter=2000)
    return HeadResult(
        selected=torch.arange(x.shape[1], device=x.device),
        weight=point.weight,
        bias=point.bias,
        mean=mean,
        std=std,
        stats={
            "method": "dense",
            "l2": lam,
            "objective": point.objective,
            "iterations": point.iterations,
            "converged": point.converged,
            "train_accuracy": linear_accuracy(x, point.weight, point.bias, y),
            "in_features": x.shape[1],
        },
    )
