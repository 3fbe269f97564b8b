"""Data and preprocessing for the command line: dataset specs and the transform a model expects.

Data specs: an ImageFolder directory; `synthetic[:SPLIT[:N]]` (the demo's concept world);
`hf:NAME[:SPLIT]` or a folder written by `datasets.save_to_disk` (needs the `datasets` package).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from retrofit.errors import ConfigError, DataError

SYNTHETIC_IMAGES = 2000
HF_IMAGE_COLUMNS = ("image", "img", "pixel_values")
HF_LABEL_COLUMNS = ("label", "labels", "fine_label")


def model_transform(model: nn.Module, spec: Any, image_size: int | None) -> Callable:
    """The preprocessing of the model's family (its adapter's data_transform: weights
    transforms, timm data config, HF image processor); else resize to `image_size` and scale
    to [0, 1]."""
    from torchvision import transforms

    from retrofit.adapters import available_adapters, get_adapter

    family = getattr(spec, "family", None)
    if family in available_adapters():
        hook = get_adapter(family).data_transform
        transform = hook(model, spec) if hook is not None else None
        if transform is not None:
            return transform
    steps = [transforms.Resize((image_size, image_size))] if image_size else []
    return transforms.Compose([*steps, transforms.ToTensor()])


def open_data(spec: str, transform: Callable | None, skip_bad_images: bool = False) -> Dataset:
    """The dataset a data spec names, with `transform` applied to its PIL images.

    An unreadable image of an ImageFolder raises a DataError naming the file when it is read;
    skip_bad_images=True leaves such images out up front (ImageFolders only; the dataset's
    `skipped` lists them and one warning line counts them)."""
    if spec.startswith("synthetic"):
        return _synthetic(spec, transform)
    if spec.startswith("hf:") or (
        Path(spec).is_dir() and (Path(spec) / "dataset_info.json").exists()
    ):
        return _huggingface(spec, transform)
    path = Path(spec)
    if not path.is_dir():
        raise DataError(
            f"Data {spec!r} is not a folder. Pass an ImageFolder directory (one sub-folder per "
            "class), synthetic[:SPLIT[:N]], or hf:NAME[:SPLIT]."
        )
    from retrofit.datasets.folders import open_image_folder

    try:
        return open_image_folder(path, transform, skip_bad_images)
    except (FileNotFoundError, RuntimeError) as error:
        raise DataError(f"{spec} is not a usable ImageFolder: {error}") from error


def _synthetic(spec: str, transform: Callable | None) -> Dataset:
    from retrofit.datasets import SyntheticConceptDataset, demo_world_settings

    parts = spec.split(":")
    if parts[0] != "synthetic" or len(parts) > 3:
        raise ConfigError(f"Expected synthetic[:SPLIT[:N]], got {spec!r}.")
    split = parts[1] if len(parts) > 1 and parts[1] else "train"
    try:
        n_images = int(parts[2]) if len(parts) > 2 else SYNTHETIC_IMAGES
    except ValueError as error:
        raise ConfigError(f"The image count in {spec!r} must be an integer.") from error
    settings = demo_world_settings()
    world = {k: settings[k] for k in ("n_classes", "image_size", "seed")}
    return SyntheticConceptDataset(
        n_images, split=split, transform=transform, as_pil=transform is not None, **world
    )


class _HFImages(Dataset):
    """A HuggingFace dataset as (transformed image, label) pairs."""

    def __init__(self, data: Any, transform: Callable | None) -> None:
        columns = set(data.column_names)
        self.image = next((c for c in HF_IMAGE_COLUMNS if c in columns), None)
        self.label = next((c for c in HF_LABEL_COLUMNS if c in columns), None)
        if self.image is None or self.label is None:
            raise DataError(
                f"The dataset needs an image and a label column; it has {sorted(columns)}."
            )
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        row = self.data[index]
        image = row[self.image]
        return (self.transform(image) if self.transform else image), int(row[self.label])


def _huggingface(spec: str, transform: Callable | None) -> Dataset:
    try:
        import datasets
    except ImportError as error:
        raise DataError(
            "HuggingFace datasets need the `datasets` package: pip install datasets."
        ) from error
    if spec.startswith("hf:"):
        name, _, split = spec[3:].partition(":")
        data = datasets.load_dataset(name, split=split or "train")
    else:
        data = datasets.load_from_disk(spec)
        if isinstance(data, datasets.DatasetDict):
            data = data["train"]
    return _HFImages(data, transform)
