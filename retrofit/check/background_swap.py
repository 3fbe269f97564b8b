"""The non-adversarial perturbation of the consistency check: swap each image's background.

Image i keeps its foreground (the complement of its background B_i) and gets the background of
a donor. The donor must be clean: pasting an object onto another image's full background,
pieces of that image's object included, changes what a shape-reading model sees (a control
model on the spurious world flips 48 % that way). So a donor is either an object-free image the
user supplies (`backgrounds=`), or the next image of the batch with its own foreground filled
in from its background: "diffuse" grows the background inwards pixel by pixel (each new pixel
the mean of its known neighbours), "mean" paints the background's mean colour.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from retrofit.consistency_settings import FILLS as FILLS
from retrofit.errors import ConfigError, DataError


def fill_foreground(
    images: torch.Tensor, background: torch.Tensor, fill: str = "diffuse"
) -> torch.Tensor:
    """(N, C, H, W) images whose non-background pixels are filled from their (N, H, W)
    `background` pixels; an image without background pixels becomes its mean colour."""
    if fill not in FILLS:
        raise ConfigError(f"swap_fill={fill!r} is not supported; choose one of {list(FILLS)}.")
    _check_mask(images, background)
    known = background[:, None].to(images.dtype)
    empty = known.sum(dim=(1, 2, 3)) == 0
    known = torch.where(empty[:, None, None, None], torch.ones_like(known), known)
    filled = images * known
    if fill == "mean":
        mean = filled.sum(dim=(2, 3), keepdim=True) / known.sum(dim=(2, 3), keepdim=True)
        filled = torch.where(known.bool(), images, mean.expand_as(images))
    else:
        for _ in range(sum(images.shape[2:])):  # enough steps to reach every pixel
            if bool(known.all()):
                break
            weight = F.avg_pool2d(known, 3, stride=1, padding=1)
            grown = F.avg_pool2d(filled, 3, stride=1, padding=1) / weight.clamp_min(1e-12)
            new = (weight > 0) & (known == 0)
            filled = torch.where(new, grown, filled)
            known = torch.where(new, torch.ones_like(known), known)
    if bool(empty.any()):
        means = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
        filled = torch.where(empty[:, None, None, None], means, filled)
    return filled


def swap_background(
    images: torch.Tensor, background: torch.Tensor, donors: torch.Tensor
) -> torch.Tensor:
    """Each image's `background` pixels replaced by the same pixels of its donor image."""
    _check_mask(images, background)
    if donors.shape != images.shape:
        raise DataError(
            f"the donor backgrounds must have the images' shape {tuple(images.shape)}, got "
            f"{tuple(donors.shape)}."
        )
    return torch.where(background[:, None], donors.to(images), images)


def inpainted_donors(images: torch.Tensor, background: torch.Tensor, fill: str) -> torch.Tensor:
    """Image i's donor: image i+1 of the batch (cyclically) with its foreground filled in."""
    if len(images) < 2:
        raise DataError(
            "the background swap needs at least two images per batch (each takes another's "
            "background); pass more images or object-free images as backgrounds=."
        )
    return fill_foreground(images, background, fill).roll(-1, dims=0)


def load_backgrounds(backgrounds: Any, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(n, *shape) object-free donor images from a tensor, a Dataset or an iterable of batches
    (items may be images or (image, label) pairs); fewer than n are reused in turn."""
    taken = _collect(backgrounds, n)
    if not taken:
        raise DataError("backgrounds= yielded no images; pass object-free images to swap in.")
    stack = torch.cat(taken)
    if tuple(stack.shape[1:]) != tuple(shape):
        raise DataError(
            f"backgrounds= images are {tuple(stack.shape[1:])} but the checked images are "
            f"{tuple(shape)}; pass object-free images of the same size and channels."
        )
    return stack[torch.arange(n) % len(stack)]


def _collect(backgrounds: Any, n: int) -> list[torch.Tensor]:
    if isinstance(backgrounds, torch.Tensor):
        return [_as_batch(backgrounds)[:n]]
    if isinstance(backgrounds, Dataset) and hasattr(backgrounds, "__len__"):
        items = (backgrounds[i] for i in range(min(n, len(backgrounds))))
    elif isinstance(backgrounds, Iterable):
        items = iter(backgrounds)
    else:
        raise DataError(
            f"backgrounds= must be a tensor, a Dataset or a loader of images, got "
            f"{type(backgrounds).__name__}."
        )
    taken, seen = [], 0
    for item in items:
        batch = _as_batch(item[0] if isinstance(item, (tuple, list)) else item)
        taken.append(batch[: n - seen])
        seen += len(taken[-1])
        if seen >= n:
            break
    return taken


def _as_batch(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4):
        raise DataError(
            "backgrounds= must hold image tensors, (C, H, W) or (N, C, H, W), got "
            f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}."
        )
    return (images[None] if images.ndim == 3 else images).float()


def _check_mask(images: torch.Tensor, background: torch.Tensor) -> None:
    if background.shape != (images.shape[0], *images.shape[2:]):
        raise DataError(
            f"the background mask must be (N, H, W) = {(images.shape[0], *images.shape[2:])}, "
            f"got {tuple(background.shape)}."
        )
