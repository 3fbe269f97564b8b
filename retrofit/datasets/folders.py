"""Write a labelled dataset to disk as an ImageFolder (one sub-folder of PNGs per class).

Examples and command-line tests use it to show retrofit on the folder layout users have,
with images from the synthetic concept world instead of a download.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


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
