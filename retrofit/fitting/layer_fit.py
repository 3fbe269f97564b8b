"""Fit the interpretable layer (head, then bottleneck) on cached features — once by convert(),
again by each round of reweight="consistency", so a refit offers the head the same choices.

What the head chooses from is fixed once per conversion (`HeadInputs`): the cached channels, or
FLINT's attribute features, or the channels not covered by a concept plus the concept basis's
features, with the class-concept prior. A refit that offered raw channels instead would drop
the concept features the explanation is named after.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from retrofit.concepts.basis import ConceptBasis, fold_bottleneck
from retrofit.concepts.coverage import head_candidates, widen_bottleneck
from retrofit.config import RetrofitConfig
from retrofit.extraction.featureset import FeatureSet
from retrofit.fitting.bottleneck import (
    Bottleneck,
    FixedHead,
    build_bottleneck,
    class_diversity_default,
    finetune_bottleneck,
    retention_default,
)
from retrofit.methods.base import HeadResult, fit_head
from retrofit.methods.flint.attributes import read_attributes

logger = logging.getLogger(__name__)


@dataclass
class HeadInputs:
    """The head's candidate features over every cached row, and how to map its choice back to
    the cached channels. `columns` index [channels | concept features] when `basis` is set."""

    features: torch.Tensor
    maps: torch.Tensor | None
    attributes: Any = None
    basis: ConceptBasis | None = None
    columns: torch.Tensor | None = None
    prior: torch.Tensor | None = None
    covered: int | None = None


@dataclass
class FittedLayer:
    """A fitted bottleneck and head, what the head solver reported, the bottleneck's training and
    how many concept features the retention term held to their probes."""

    bottleneck: Bottleneck
    head: FixedHead
    result: HeadResult
    history: dict[str, Any] | None
    retained: int | None = None


def concept_head_inputs(
    features: torch.Tensor,
    maps: torch.Tensor | None,
    basis: ConceptBasis,
    presence: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    config: RetrofitConfig,
) -> HeadInputs:
    """Concept features alone when there are enough of them; else with the channels no concept
    covers (retrofit.concepts.coverage), and the prior that steers QPM to shown concepts."""
    channels = basis.size < config.n_features or config.concept_features == "mix"
    candidates = head_candidates(features, presence, labels, n_classes, channels, config.n_features)
    columns = candidates.columns.to(features.device)
    logger.info(
        "offering the head %d concept features and %d channels (%d covered by a concept)",
        basis.size,
        len(columns) - basis.size,
        candidates.covered,
    )
    return HeadInputs(
        features=basis.extend(features)[:, columns],
        maps=None if maps is None else basis.extend_maps(maps)[:, columns.to(maps.device)],
        basis=basis,
        columns=columns,
        prior=candidates.prior,
        covered=candidates.covered,
    )


def fit_layer(
    inputs: HeadInputs,
    train: FeatureSet,
    config: RetrofitConfig,
    device: torch.device,
    rows: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
) -> FittedLayer:
    """The head on `inputs` (on `rows` of them, e.g. a weighted resample), its bottleneck over
    the cached channels, then the bottleneck trained on every row (with `sample_weights`)."""
    labels = train.labels.to(device)
    on_device = None if rows is None else rows.to(device)
    features = inputs.features if on_device is None else inputs.features[on_device]
    head_labels = labels if on_device is None else labels[on_device]
    maps = inputs.maps if rows is None or inputs.maps is None else inputs.maps[rows]
    logits = train.logits if rows is None or train.logits is None else train.logits[rows]
    logger.info("fitting the %s head on %d x %d features", config.method, *features.shape)
    result = fit_head(config.method, features, head_labels, config, maps, logits, inputs.prior)
    bottleneck = result.bottleneck or build_bottleneck(
        result, config, in_features=features.shape[1]
    )
    retain = None
    if inputs.basis is not None:
        bottleneck = widen_bottleneck(bottleneck, inputs.columns, train.dim + inputs.basis.size)
        retain = retained_features(bottleneck.selected.cpu(), train.dim)
        bottleneck = fold_bottleneck(bottleneck, inputs.basis, train.dim)
    if inputs.attributes is not None:
        bottleneck = read_attributes(bottleneck, inputs.attributes)
    head = FixedHead.from_result(result)
    history = None
    if config.finetune != "none" and result.bottleneck is None:
        history = finetune_bottleneck(
            bottleneck,
            head,
            train.features.to(device),
            labels,
            config,
            train.logits,
            train.maps,
            sample_weights=sample_weights,
            retain=retain,
            retention=retention_default(config),
            class_diversity=class_diversity_default(config),
        )
    retained = None if retain is None else int(retain.sum())
    return FittedLayer(bottleneck, head, result, history, retained)


def retained_features(selected: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Which selected features (indices into [channels | concept features]) the retention term
    holds to their probes: every concept feature. Words the images do not show get no probe
    (`retrofit.concepts.pairs.SHOWN_SEPARABILITY`), so no probe has learned a mixture."""
    return selected >= n_channels
