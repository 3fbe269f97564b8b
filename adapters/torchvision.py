"""torchvision classification models (ResNet, ConvNeXt, EfficientNet, MobileNet, DenseNet,
VGG, ViT, Swin, SqueezeNet, ...): built by name with a weights tag."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from retrofit.adapters.base import ModelAdapter, register_adapter
from retrofit.safe_io import MAX_COUNT, whole


def _is_torchvision(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models")


def load_torchvision(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """torchvision.models.get_model(name, weights=...); weights are fetched by torchvision."""
    import torchvision

    return torchvision.models.get_model(name, weights=weights, **kwargs)


def torchvision_transform(preprocessing: Mapping[str, Any]) -> Callable[[Any], Any]:
    """The eval transform of a weights enum (resize, centre crop, [0, 1], normalise), rebuilt
    from the values an export records so no weights enum is needed to read an image."""
    from torchvision import transforms

    interpolation = transforms.InterpolationMode(preprocessing.get("interpolation", "bilinear"))
    return transforms.Compose(
        [
            transforms.Resize(list(preprocessing["resize_size"]), interpolation=interpolation),
            transforms.CenterCrop(list(preprocessing["crop_size"])),
            transforms.PILToTensor(),
            transforms.ConvertImageDtype(torch.float),
            transforms.Normalize(list(preprocessing["mean"]), list(preprocessing["std"])),
        ]
    )


TORCHVISION = register_adapter(
    ModelAdapter(
        name="torchvision",
        matches=_is_torchvision,
        load=load_torchvision,
        priority=10,
        build_kwargs={"num_classes": whole(1, MAX_COUNT)},
        image_transform=torchvision_transform,
    )
)
