"""HuggingFace AutoModelForImageClassification (ResNet, ViT, ConvNeXt, Swin, DeiT, ...)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from retrofit.adapters.base import ModelAdapter, register_adapter
from retrofit.errors import ConfigError

TWO_HEADS = ["cls_classifier", "distillation_classifier"]


def _is_hf(model: nn.Module) -> bool:
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


def image_processor(preprocessing: Mapping[str, Any]) -> Any:
    """The original image processor, rebuilt from its recorded preprocessor_config.json. Only a
    processor class of transformers itself is accepted (never code named by the export)."""
    import transformers

    settings = {k: v for k, v in preprocessing.items() if k != "source"}
    name = settings.get("image_processor_type")
    processor_class = getattr(transformers, name, None) if isinstance(name, str) else None
    if not (
        isinstance(processor_class, type)
        and issubclass(processor_class, transformers.ImageProcessingMixin)
    ):
        raise ConfigError(
            f"The recorded preprocessing names image processor {name!r}, which is not an image "
            "processor class of transformers; pass the model's own image processor instead."
        )
    return processor_class.from_dict(settings)


def transformers_transform(preprocessing: Mapping[str, Any]) -> Callable[[Any], Any]:
    """A PIL image to pixel_values (C, H, W) through the original image processor."""
    processor = image_processor(preprocessing)
    return lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0]


TRANSFORMERS = register_adapter(
    ModelAdapter(
        name="transformers",
        matches=_is_hf,
        preferred_heads=_heads,
        load=load_transformers,
        priority=20,
        image_transform=transformers_transform,
    )
)
