"""FeatureSet: the cached penultimate features every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from retrofit.errors import ConfigError


@dataclass
class FeatureSet:
    """Pooled features of N images with their labels, the original logits and optional maps.

    `maps` are the spatial maps before pooling, (N, D, H, W) in float16; for ViTs the patch
    tokens are laid out on their grid the same way, so every consumer sees one shape.
    """

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64
    logits: torch.Tensor | None = None  # (N, C) float32, the original model's outputs
    maps: torch.Tensor | None = None  # (N, D, H, W) float16
    layer: str = ""
    class_names: list[str] | None = None
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_classes(self) -> int:
        if self.logits is not None:
            return int(self.logits.shape[1])
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max().item()) + 1

    def subset(self, index: torch.Tensor) -> FeatureSet:
        """Rows `index` of every per-image tensor."""
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(
            self,
            features=self.features[index],
            labels=self.labels[index],
            logits=None if self.logits is None else self.logits[index],
            maps=None if self.maps is None else self.maps[index],
        )

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
        """Seeded (train, validation) split, as both references use to pick path points."""
        train, val = split_rows(len(self), val_fraction, seed)
        return self.subset(train), self.subset(val)


def split_rows(
    n: int, val_fraction: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, validation) row indices of FeatureSet.split, for data read in chunks."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
    n_val = max(1, int(round(n * val_fraction)))
    if n_val >= n:
        raise ConfigError(f"Cannot split {n} images into train and validation; provide more data.")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    return order[n_val:].sort().values, order[:n_val].sort().values
