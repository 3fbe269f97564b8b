"""torchvision classification models (ResNet, ConvNeXt, EfficientNet, MobileNet, DenseNet,
VGG, ViT, Swin, SqueezeNet, ...): built by name with a weights tag."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from retrofit.adapters.base import ModelAdapter, ModelSpec, last_layer_width, pick, register_adapter
from retrofit.errors import ConfigError
from retrofit.io.files import MAX_COUNT, whole


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


def parse_torchvision_spec(rest: str, text: str) -> ModelSpec:
    name, _, weights = rest.partition(":")
    if not name or ":" in weights:
        raise ConfigError(f"Expected torchvision:NAME[:WEIGHTS], got {text!r}.")
    return ModelSpec("torchvision", name, weights=weights or None)


def build_torchvision(
    spec: ModelSpec, pretrained: bool, trust_remote_code: bool | None
) -> nn.Module:
    if pretrained and spec.weights:
        return load_torchvision(spec.name, weights=spec.weights)
    return load_torchvision(spec.name, weights=None, **pick(spec.kwargs, "num_classes"))


def describe_torchvision(model: nn.Module, spec: ModelSpec) -> None:
    width = last_layer_width(model)
    if width is not None:
        spec.kwargs["num_classes"] = width


def torchvision_weights_transform(model: nn.Module, spec: ModelSpec) -> Callable | None:
    """The weights' own transforms (resize, crop, normalise); None without a weights tag."""
    if not spec.weights:
        return None
    import torchvision

    return torchvision.models.get_model_weights(spec.name)[spec.weights].transforms()


def torchvision_preprocessing(model: nn.Module, spec: ModelSpec | None) -> dict[str, Any] | None:
    """The weights enum's transform values; None without a weights tag."""
    if spec is None or not spec.weights:
        return None
    import torchvision

    transform = torchvision.models.get_model_weights(spec.name)[spec.weights].transforms()
    return {
        "source": "torchvision",
        "resize_size": list(transform.resize_size),
        "crop_size": list(transform.crop_size),
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": str(transform.interpolation.value),
    }


TORCHVISION = register_adapter(
    ModelAdapter(
        name="torchvision",
        matches=_is_torchvision,
        load=load_torchvision,
        priority=10,
        build_kwargs={"num_classes": whole(1, MAX_COUNT)},
        image_transform=torchvision_transform,
        prefix="torchvision",
        spec_forms="torchvision:NAME[:WEIGHTS]",
        parse_spec=parse_torchvision_spec,
        build=build_torchvision,
        describe=describe_torchvision,
        data_transform=torchvision_weights_transform,
        preprocessing=torchvision_preprocessing,
    )
)
