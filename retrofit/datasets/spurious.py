"""A world with a spurious background: the class is the object's shape, and in the spurious
split the background also predicts the class, so a model may learn the shortcut instead.

Each image shows one object (shape = class, random colour, texture, size and place) on one of
`n_classes` backgrounds (the concept world's five, plus tinted copies of their textures). In `"spurious"`
scenes the background is the class's own with probability `correlation`, otherwise another one
drawn uniformly; in `"shuffled"` scenes it is drawn uniformly, independently of the class (the
test condition and the control model's training data). The renderer knows which pixels are the
object, so every image has an exact foreground mask (`mask(i)`), and `aligned` says whether an
image's background is its class's own (the groups of worst-group accuracy).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from retrofit.datasets.synthetic import (
    BACKGROUNDS,
    COLOURS,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    SHAPES,
    TEXTURES,
    _check_int,
    _place,
    _randint,
    _Renderer,
    _uniform,
    checked_index,
    object_row,
)
from retrofit.errors import ConfigError

BACKGROUND_MODES: tuple[str, ...] = ("spurious", "shuffled")
SPLITS: tuple[str, ...] = ("train", "val", "test")
MIN_CLASSES, MAX_CLASSES = 2, len(SHAPES)  # one shape per class


# backgrounds beyond the world's five: a texture of the world recoloured, (tint, name)
TINTED: tuple[tuple[tuple[float, float, float], str], ...] = (
    ((0.70, 0.12, 0.15), "red"),
    ((0.80, 0.40, 0.78), "magenta"),
    ((0.72, 0.72, 0.72), "grey"),
)


def background_names(n: int) -> list[str]:
    """Names of the first n backgrounds: the world's own, then tinted copies of their textures."""
    names = list(BACKGROUNDS)
    for b, (_, tint) in enumerate(TINTED):
        names.append(f"{tint} {BACKGROUNDS[b + 1].replace(' background', '')} background")
    return names[:n]


class SpuriousBackgroundDataset(Dataset):
    """`n_images` one-object scenes, `(image, label)` with float32 CHW images in [0, 1].

    Labels cycle through the classes; `backgrounds[i]` and `aligned[i]` are known up front, the
    pixels and `mask(i)` are rendered on access and are a pure function of (seed, split, index).
    """

    synthetic_world = True  # the tiny CLIP's world (retrofit.concepts.guard)

    def __init__(
        self,
        n_images: int,
        n_classes: int = 8,
        image_size: int = 32,
        seed: int = 0,
        split: str = "train",
        background: str = "spurious",
        correlation: float = 0.9,
        transform: Callable | None = None,
    ) -> None:
        self.n_images = _check_int("n_images", n_images, 0, None)
        self.n_classes = _check_int("n_classes", n_classes, MIN_CLASSES, MAX_CLASSES)
        self.image_size = _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        self.seed = _check_int("seed", seed, -(2**63), 2**63 - 1)
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}.")
        if background not in BACKGROUND_MODES:
            raise ConfigError(
                f"background must be one of {list(BACKGROUND_MODES)}, got {background!r}."
            )
        if not isinstance(correlation, (int, float)) or not 0.0 <= correlation <= 1.0:
            raise ConfigError(f"correlation must be a number in [0, 1], got {correlation!r}.")
        if transform is not None and not callable(transform):
            raise ConfigError(
                f"transform must be callable or None, got {type(transform).__name__}."
            )
        self.split, self.background, self.correlation = split, background, float(correlation)
        self.transform = transform
        self.class_names = [SHAPES[c] for c in range(self.n_classes)]
        self.background_names = background_names(self.n_classes)
        self._renderer = _Renderer(self.image_size, self.seed)
        self.labels = torch.arange(self.n_images, dtype=torch.long) % self.n_classes
        self._scenes: list[tuple[np.ndarray, np.ndarray, int]] = []
        for i in range(self.n_images):
            rng = random.Random(
                f"retrofit-spurious/{self.seed}/{self.n_classes}/{split}/{background}/"
                f"{self.correlation}/{i}"
            )
            self._scenes.append(self._draw(i % self.n_classes, rng))
        self.backgrounds = torch.tensor([s[2] for s in self._scenes], dtype=torch.long)
        self.aligned = self.backgrounds == self.labels

    def _draw(self, label: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray, int]:
        if self.background == "spurious" and rng.random() < self.correlation:
            bg = label
        elif self.background == "spurious":
            bg = (label + 1 + _randint(rng, self.n_classes - 1)) % self.n_classes
        else:
            bg = _randint(rng, self.n_classes)
        r = _uniform(rng, 0.22, 0.32)
        ((cx, cy, r),) = _place(rng, [r])
        colour, pattern = _randint(rng, len(COLOURS)), _randint(rng, len(TEXTURES))
        row = np.array([object_row(rng, label, colour, pattern, (cx, cy, r))], dtype=np.float32)
        texture = bg if bg < len(BACKGROUNDS) else bg - len(BACKGROUNDS) + 1
        image = np.array(
            (texture, rng.random(), rng.random(), rng.random(), rng.random(), 1.0),
            dtype=np.float32,
        )
        return row, image, bg

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return self.n_images

    def _index(self, index: int) -> int:
        return checked_index(index, self.n_images)

    def _render(self, index: int, with_object: bool = True) -> tuple[np.ndarray, np.ndarray]:
        objects, image, bg = self._scenes[self._index(index)]
        img, owner = self._renderer.render(objects if with_object else objects[:0], image)
        if bg >= len(BACKGROUNDS):
            tint = np.asarray(TINTED[bg - len(BACKGROUNDS)][0], dtype=np.float32)[:, None, None]
            grey = img.mean(axis=0, keepdims=True)
            recoloured = np.clip(tint + 0.8 * (grey - grey.mean()), 0.0, 1.0)
            img = np.where(owner[None] >= 0, img, recoloured)
        return np.ascontiguousarray(img, dtype=np.float32), owner >= 0

    def mask(self, index: int) -> torch.Tensor:
        """The object's visible pixels (H x W bool): the foreground."""
        return torch.from_numpy(self._render(index)[1])

    def background_only(self, index: int) -> torch.Tensor:
        """Image `index` without its object (3 x H x W): a clean background to swap in."""
        image = torch.from_numpy(self._render(index, with_object=False)[0])
        return self.transform(image) if self.transform is not None else image

    def masks(self, index: int) -> torch.Tensor:
        """(1, H, W) bool object masks, the shape `retrofit.check(masks=...)` accepts."""
        return self.mask(index)[None]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, _ = self._render(index)
        image = torch.from_numpy(img)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[self._index(index)])
