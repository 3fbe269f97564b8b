"""Per-image consistency scores stored under the cache, so a rerun of a reweighting convert
reuses what an earlier (or interrupted) run measured instead of perturbing the images again.

One file per measurement, `<cache_dir>/consistency/<key>.safetensors`, keyed by the model's
weights, the consistency settings and the images and labels: any change recomputes. Files are
written atomically, so a crash leaves either no file or a whole one; an unreadable file is
ignored and rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from retrofit.extraction.cache import atomic_save_safetensors
from retrofit.extraction.fingerprint import (
    batch_fingerprint,
    model_fingerprint,
    settings_fingerprint,
)

logger = logging.getLogger(__name__)

FOLDER = "consistency"
VERSION = 1


def scores_key(
    model: nn.Module, settings: dict[str, Any], images: torch.Tensor, labels: torch.Tensor
) -> str:
    """Fingerprint of everything the scores depend on."""
    return settings_fingerprint(
        {
            "version": VERSION,
            "model": model_fingerprint(model),
            "settings": settings,
            "data": batch_fingerprint(images, labels),
        }
    )


def cached_scores(
    cache_dir: str | Path | None, key: str, n: int, compute: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """The n scores stored under `key`, else `compute()` (then stored when there is a cache)."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / FOLDER / f"{key}.safetensors"
    if path.is_file():
        try:
            scores = load_file(str(path))["scores"]
            if scores.shape == (n,):
                logger.info("consistency scores reused from %s", path)
                return scores
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            logger.warning("ignoring unreadable consistency scores %s (%s)", path, error)
    scores = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors({"scores": scores.detach().cpu().float()}, path, {"key": key})
    logger.info("consistency scores stored in %s", path)
    return scores
