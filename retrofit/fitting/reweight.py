"""reweight="consistency" (ALGORITHMS §9.2): train again with more weight on the samples whose
explanation changes when only their background is perturbed.

Each of K rounds measures E on the first `reweight_images` training images with the current
model, sets v = 1 − E (tempered, normalised to mean 1, clipped to [1/clip, clip]; images beyond
the subset keep weight 1) and then either refits the head and bottleneck on the cached features
(retrofit.fitting.layer_fit, offered what convert offered: concept features and the channels no concept
covers, or FLINT's attributes; the head on a v-weighted resample, since the head solvers take no
weights; the bottleneck with v-weighted cross-entropy) or, with finetune="backbone", fine-tunes
backbone and bottleneck from the images with v-weighted cross-entropy (the paper's own setting).
A last pass measures E again, so the cost is K + 1 consistency passes over the subset plus K
refits. With a `cache_dir`, each pass's scores are stored keyed by the model's weights, the
settings and the images, so a rerun (or a resumed run) reuses them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import torch
from tqdm.auto import tqdm

from retrofit.check.consistency import (
    ConsistencySettings,
    batch_slices,
    consistency_scores,
    foreground_masks,
    heatmap_function,
    take_images,
)
from retrofit.config import RetrofitConfig
from retrofit.errors import DataError
from retrofit.extraction.featureset import FeatureSet
from retrofit.extraction.fingerprint import batch_fingerprint
from retrofit.extraction.loaders import as_batches
from retrofit.fitting.consistency_cache import cached_scores, scores_key
from retrofit.fitting.finetune import finetune_backbone
from retrofit.fitting.layer_fit import HeadInputs, fit_layer
from retrofit.model.interpretable import InterpretableModel

logger = logging.getLogger(__name__)


def consistency_weights(scores: torch.Tensor, clip: float, temperature: float) -> torch.Tensor:
    """v = (1 − E)^(1/T), normalised to mean 1 and clipped to [1/clip, clip] (then normalised
    again); all-consistent scores give uniform weights."""
    v = (1 - scores.float()).clamp_min(0) ** (1 / temperature)
    if not v.sum() > 0:
        return torch.ones_like(v)
    v = (v / v.mean()).clamp(1 / clip, clip)
    return v / v.mean()


def _measure(
    imodel: InterpretableModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    foreground: torch.Tensor | None,
    settings: ConsistencySettings,
    config: RetrofitConfig,
    device: torch.device,
    desc: str,
) -> torch.Tensor:
    imodel.eval()

    def compute() -> torch.Tensor:
        heatmaps, _ = heatmap_function(imodel, images[:2].to(device))
        parts = batch_slices(len(images), settings)
        return torch.cat(
            [
                consistency_scores(
                    imodel,
                    images[part].to(device),
                    settings,
                    heatmaps,
                    foreground[part].to(device) if foreground is not None else None,
                )[0]
                for part in tqdm(parts, desc=desc, unit="batch", disable=not config.progress)
            ]
        )

    if config.cache_dir is None:
        return compute()
    masked = {
        "foreground": batch_fingerprint(foreground, labels) if foreground is not None else None
    }
    key = scores_key(imodel, {**asdict(settings), **masked}, images, labels)
    return cached_scores(config.cache_dir, key, len(images), compute)


def reweight_by_consistency(
    imodel: InterpretableModel,
    train_loader: Any,
    train: FeatureSet,
    config: RetrofitConfig,
    device: torch.device,
    masks: Any = None,
    inputs: HeadInputs | None = None,
) -> dict[str, Any]:
    """Run the K reweighting rounds in place on `imodel`; returns what each round measured.
    `masks`: the training images' foregrounds in loader order (else the heat quantile);
    `inputs`: what convert offered the head (default: the cached channels)."""
    settings = ConsistencySettings.parse(dict(config.reweight_consistency))
    n = len(train.labels)
    images, subset_labels = take_images(
        train_loader, min(config.reweight_images, n), settings.batch_size
    )
    if not torch.equal(subset_labels, train.labels[: len(subset_labels)]):
        raise DataError(
            "reweight='consistency' pairs images with cached features by position, but the "
            "training loader yielded a different order on a second pass; pass a loader with "
            "shuffle=False (or a Dataset)."
        )
    foreground = (
        foreground_masks(masks, len(images), images.shape[2:]) if masks is not None else None
    )
    generator = torch.Generator().manual_seed(config.seed)
    rounds: list[dict[str, Any]] = []
    start = time.perf_counter()
    for k in range(config.reweight_rounds):
        round_start = time.perf_counter()
        scores = _measure(
            imodel,
            images,
            subset_labels,
            foreground,
            settings,
            config,
            device,
            f"consistency round {k + 1}",
        )
        weights = torch.ones(n)
        weights[: len(scores)] = consistency_weights(
            scores, config.reweight_clip, config.reweight_temperature
        )
        if config.finetune == "backbone":
            history = finetune_backbone(
                imodel,
                as_batches(train_loader, config.batch_size),
                device,
                sample_weights=weights,
            )
        else:
            rows = torch.multinomial(weights, n, replacement=True, generator=generator)
            layer = fit_layer(
                inputs or HeadInputs(train.features.to(device), train.maps),
                train,
                config,
                device,
                rows=rows,
                sample_weights=weights.to(device),
            )
            imodel.bottleneck, imodel.head = layer.bottleneck.to(device), layer.head.to(device)
            history = layer.history
        rounds.append(
            {
                "consistency": float(scores.mean()),
                "weight_max": float(weights.max()),
                "weight_min": float(weights.min()),
                "history": history,
                "seconds": time.perf_counter() - round_start,
            }
        )
        logger.info("reweight round %d: mean consistency %.4f", k + 1, rounds[-1]["consistency"])
    final = _measure(
        imodel, images, subset_labels, foreground, settings, config, device, "consistency after"
    )
    imodel.eval()
    return {
        "images": len(images),
        "background": "foreground masks" if foreground is not None else "heat quantile",
        "rounds": rounds,
        "consistency_after": float(final.mean()),
        "seconds": time.perf_counter() - start,
        "settings": {
            "clip": config.reweight_clip,
            "temperature": config.reweight_temperature,
            **asdict(settings),
        },
    }
