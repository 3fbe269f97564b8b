"""The class–concept prior (retrofit.concepts.coverage) as the heads read it.

`prior` (D, C) is +1 where class c shows feature j's concept, −1 where it does not, 0 for plain
channels; `config.head.concept_prior` weighs it (0 ignores it). qpm adds the weighted prior to its
class–feature correlations. The elastic-net heads (qsenn, sparse) turn it into L1 penalty
factors (1 + weight)^(−prior): a class's weight on a feature whose concept it shows costs less,
one on a concept it does not show costs more, so their few non-zeros go to shown concepts
(qsenn's quantiser also ranks its weights by |w| / factor, since its fit is barely penalised).
"""

from __future__ import annotations

import torch

from retrofit.config import RetrofitConfig
from retrofit.errors import FeatureError


def concept_prior_weight(config: RetrofitConfig) -> float:
    """`config.head.concept_prior` (validated by HeadSettings: a number >= 0)."""
    return float(config.head.concept_prior)


def check_prior(prior: torch.Tensor | None, dim: int, n_classes: int) -> None:
    """A prior must have one row per feature and one column per class."""
    if prior is not None and tuple(prior.shape) != (dim, n_classes):
        raise FeatureError(
            f"prior must be (D, C) = ({dim}, {n_classes}), got {tuple(prior.shape)}."
        )


def penalty_factors(
    prior: torch.Tensor | None, config: RetrofitConfig, dim: int, n_classes: int
) -> torch.Tensor | None:
    """(C, D) L1 factors (1 + weight)^(−priorᵀ), or None (no prior, or weight 0: the
    prior-free fit exactly). Their minimum over classes is a column's factor for selection."""
    weight = concept_prior_weight(config)
    check_prior(prior, dim, n_classes)
    if prior is None or weight == 0:
        return None
    return (1.0 + weight) ** -prior.T.float()
