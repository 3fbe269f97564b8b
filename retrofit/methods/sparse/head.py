"""Head method 'sparse': glm-saga style sparse linear layer on Q-SENN's selected features, not quantised."""

from __future__ import annotations

import logging

import torch

from retrofit.config import RetrofitConfig
from retrofit.extraction.featureset import split_rows
from retrofit.extraction.streaming import Standardised, column_stats
from retrofit.methods.base import HeadResult, linear_accuracy, register_head
from retrofit.methods.prior import penalty_factors
from retrofit.solvers.elastic_net import check_inputs, elastic_net_path, select_features

logger = logging.getLogger(__name__)

SELECTION_ALPHA = 0.8  # group path used to rank features (Q-SENN)
PATH_ALPHA = 0.99  # plain elastic-net path on the selected features (glm-saga, Q-SENN)
VAL_FRACTION = 0.1


@register_head("sparse")
def fit_sparse(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: RetrofitConfig,
    maps: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> HeadResult:
    """Select n_features, fit the α = 0.99 path on them, keep the best point within budget.

    Rule: on a seeded 10 % validation split, among path points with at most per_class·C
    non-zero weights take the highest validation accuracy (ties: fewer non-zeros, then larger
    λ). λ_max's all-zero point is always within budget, so a choice always exists. Selection
    and path are fitted on the 90 % part; the returned weights are that path point's. The
    features are only read in row chunks, standardised on the fly (retrofit.extraction.streaming), so a
    memory-mapped cache is never copied whole. A class–concept `prior` (D, C) scales the L1
    penalty of the selection (per column: its most favourable class) and of the path (per
    weight), retrofit.methods.prior.
    """
    mean, std = column_stats(features)
    x, y, c = check_inputs(
        Standardised(features, mean, std),
        labels,
        len(config.class_names) if config.class_names else None,
    )
    train_rows, val_rows = split_rows(len(y), VAL_FRACTION, seed=config.seed)
    train_y, val_y = y[train_rows.to(y.device)], y[val_rows.to(y.device)]
    train = Standardised(features, mean, std, rows=train_rows)
    factors = penalty_factors(prior, config, int(features.shape[1]), c)
    selected, selection = select_features(
        train,
        train_y,
        config.n_features,
        alpha=SELECTION_ALPHA,
        num_classes=c,
        penalty=None if factors is None else factors.min(dim=0).values,
        progress=config.progress,
    )
    path = elastic_net_path(
        train[:, selected],
        train_y,
        alpha=PATH_ALPHA,
        num_classes=c,
        penalty=None if factors is None else factors[:, selected.cpu()],
        progress=config.progress,
    )
    budget = config.per_class * c
    val_x = Standardised(features, mean, std, rows=val_rows)[:, selected]
    scored = [(linear_accuracy(val_x, p.weight, p.bias, val_y), p) for p in path if p.nnz <= budget]
    accuracy, best = max(scored, key=lambda item: (item[0], -item[1].nnz, item[1].lam))
    logger.info(
        "sparse head: λ=%.4g, %d non-zeros (budget %d), validation accuracy %.4f",
        best.lam,
        best.nnz,
        budget,
        accuracy,
    )
    return HeadResult(
        selected=selected,
        weight=best.weight,
        bias=best.bias,
        mean=mean[selected],
        std=std[selected],
        stats={
            "method": "sparse",
            "lambda": best.lam,
            "nnz": best.nnz,
            "budget": budget,
            "val_accuracy": accuracy,
            "path": [{"lambda": p.lam, "nnz": p.nnz, "objective": p.objective} for p in path],
            "selection_entry_lambda": selection["entry_lambda"],
            "in_features": x.shape[1],
        },
    )
