"""HuggingFace AutoModelForImageClassification (ResNet, ViT, ConvNeXt, Swin, DeiT, ...)."""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from retrofit.adapters.base import ModelAdapter, register_adapter

TWO_HEADS = ["cls_classifier", "distillation_classifier"]


def _is_hf(model: nn.Module) -> bool:
    if "transformers.modeling_utils" not in sys.modules:  # no PreTrainedModel can exist yet,
        return False  # and importing transformers costs seconds in every fresh (rank) process
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def _heads(model: nn.Module) -> list[str]:
    names = {name for name, _ in model.named_modules()}
    if all(h in names for h in TWO_HEADS):
        return TWO_HEADS
    return [n for n in ("classifier", "classifier.1", "head") if n in names]


def load_transformers(name_or_path: str, revision: str | None = None, **kwargs: Any) -> nn.Module:
    """AutoModelForImageClassification.from_pretrained(hub id or local folder)."""
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(
        name_or_path, revision=revision, **kwargs
    )


TRANSFORMERS = register_adapter(
    ModelAdapter(
        name="transformers",
        matches=_is_hf,
        preferred_heads=_heads,
        load=load_transformers,
        priority=20,
    )
)
