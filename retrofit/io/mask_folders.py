"""Masks from a folder of mask images, matched to an ImageFolder's images by file name.

`masks/cat/001.png` is the mask of `train/cat/001.jpg` (same relative path, any image
extension); a non-zero pixel is the object. A mask follows its image through the geometric
steps of the preprocessing (resizes and crops of a torchvision Compose, with nearest-neighbour
interpolation), so it lines up with the tensor the model sees; a preprocessing that is not a
Compose gets the mask resized to the image tensor's size. Object-free background images are
an ImageFolder read with the images' own preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from retrofit.errors import DataError

MASK_SUFFIXES = (".png", ".bmp", ".gif", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
MISSING_SHOWN = 3


def _mask_files(root: Path, dataset: Any, masks_dir: Path) -> list[Path]:
    """The mask file of every sample of `dataset`, in its order; all missing ones named."""
    found, missing = [], []
    for path, _ in dataset.samples:
        relative = Path(path).resolve().relative_to(root).with_suffix("")
        match = next(
            (masks_dir / relative.with_suffix(s) for s in MASK_SUFFIXES
             if (masks_dir / relative.with_suffix(s)).is_file()),
            None,
        )  # fmt: skip
        if match is None:
            missing.append(str(relative))
        else:
            found.append(match)
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN])
        more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        raise DataError(
            f"{masks_dir} has no mask for {len(missing)} of the {len(dataset.samples)} images "
            f"({shown}{more}); give each image a mask file with the same relative path and name "
            f"(any of {', '.join(MASK_SUFFIXES)})."
        )
    return found


def _geometric(transform: Callable | None) -> list[Callable] | None:
    """The resize and crop steps of a torchvision Compose, nearest-neighbour; None otherwise."""
    from torchvision import transforms

    if not isinstance(transform, transforms.Compose):
        return None
    steps: list[Callable] = []
    for step in transform.transforms:
        if isinstance(step, transforms.Resize):
            steps.append(
                transforms.Resize(step.size, interpolation=transforms.InterpolationMode.NEAREST)
            )
        elif isinstance(step, (transforms.CenterCrop, transforms.Pad)):
            steps.append(step)
    return steps


def _read_mask(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("L")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read mask {path}: {error}") from error


def folder_masks(
    dataset: Any, masks_dir: str | os.PathLike, transform: Callable | None
) -> torch.Tensor:
    """(N, H, W) bool object masks of an ImageFolder `dataset`, at its images' tensor size."""
    import torchvision.transforms.functional as TF

    masks_dir = Path(masks_dir)
    if not masks_dir.is_dir():
        raise DataError(f"--masks {masks_dir} is not a folder of mask images.")
    if not hasattr(dataset, "samples") or not hasattr(dataset, "root"):
        raise DataError(
            f"--masks {masks_dir}: masks from a folder need ImageFolder data (a directory of "
            "class folders), so each mask can be matched to its image by name."
        )
    files = _mask_files(Path(dataset.root).resolve(), dataset, masks_dir)
    size = tuple(dataset[0][0].shape[1:]) if len(dataset) else (0, 0)
    steps = _geometric(transform)
    out = []
    for path in files:
        mask = _read_mask(path)
        for step in steps or []:
            mask = step(mask)
        tensor = TF.pil_to_tensor(mask)[0] > 0
        if tuple(tensor.shape) != size:
            if steps is not None:
                raise DataError(
                    f"mask {path} is {tuple(tensor.shape)} after the images' resizing but the "
                    f"images are {size}; give masks the size of their images."
                )
            resized = torch.nn.functional.interpolate(
                tensor[None, None].float(), size=size, mode="nearest"
            )
            tensor = resized[0, 0] > 0
        out.append(tensor)
    return torch.stack(out) if out else torch.zeros(0, *size, dtype=torch.bool)
