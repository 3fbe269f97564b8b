"""Shared tiny settings and toy data for the tests (randomly initialised, built locally)."""

from __future__ import annotations

import torch
from torch import nn

# a one-layer ViT/DeiT on 32 px images: 16 patches of 8 px, width 16
TINY_VIT = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
}


def colour_coded_images(
    n: int, size: int, n_classes: int, bright: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the colour channel made brightest (learnable from pooled features).

    Classes >= `bright` (default: all of them, at most 3 channels) stay unbrightened.
    """
    generator = torch.Generator().manual_seed(3)
    labels = torch.arange(n) % n_classes
    images = torch.rand(n, 3, size, size, generator=generator) * 0.5
    for c in range(n_classes if bright is None else bright):
        images[labels == c, c] += 0.5
    return images, labels


class SmallCNN(nn.Module):
    """One strided convolution, mean pooling and a linear head: the cheapest real classifier."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))
