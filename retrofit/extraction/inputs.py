"""The normalisation policy: how retrofit adapts the images it is given to the model.

Applied by extraction and by InterpretableModel's forward. Converted where the intent is
unambiguous, with one log line each (once per process):
  - uint8 images become floats in [0, 1] (divided by 255, as torchvision's ToTensor does);
  - images are cast to the dtype of the model's parameters (float16, bfloat16 models);
  - one-channel images are repeated to three channels when the model's first convolution
    takes three (grayscale data for an RGB model).
Refused with a DataError that says what to pass: other integer or bool images, items of
different sizes in one Dataset (the first mismatching item is named), non-integer labels, and
training data with fewer than two classes. Other channel counts pass through unchanged: the
first registered convolution is not always the input layer, so only 1 -> 3 is inferred.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from retrofit.errors import DataError, ModelError

logger = logging.getLogger(__name__)
_LOGGED: set[str] = set()  # each conversion is logged once per process


@dataclass
class InputPolicy:
    """What the model takes: its parameter dtype and the channels of its first convolution."""

    dtype: torch.dtype = torch.float32
    channels: int | None = None

    @classmethod
    def of(cls, model: nn.Module) -> InputPolicy:
        require_module(model)
        parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        return cls(
            dtype=parameter.dtype if parameter is not None else torch.float32,
            channels=first_conv.in_channels if first_conv is not None else None,
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """`images` (B, C, H, W) as the model takes them (see the module docstring)."""
        if images.dtype == torch.uint8:
            self._once("uint8", "uint8 images are scaled to floats in [0, 1] (divided by 255)")
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise DataError(
                f"Images must be float tensors (or uint8 in [0, 255]), got dtype {images.dtype}."
            )
        if images.dtype != self.dtype:
            self._once("dtype", f"images are cast to the model's parameter dtype {self.dtype}")
            images = images.to(self.dtype)
        if images.shape[1] == 1 and self.channels == 3:
            self._once("gray", "one-channel images are repeated to the model's 3 channels")
            return images.expand(-1, 3, -1, -1)
        return images

    def _once(self, key: str, message: str) -> None:
        if key not in _LOGGED:
            _LOGGED.add(key)
            logger.info(message)


def require_module(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model must be an nn.Module (a trained classifier), got {type(model).__name__}."
        )


def integer_labels(labels: object, where: str = "a batch") -> torch.Tensor:
    """Labels as an int64 tensor, or a DataError saying how to map them to class indices."""
    try:
        tensor = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as error:
        sample = list(labels)[:3] if isinstance(labels, (list, tuple)) else labels
        raise DataError(
            f"Labels in {where} must be integer class indices, got {sample!r:.80}. Map class "
            "names to indices first (e.g. ImageFolder's class_to_idx)."
        ) from error
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise DataError(f"Labels must be integer class indices, got dtype {tensor.dtype}.")
    return tensor.long()


def check_class_count(labels: torch.Tensor) -> None:
    """An interpretable head contrasts classes: one class alone leaves nothing to explain."""
    present = torch.unique(labels)
    if present.numel() < 2:
        raise DataError(
            f"The training data holds only one class ({present.tolist()}); a classifier head "
            "needs images of at least two classes."
        )


def stack_items(items: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate (image, label, dataset index) items, naming the first item of another size."""
    first = items[0][0].shape
    for image, _, index in items:
        if image.shape != first:
            raise DataError(
                f"Dataset item {index} has an image of shape {tuple(image.shape)}, unlike the "
                f"{tuple(first)} before it; resize all images to one size in the transform."
            )
    images = torch.stack([image for image, _, _ in items])
    return images, integer_labels([label for _, label, _ in items])
