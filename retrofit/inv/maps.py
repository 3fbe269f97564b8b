"""`cluster_maps`: INV's layer-wise cluster saliency maps for a batch of images."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from retrofit.errors import ConfigError, DataError
from retrofit.extraction.loaders import as_batches, iterate
from retrofit.inv.clustering import K_RANGE, cluster_layer, saliency_map
from retrofit.inv.layers import DEFAULT_N_LAYERS, activations_and_gradients, resolve_layers

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 32


@dataclass
class ClusterMap:
    """One cluster saliency map: which image and layer, its channels and (H, W) map in [0, 1]."""

    image: int
    layer: str
    depth: int
    rank: int
    weight: float
    channels: tuple[int, ...]
    saliency: torch.Tensor = field(repr=False)
    reveal_auc: float | None = None

    @property
    def id(self) -> str:
        return f"{self.image}:{self.layer}:{self.rank}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "layer": self.layer,
            "depth": self.depth,
            "rank": self.rank,
            "weight": self.weight,
            "channels": list(self.channels),
            "reveal_auc": self.reveal_auc,
        }


@dataclass
class ClusterMaps:
    """Every cluster map of every image, with the images, predictions and per-layer statistics."""

    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor | None
    predictions: torch.Tensor
    probabilities: torch.Tensor = field(repr=False)
    layers: list[str]
    maps: list[ClusterMap]
    stats: list[dict[str, Any]]
    gradcam: torch.Tensor | None = field(default=None, repr=False)
    class_names: list[str] | None = None
    seed: int = 0

    def class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names else f"class {index}"

    def of_image(self, image: int, layer: str | None = None) -> list[ClusterMap]:
        return [m for m in self.maps if m.image == image and (layer is None or m.layer == layer)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (maps without pixels)."""
        return {
            "layers": self.layers,
            "seed": self.seed,
            "images": [
                {
                    "image": i,
                    "label": None if self.labels is None else int(self.labels[i]),
                    "predicted": int(self.predictions[i]),
                    "predicted_name": self.class_name(int(self.predictions[i])),
                    "probability": float(self.probabilities[i]),
                }
                for i in range(len(self.predictions))
            ],
            "maps": [m.to_dict() for m in self.maps],
            "stats": self.stats,
        }


def _collect_images(
    images: torch.Tensor | Iterable, max_images: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise DataError(
                f"images must be a (N, C, H, W) tensor, got shape {tuple(images.shape)}."
            )
        return images[:max_images], None
    xs, ys, count = [], [], 0
    for x, y in iterate(as_batches(images)):
        xs.append(x[: max_images - count])
        ys.append(y[: max_images - count])
        count += xs[-1].shape[0]
        if count >= max_images:
            break
    if not xs:
        raise DataError("The data yields no images to cluster.")
    return torch.cat(xs), torch.cat(ys)


def gradcam_maps(
    activations: torch.Tensor, gradients: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """(N, H, W) Grad-CAM, relu(sum_k mean(dy/dA_k) A_k), upsampled like check.pixel.gradcam."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activations).sum(dim=1, keepdim=True).clamp(min=0)
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0].cpu()


def model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def cluster_maps(
    model: nn.Module,
    images: torch.Tensor | Iterable,
    layers: Sequence[str] | str | None = None,
    n_layers: int = DEFAULT_N_LAYERS,
    targets: torch.Tensor | None = None,
    seed: int = 0,
    max_images: int = DEFAULT_MAX_IMAGES,
    batch_size: int = 16,
    k_range: tuple[int, int] = K_RANGE,
    tsne: bool = False,
    class_names: Sequence[str] | None = None,
    progress: bool = True,
) -> ClusterMaps:
    """INV cluster saliency maps of `images` in several spatial layers of `model`.

    `layers`: module names (default: the last `n_layers` stages the execution trace finds).
    `targets`: the class each image is explained for (default: the predicted class).
    `tsne`: cluster a seeded 2-D t-SNE of the PCA components (INV's option; slower).
    Time is bounded by `max_images`; the result is deterministic given `seed`.
    """
    for name, value in (
        ("n_layers", n_layers),
        ("max_images", max_images),
        ("batch_size", batch_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if len(k_range) != 2 or not 2 <= k_range[0] <= k_range[1]:
        raise ConfigError(f"k_range must be (low, high) with 2 <= low <= high, got {k_range}.")
    pixels, labels = _collect_images(images, max_images)
    if pixels.shape[0] == 0:
        raise DataError("No images to cluster.")
    if targets is not None and (targets.ndim != 1 or targets.shape[0] < pixels.shape[0]):
        raise ConfigError(
            f"targets must hold one class per image ({pixels.shape[0]}), got shape "
            f"{tuple(targets.shape)}."
        )
    device = model_device(model)
    resolved = resolve_layers(model, pixels[:1].to(device), layers, n_layers)
    names = [name for name, _ in resolved]
    logger.info("INV cluster maps on layers %s", names)
    size = tuple(pixels.shape[2:])
    maps: list[ClusterMap] = []
    stats: list[dict[str, Any]] = []
    predictions, probabilities, cams = [], [], []
    bar = tqdm(total=pixels.shape[0] * len(names), desc="cluster maps", disable=not progress)
    for start in range(0, pixels.shape[0], batch_size):
        batch = pixels[start : start + batch_size].to(device)
        target = None if targets is None else targets[start : start + batch_size]
        logits, captured = activations_and_gradients(model, batch, resolved, target)
        chosen = logits.argmax(dim=1) if target is None else target.to(logits.device)
        predictions.append(chosen.cpu())
        probabilities.append(logits.softmax(dim=1).gather(1, chosen[:, None])[:, 0].cpu())
        cams.append(gradcam_maps(*captured[names[-1]], size))
        for depth, name in enumerate(names):
            activations, gradients = captured[name]
            for offset in range(batch.shape[0]):
                image = start + offset
                clusters, layer_stats = cluster_layer(
                    activations[offset].cpu(), gradients[offset].cpu(), seed, k_range, tsne
                )
                stats.append({"image": image, "layer": name, "depth": depth, **layer_stats})
                for rank, cluster in enumerate(clusters):
                    maps.append(
                        ClusterMap(
                            image=image,
                            layer=name,
                            depth=depth,
                            rank=rank,
                            weight=cluster.weight,
                            channels=cluster.channels,
                            saliency=saliency_map(cluster.grid_map, size),
                        )
                    )
                bar.update(1)
    bar.close()
    empty = sum(1 for s in stats if s["k"] == 0)
    if empty:
        logger.warning(
            "%d of %d (image, layer) pairs have no channel with positive evidence for the class "
            "(all gradients or activations <= 0); they get no cluster map.",
            empty,
            len(stats),
        )
    for entry in stats:
        if isinstance(entry["silhouette"], float) and math.isnan(entry["silhouette"]):
            entry["silhouette"] = None
    return ClusterMaps(
        images=pixels.cpu(),
        labels=labels,
        predictions=torch.cat(predictions),
        probabilities=torch.cat(probabilities),
        layers=names,
        maps=maps,
        stats=stats,
        gradcam=torch.cat(cams),
        class_names=list(class_names) if class_names is not None else None,
        seed=seed,
    )
