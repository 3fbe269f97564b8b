"""timm models: the head is `get_classifier()` (plus `head_dist` for distilled models)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from retrofit.adapters.base import ModelAdapter, module_name, register_adapter
from retrofit.safe_io import MAX_COUNT, MAX_IMAGE_SIDE, sizes, whole


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "get_classifier")


def _heads(model: nn.Module) -> list[str]:
    classifier = model.get_classifier()
    modules = list(classifier) if isinstance(classifier, tuple) else [classifier]
    head_dist = getattr(model, "head_dist", None)
    if isinstance(head_dist, nn.Module) and all(head_dist is not m for m in modules):
        modules.append(head_dist)
    names = [module_name(model, m) for m in modules]
    return [n for n in names if n]


def load_timm(
    name: str, pretrained: bool = False, checkpoint_path: str | None = None, **kwargs: Any
) -> nn.Module:
    """timm.create_model(name, pretrained=..., checkpoint_path=...)."""
    import timm

    return timm.create_model(
        name, pretrained=pretrained, checkpoint_path=checkpoint_path or "", **kwargs
    )


TIMM_TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def timm_transform(preprocessing: Mapping[str, Any]) -> Callable[[Any], Any]:
    """timm's own eval transform for the data config an export records."""
    from timm.data import create_transform

    settings = {k: preprocessing[k] for k in TIMM_TRANSFORM_KEYS if k in preprocessing}
    settings["input_size"] = tuple(settings["input_size"])
    return create_transform(**settings, is_training=False)


TIMM = register_adapter(
    ModelAdapter(
        name="timm",
        matches=_is_timm,
        preferred_heads=_heads,
        load=load_timm,
        priority=10,
        build_kwargs={
            "num_classes": whole(0, MAX_COUNT),
            "img_size": lambda v: whole(1, MAX_IMAGE_SIDE)(v) or sizes(2, 2, MAX_IMAGE_SIDE)(v),
        },
        image_transform=timm_transform,
    )
)
