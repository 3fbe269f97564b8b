"""One explainer protocol over Captum: Grad-CAM, exact CAM, Integrated Gradients, neuron IG.

Every explainer is built for one model and answers `explainer(images, target)` with signed
attributions: (N, H, W) heatmaps at input resolution for the spatial methods (Grad-CAM, CAM),
image-shaped (N, 3, H, W) maps for the gradient methods (IG, neuron IG). The pixel checks and the
consistency check build theirs here, by name (`PIXEL_EXPLAINERS`) or for any classifier
(`class_heatmaps`), so a new attribution method is one class in this file and one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from captum.attr import (
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NeuronIntegratedGradients,
)
from torch import nn

from retrofit.errors import ConfigError
from retrofit.extraction.hooks import LayerSpec, maps_to_grid


class Explainer(Protocol):
    """Attributions of `target` (a class or feature index per image) for a batch of images;
    `target` is a keyword, as Captum's metrics pass it."""

    name: str

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Spatial:
    """A network and where its spatial maps are: what Grad-CAM needs of any model."""

    backbone: nn.Module
    spec: LayerSpec


class _GridTap(nn.Module):
    """An identity the maps pass through as (N, D, H, W), so LayerGradCam sees a grid for any layout."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid


def _restore_layout(grid: torch.Tensor, value: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "nhwc":
        return grid.permute(0, 2, 3, 1)
    tokens = grid.flatten(2).transpose(1, 2)
    prefix = value[:, : value.shape[1] - tokens.shape[1]]
    return torch.cat([prefix, tokens], dim=1)


@contextmanager
def gradcam_layer(model: Any) -> Iterator[tuple[nn.Module, bool]]:
    """(layer, attribute_to_layer_input) for LayerGradCam on the last spatial layer of `model`
    (anything with `backbone` and `spec`: an InterpretableModel or a `Spatial`)."""
    spec = model.spec
    if spec.maps_module is None:
        raise ConfigError(
            "Grad-CAM needs a spatial layer, and this model's LayerSpec has no maps_module; "
            "drop 'gradcam' from pixel_methods."
        )
    module = dict(model.backbone.named_modules())[spec.maps_module]
    layout = spec.maps_layout or "nchw"
    if layout in ("nchw", "head_input"):
        yield module, layout == "head_input"
        return
    tap = _GridTap()

    def hook(_: nn.Module, __: tuple, output: Any) -> Any:
        value = output[0] if isinstance(output, (tuple, list)) else output
        restored = _restore_layout(tap(maps_to_grid(value, layout)), value, layout)
        if isinstance(output, tuple):
            return (restored, *output[1:])
        if isinstance(output, list):
            return [restored, *output[1:]]
        return restored

    handle = module.register_forward_hook(hook)
    try:
        yield tap, False
    finally:
        handle.remove()


class GradCam:
    """Signed Grad-CAM of `forward`'s output `target`, on the spatial layer of `spatial`,
    upsampled (bilinear) to the input: (N, H, W)."""

    name = "gradcam"

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], spatial: Any) -> None:
        self.forward, self.spatial = forward, spatial

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad(), gradcam_layer(self.spatial) as (layer, to_input):
            cam = LayerGradCam(self.forward, layer).attribute(
                images, target=target, attribute_to_layer_input=to_input
            )
        cam = cam[0] if isinstance(cam, tuple) else cam
        return LayerAttribution.interpolate(cam, tuple(images.shape[2:]), "bilinear")[:, 0].detach()


class IntegratedGradientsExplainer:
    """Integrated Gradients of a class logit from a black baseline: image-shaped maps."""

    name = "ig"

    def __init__(self, model: nn.Module, steps: int, internal_batch_size: int) -> None:
        self.ig, self.steps, self.internal_batch_size = (
            IntegratedGradients(model),
            steps,
            internal_batch_size,
        )

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ig.attribute(
            images,
            target=target,
            n_steps=self.steps,
            internal_batch_size=self.internal_batch_size,
        ).detach()


class NeuronIntegratedGradientsExplainer:
    """Integrated Gradients of one bottleneck feature per image: image-shaped maps."""

    name = "neuron_ig"

    def __init__(self, model: Any, steps: int, internal_batch_size: int) -> None:
        self.ig = NeuronIntegratedGradients(model, model.bottleneck)
        self.steps, self.internal_batch_size = steps, internal_batch_size

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(images)
        for feature in torch.unique(target).tolist():
            rows = (target == feature).nonzero()[:, 0]
            out[rows] = self.ig.attribute(
                images[rows],
                neuron_selector=int(feature),
                n_steps=self.steps,
                internal_batch_size=self.internal_batch_size,
            ).detach()
        return out


def gradcam(
    imodel: Any, images: torch.Tensor, targets: torch.Tensor, level: str = "class"
) -> torch.Tensor:
    """(N, H, W) signed Grad-CAM of an interpretable model's class logit or feature activation."""
    forward = imodel if level == "class" else imodel.concept_activations
    return GradCam(forward, imodel)(images, targets)


class _ImageShaped:
    """A spatial explainer's (N, H, W) maps broadcast over the channels, shaped like the images
    (what Captum's infidelity and sensitivity and the deletion curves expect)."""

    def __init__(self, explainer: Explainer) -> None:
        self.explainer, self.name = explainer, explainer.name

    def __call__(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.explainer(images, target)[:, None].expand_as(images).contiguous()


def _pixel_gradcam(imodel: Any, level: str, steps: int, internal_batch_size: int) -> Explainer:
    forward = imodel if level == "class" else imodel.concept_activations
    return _ImageShaped(GradCam(forward, imodel))


def _pixel_ig(imodel: Any, level: str, steps: int, internal_batch_size: int) -> Explainer:
    return IntegratedGradientsExplainer(imodel, steps, internal_batch_size)


def _pixel_neuron_ig(imodel: Any, level: str, steps: int, internal_batch_size: int) -> Explainer:
    return NeuronIntegratedGradientsExplainer(imodel, steps, internal_batch_size)


# the pixel checks' methods: name -> (factory(imodel, level, ig_steps, internal_batch_size),
# the (level, method) entries it is evaluated at)
PIXEL_EXPLAINERS: dict[str, tuple[Callable[..., Explainer], tuple[tuple[str, str], ...]]] = {
    "gradcam": (_pixel_gradcam, (("class", "gradcam"), ("feature", "gradcam"))),
    "ig": (_pixel_ig, (("class", "ig"),)),
    "neuron_ig": (_pixel_neuron_ig, (("feature", "neuron_ig"),)),
}


def batched(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """fn over chunks of (images, targets), concatenated."""
    return torch.cat(
        [
            fn(images[s : s + batch_size], targets[s : s + batch_size])
            for s in range(0, len(images), batch_size)
        ]
    )
