"""Read (images, labels) batches from the loader formats users have.

Accepted: an iterable of (images, labels) tuples or lists, of dicts with `pixel_values` and
`labels` (HuggingFace style), or a torch Dataset (items (image, label) with PIL images or
tensors; `transform` turns PIL images into tensors) which is batched here. Labels must be
integers; how images are adapted to the model is in retrofit.extraction.inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from retrofit.errors import DataError
from retrofit.extraction.inputs import integer_labels, stack_items

IMAGE_KEYS = ("pixel_values", "images", "image", "img", "x")
LABEL_KEYS = ("labels", "label", "targets", "target", "y")


def _to_tensor_image(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, np.ndarray):
        return torch.from_numpy(image)
    if hasattr(image, "convert"):  # a PIL image without a transform
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)
    raise DataError(
        f"Cannot turn a {type(image).__name__} into an image tensor; give the dataset a transform."
    )


class _TransformedDataset(Dataset):
    """A dataset whose images go through `transform`, so PIL datasets can be batched."""

    def __init__(self, dataset: Dataset, transform: Callable | None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = _read_item(self.dataset, index)
        if isinstance(item, Mapping):
            image, label = _pick(item, IMAGE_KEYS, "image"), _pick(item, LABEL_KEYS, "label")
        elif isinstance(item, (tuple, list)) and len(item) >= 2:
            image, label = item[0], item[1]
        else:
            raise DataError(
                "Dataset items must be (image, label) pairs or dicts with an image and a label."
            )
        if self.transform is not None:
            image = self.transform(image)
        return _to_tensor_image(image), _label(label, index), index


def _read_item(dataset: Dataset, index: int) -> Any:
    from PIL import Image

    try:
        return dataset[index]
    except DataError:
        raise
    except Image.DecompressionBombError as error:
        raise DataError(f"Dataset item {index} is not a usable image: {error}") from error
    except (OSError, SyntaxError) as error:  # PIL: truncated, corrupt or not an image
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DataError(
            f"Dataset item {index}{_item_file(dataset, index)} cannot be read ({reason:.200}); "
            "replace or remove the file (retrofit.io.data_specs.open_data(..., "
            "skip_bad_images=True) opens an ImageFolder without its unreadable images)."
        ) from error


def _item_file(dataset: Dataset, index: int) -> str:
    """' (PATH)' for the file behind an ImageFolder-like dataset's item, else ''."""
    samples = getattr(dataset, "samples", None)
    try:
        path = samples[index][0] if samples is not None else None
    except (IndexError, KeyError, TypeError):
        return ""
    return f" ({path})" if isinstance(path, (str, os.PathLike)) else ""


def _label(label: Any, index: int) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label)
    raise DataError(
        f"Dataset item {index} has the label {label!r:.80}; labels must be integer class "
        "indices. Map class names to indices first (e.g. ImageFolder's class_to_idx)."
    )


def _pick(batch: Mapping, keys: tuple[str, ...], what: str) -> Any:
    for key in keys:
        if key in batch:
            return batch[key]
    raise DataError(
        f"A batch dict has no {what}; expected one of the keys {list(keys)}, got {list(batch)}."
    )


def as_batches(
    data: Iterable | Dataset,
    batch_size: int = 64,
    workers: int = 0,
    transform: Callable | None = None,
) -> Iterable:
    """An iterable of raw batches: DataLoaders pass through; Datasets are batched in order."""
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        if not hasattr(data, "__len__"):
            raise DataError("A map-style Dataset must define __len__.")
        return DataLoader(
            _TransformedDataset(data, transform),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=stack_items,
        )
    if transform is not None:
        raise DataError(
            "transform= applies to Datasets only; put it in your DataLoader's dataset instead."
        )
    if not isinstance(data, Iterable):
        raise DataError(
            f"Expected a DataLoader, an iterable of batches or a Dataset, got {type(data).__name__}."
        )
    return data


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of one batch in any supported format, validated."""
    if isinstance(batch, Mapping):
        images, labels = _pick(batch, IMAGE_KEYS, "image tensor"), _pick(batch, LABEL_KEYS, "label")
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        images, labels = batch[0], batch[1]
    else:
        raise DataError(
            f"Cannot read a batch of type {type(batch).__name__}: yield (images, labels) tuples, "
            "or dicts with 'pixel_values' and 'labels'."
        )
    images = _to_tensor_image(images)
    if images.ndim != 4:
        raise DataError(
            f"An image batch must have 4 dimensions (batch, channels, height, width); got shape "
            f"{tuple(images.shape)}. Batch single images with a DataLoader."
        )
    labels = integer_labels(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"Labels must be one integer per image: got labels of shape {tuple(labels.shape)} for "
            f"{images.shape[0]} images."
        )
    return images, labels


def iterate(data: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Validated (images, labels) pairs from an iterable of batches."""
    from PIL import Image

    batches = iter(data)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Image.DecompressionBombError as error:
            raise DataError(
                f"The loader read an image too large to decode safely: {error} Check the "
                "dataset (or raise PIL.Image.MAX_IMAGE_PIXELS if the image is genuine)."
            ) from error
        except (OSError, SyntaxError) as error:  # PIL: a truncated, corrupt or non-image file
            reason = " ".join(str(error).split()) or type(error).__name__
            raise DataError(
                f"The loader could not read an image ({reason:.200}); a file of the dataset is "
                "truncated or corrupt. Replace or remove it, or open an ImageFolder with "
                "retrofit.io.data_specs.open_data(DIR, transform, skip_bad_images=True), which "
                "names and skips unreadable files."
            ) from error
        yield split_batch(batch)


def dataset_length(data: Any) -> int | None:
    """Number of images when the loader can tell without iterating, else None."""
    dataset = getattr(data, "dataset", data)
    try:
        return len(dataset)
    except TypeError:
        return None
