"""convert(): orchestrate extraction, head fitting and adapter training — nothing else."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from retrofit.adapter import FixedHead, build_adapter, finetune_adapter
from retrofit.concepts import apply_concepts
from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, InfeasibleSettingsError
from retrofit.features import extract, resolve_device
from retrofit.featureset import FeatureSet
from retrofit.finetune import finetune_backbone
from retrofit.heads import get_head
from retrofit.hooks import LayerSpec
from retrofit.loaders import as_batches
from retrofit.model import InterpretableModel
from retrofit.streaming import chunk_rows, row_slices

logger = logging.getLogger(__name__)


def _config(kwargs: dict[str, Any]) -> RetrofitConfig:
    try:
        return RetrofitConfig(**kwargs)
    except TypeError as error:
        raise ConfigError(
            f"{error}. See retrofit.RetrofitConfig for the accepted settings."
        ) from error


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
    **settings: Any,
) -> InterpretableModel:
    """Turn a trained classifier into an interpretable one; keyword arguments mirror RetrofitConfig.

    The backbone runs once over `train_loader` (features are cached when `cache_dir` is set);
    the head, the assignment and the adapter are fitted on those cached features.
    """
    config = _config(settings)
    train = _features(model, train_loader, config)
    if config.n_features > train.dim:
        raise InfeasibleSettingsError(
            f"n_features={config.n_features} is larger than the {train.dim} penultimate features of "
            f"the model (layer {train.layer}). Lower n_features or pick a wider feature_layer."
        )
    device = resolve_device(model, config.device)
    features = train.features.to(device)
    labels = train.labels.to(device)
    logger.info("fitting the %s head on %d x %d features", config.method, *train.features.shape)
    result = get_head(config.method)(features, labels, config, train.maps, train.logits)
    adapter = result.adapter or build_adapter(result, config, in_features=train.dim)
    head = FixedHead.from_result(result)
    history: dict[str, Any] = {}
    if config.finetune != "none" and result.adapter is None:
        history["adapter"] = finetune_adapter(
            adapter, head, features, labels, config, train.logits, train.maps
        )
    backbone = copy.deepcopy(model) if config.finetune == "backbone" else model
    imodel = InterpretableModel(
        backbone.eval(),
        LayerSpec.from_dict(train.meta["layer_spec"]),
        adapter,
        head,
        config,
        class_names=train.class_names,
        stats={
            "head": result.stats,
            "family": train.meta["family"],
            "layer": train.layer,
            "input_size": train.meta.get("input_size"),
        },
    ).to(device)
    if config.finetune == "backbone":
        history["backbone"] = finetune_backbone(
            imodel, as_batches(train_loader, config.batch_size), device
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
        )
    imodel.stats["train"] = _accuracy(
        imodel, _own_features(imodel, train_loader, train, config), train
    )
    if val_loader is not None:
        val = _features(model, val_loader, config)
        imodel.stats["val"] = _accuracy(imodel, _own_features(imodel, val_loader, val, config), val)
    return imodel.eval()


def _own_features(
    imodel: InterpretableModel, loader: Any, original: FeatureSet, config: RetrofitConfig
) -> torch.Tensor:
    """The features the interpretable model sees: the originals unless its backbone was trained."""
    if config.finetune != "backbone":
        return original.features
    return _features(imodel.backbone, loader, config).features
