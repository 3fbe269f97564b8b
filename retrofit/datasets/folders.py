"""ImageFolders: write a labelled dataset to disk as one (one sub-folder of PNGs per class),
and open one whose unreadable images are named (or skipped) instead of crashing the loader.

Examples and command-line tests use the writer to show retrofit on the folder layout users
have, with images from the synthetic concept world instead of a download.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from retrofit.errors import DataError

logger = logging.getLogger(__name__)
SKIP_HOW = "pass skip_bad_images=True (CLI: --skip-bad-images) to skip unreadable images"


def to_pil(image: torch.Tensor | Image.Image) -> Image.Image:
    """A PIL RGB image from a float CHW tensor in [0, 1] (PIL images pass through)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def write_image_folder(dataset: Dataset, root: str | os.PathLike, class_names: list[str]) -> Path:
    """Save every (image, label) of `dataset` as root/<class name>/<index>.png; returns root."""
    root = Path(root)
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, label = dataset[index]
        to_pil(image).save(root / class_names[int(label)] / f"{index:06d}.png")
    return root


def synthetic_image_folder(
    root: str | os.PathLike,
    n_images: int = 200,
    n_classes: int = 10,
    image_size: int = 64,
    seed: int = 0,
    split: str = "train",
) -> Path:
    """An ImageFolder of synthetic concept-world images, for offline examples and tests."""
    from retrofit.datasets.synthetic import SyntheticConceptDataset

    dataset = SyntheticConceptDataset(
        n_images, n_classes=n_classes, image_size=image_size, seed=seed, split=split
    )
    return write_image_folder(dataset, root, dataset.class_names)


class BadImageError(DataError):
    """An image file of a folder is truncated, corrupt or not an image."""


def read_image(path: str | os.PathLike) -> Image.Image:
    """The RGB image in `path`, fully decoded; a BadImageError naming the file if it cannot be."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() decodes it all: truncation shows here
    except Image.DecompressionBombError as error:
        raise BadImageError(f"{path} is too large to decode safely ({error}).") from error
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
    ) as error:  # truncated, corrupt, not an image
        reason = " ".join(str(error).split()) or type(error).__name__
        raise BadImageError(
            f"{path} is not a readable image ({reason:.200}); replace or remove it, or {SKIP_HOW}."
        ) from error


def open_image_folder(
    root: str | os.PathLike, transform: Callable | None = None, skip_bad_images: bool = False
) -> Any:
    """A torchvision ImageFolder of `root` whose unreadable images raise a BadImageError naming
    the file. skip_bad_images=True decodes every image once up front and leaves out those that
    cannot be read; their paths are in the dataset's `skipped` list (empty otherwise)."""
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(root), transform=transform, loader=read_image)
    dataset.skipped = []
    if skip_bad_images:
        kept = []
        for sample in dataset.samples:
            try:
                read_image(sample[0])
            except BadImageError:
                dataset.skipped.append(sample[0])
            else:
                kept.append(sample)
        if not kept:
            raise DataError(f"{root}: none of its {len(dataset.samples)} images can be read.")
        dataset.samples = dataset.imgs = kept
        dataset.targets = [label for _, label in kept]
        if dataset.skipped:
            logger.warning("%s", skipped_line(root, dataset.skipped))
    return dataset


def skipped_line(root: str | os.PathLike, skipped: list[str]) -> str:
    """One line saying how many unreadable images of `root` were skipped, and the first one."""
    plural = "image" if len(skipped) == 1 else "images"
    return f"skipped {len(skipped)} unreadable {plural} in {root} (first: {skipped[0]})"
