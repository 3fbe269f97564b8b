"""convert(): orchestrate extraction, head fitting and bottleneck training — nothing else."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from retrofit.concepts import apply_concepts, parse_concepts
from retrofit.concepts.basis import (
    ConceptBasis,
    concept_presence,
    fit_concept_basis,
)
from retrofit.concepts.stored import ConceptsSummary
from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, InfeasibleSettingsError
from retrofit.extraction.features import extract, resolve_device
from retrofit.extraction.featureset import FeatureSet
from retrofit.extraction.hooks import LayerSpec
from retrofit.extraction.inputs import check_class_count, require_module
from retrofit.extraction.loaders import as_batches
from retrofit.extraction.streaming import chunk_rows, row_slices
from retrofit.fitting.counterfactual import repair_with_counterfactuals
from retrofit.fitting.finetune import finetune_backbone
from retrofit.fitting.layer_fit import HeadInputs, concept_head_inputs, fit_layer
from retrofit.fitting.reweight import reweight_by_consistency
from retrofit.methods.base import method_traits
from retrofit.methods.flint.attributes import attribute_features
from retrofit.model.interpretable import InterpretableModel

logger = logging.getLogger(__name__)


def _config(kwargs: dict[str, Any], base: RetrofitConfig | None = None) -> RetrofitConfig:
    """The settings of one conversion: `base` (a RetrofitConfig) with keyword overrides."""
    if base is not None and not isinstance(base, RetrofitConfig):
        raise ConfigError(
            f"config= must be a retrofit.RetrofitConfig, got {type(base).__name__}; build one "
            "with RetrofitConfig(...), RetrofitConfig.from_dict or RetrofitConfig.from_pretrained."
        )
    try:
        config = RetrofitConfig(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
    except TypeError as error:
        raise ConfigError(
            f"{error}. See retrofit.RetrofitConfig for the accepted settings."
        ) from error
    if isinstance(config.concepts, ConceptsSummary):  # fail before the backbone runs
        raise config.concepts.refuse()
    return config


def _features(model: nn.Module, loader: Any, config: RetrofitConfig) -> FeatureSet:
    return extract(
        model,
        loader,
        feature_layer=config.feature_layer,
        class_names=config.class_names,
        with_maps=config.maps,
        cache_dir=config.cache_dir,
        batch_size=config.batch_size,
        device=config.device,
        progress=config.progress,
        feature_dtype=config.cache_dtype,
        distributed=config.distributed,
        pooled_layers=config.flint_layers,
    )


@torch.no_grad()
def _accuracy(
    imodel: InterpretableModel, features: torch.Tensor, reference: FeatureSet
) -> dict[str, float]:
    """Accuracy of both models and their top-1 agreement; `reference` holds the original logits."""
    device = imodel.head.weight.device
    rows = chunk_rows(int(features.shape[1]))
    predicted = torch.cat(
        [
            imodel.forward_features(features[r].to(device)).argmax(dim=1).cpu()
            for r in row_slices(len(features), rows)
        ]
    )
    original = reference.logits.argmax(dim=1)
    return {
        "accuracy": float((predicted == reference.labels).float().mean()),
        "original_accuracy": float((original == reference.labels).float().mean()),
        "agreement": float((predicted == original).float().mean()),
    }


def convert(
    model: nn.Module,
    train_loader: Iterable | Any,
    val_loader: Iterable | Any | None = None,
    config: RetrofitConfig | None = None,
    *,
    masks: Any = None,
    backgrounds: Any = None,
    **settings: Any,
) -> InterpretableModel:
    """Turn a trained classifier into an interpretable one; keyword arguments mirror RetrofitConfig.

    `config` is a RetrofitConfig; keyword settings given with it override its fields (the
    result is validated again), so `convert(m, data, config=saved, seed=1)` varies one setting.
    The backbone runs once over `train_loader` (features are cached when `cache_dir` is set);
    the head, the assignment and the bottleneck are fitted on those cached features. `masks`:
    foregrounds of the training images in loader order, for reweight="consistency" (optional)
    and reweight="counterfactual" (required); `backgrounds`: object-free images the
    counterfactuals take their backgrounds from (default: the other training images, their
    objects filled in).
    """
    config = _config(settings, config)
    if masks is not None and config.reweight is None:
        raise ConfigError(
            "masks= are used only by reweight='consistency' or 'counterfactual'; pass one."
        )
    if backgrounds is not None and config.reweight != "counterfactual":
        raise ConfigError("backgrounds= are used only by reweight='counterfactual'; pass that too.")
    if config.reweight == "counterfactual" and masks is None:
        raise ConfigError(
            "reweight='counterfactual' pastes each training object onto other backgrounds, so it "
            "needs the objects: pass masks= (one foreground mask per training image, loader "
            "order). Without masks no background can be swapped (the lowest-heat pixels do not "
            "separate object from background reliably; see benchmarks/results/consistency.json)."
        )
    require_module(model)
    train = _features(model, train_loader, config)
    check_class_count(train.labels)
    if config.n_features > train.dim and "flint" not in (config.method, config.features):
        raise InfeasibleSettingsError(
            f"n_features={config.n_features} is larger than the {train.dim} penultimate features of "
            f"the model (layer {train.layer}). Lower n_features or pick a wider feature_layer."
        )
    device = resolve_device(model, config.device)
    features = train.features.to(device)
    embeddings = None
    if config.features == "flint" and not method_traits(config.method).learns_attributes:
        attributes, attribute_feats, maps = attribute_features(
            features, train.labels.to(device), config, train.logits, train.maps
        )
        inputs = HeadInputs(attribute_feats, maps, attributes=attributes)
    else:
        basis, presence, embeddings = _concept_basis(train_loader, train, features, config)
        inputs = (
            HeadInputs(features, train.maps)
            if basis is None
            else concept_head_inputs(
                features,
                train.maps,
                basis,
                presence,
                train.labels.to(device),
                _class_count(train.labels, config),
                config,
            )
        )
    layer = fit_layer(inputs, train, config, device)
    bottleneck, head, result = layer.bottleneck, layer.head, layer.result
    history: dict[str, Any] = {}
    if layer.history is not None:
        history["bottleneck"] = layer.history
    backbone = copy.deepcopy(model) if config.finetune == "backbone" else model
    imodel = InterpretableModel(
        backbone.eval(),
        LayerSpec.from_dict(train.meta["layer_spec"]),
        bottleneck,
        head,
        config,
        class_names=train.class_names,
        stats={
            "head": result.stats,
            "family": train.meta["family"],
            "layer": train.layer,
            "input_size": train.meta.get("input_size"),
            "concept_basis": (
                {
                    **inputs.basis.summary(),
                    "covered_channels": inputs.covered,
                    "retained_features": layer.retained,
                }
                if inputs.basis is not None
                else None
            ),
        },
    ).to(device)
    if config.finetune == "backbone" and config.reweight != "counterfactual":
        # (the counterfactual repair fine-tunes on its own data instead of the shortcut's)
        history["backbone"] = finetune_backbone(
            imodel, as_batches(train_loader, config.batch_size), device
        )
    if config.reweight == "consistency":
        history["reweight"] = reweight_by_consistency(
            imodel, train_loader, train, config, device, masks, inputs
        )
    elif config.reweight == "counterfactual":
        history["counterfactual"] = repair_with_counterfactuals(
            imodel, train_loader, train, config, device, masks, backgrounds, inputs
        )
    imodel.stats["history"] = history
    if config.concepts is not None:
        imodel.stats["concepts"] = apply_concepts(
            imodel,
            config.concepts,
            train_loader,
            train if config.finetune != "backbone" else None,
            seed=config.seed,
            cache_dir=config.cache_dir,
            batch_size=config.batch_size,
            progress=config.progress,
            image_embeddings=embeddings if config.finetune != "backbone" else None,
        )
    own = _own_features(imodel, train_loader, train, config)
    imodel.stats["train"] = _accuracy(imodel, own, train)
    if bottleneck.attributes is not None:  # FLINT's r_{j,c}; other heads: measure_relevance()
        imodel.measure_relevance(own)
    if val_loader is not None:
        val = _features(model, val_loader, config)
        imodel.stats["val"] = _accuracy(imodel, _own_features(imodel, val_loader, val, config), val)
    return imodel.eval()


def _concept_basis(
    loader: Any, train: FeatureSet, features: torch.Tensor, config: RetrofitConfig
) -> tuple[ConceptBasis | None, torch.Tensor | None, torch.Tensor | None]:
    """Concept features for the head to choose from (retrofit.concepts.basis), when concepts
    are named and the bottleneck can mix channels; the (N, V) presence of their concepts; the
    image embeddings naming reuses."""
    if (
        config.concepts is None
        or not config.concept_features
        or not config.linear_mix
        or method_traits(config.method).learns_attributes  # FLINT learns its own dictionary
    ):
        return None, None, None
    settings = parse_concepts(config.concepts)
    names, presence, embeddings = concept_presence(
        settings,
        loader,
        train.labels,
        cache_dir=config.cache_dir,
        batch_size=config.batch_size,
        progress=config.progress,
    )
    if not names:
        return None, None, embeddings
    basis = fit_concept_basis(
        features, presence.to(features.device), names, q=settings.q, seed=config.seed
    )
    if not basis.size:
        return None, None, embeddings
    return basis, presence[:, [names.index(name) for name in basis.names]], embeddings


def _class_count(labels: torch.Tensor, config: RetrofitConfig) -> int:
    """The classes the head predicts: every class name, else up to the largest label."""
    return len(config.class_names) if config.class_names else int(labels.max()) + 1


def _own_features(
    imodel: InterpretableModel, loader: Any, original: FeatureSet, config: RetrofitConfig
) -> torch.Tensor:
    """The features the interpretable model sees: the originals unless its backbone was trained."""
    if config.finetune != "backbone":
        return original.features
    return _features(imodel.backbone, loader, config).features
