"""torchvision classification models (ResNet, ConvNeXt, EfficientNet, MobileNet, DenseNet,
VGG, ViT, Swin, SqueezeNet, ...): built by name with a weights tag."""

from __future__ import annotations

from typing import Any

from torch import nn

from retrofit.adapters.base import ModelAdapter, register_adapter
from retrofit.safe_io import MAX_COUNT, whole


def _is_torchvision(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models")


def load_torchvision(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """torchvision.models.get_model(name, weights=...); weights are fetched by torchvision."""
    import torchvision

    return torchvision.models.get_model(name, weights=weights, **kwargs)


TORCHVISION = register_adapter(
    ModelAdapter(
        name="torchvision",
        matches=_is_torchvision,
        load=load_torchvision,
        priority=10,
        build_kwargs={"num_classes": whole(1, MAX_COUNT)},
    )
)
