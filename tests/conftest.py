"""Shared fixtures: tiny real models and loaders built locally (no downloads)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 5

# The tests use small tensors, for which one thread is fastest and least sensitive to load.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_resnet() -> torch.nn.Module:
    return torchvision.models.resnet18(num_classes=NUM_CLASSES).eval()


@pytest.fixture
def image_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(24, 3, 64, 64, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (24,), generator=generator)
    return images, labels


@pytest.fixture
def loader(image_data: tuple[torch.Tensor, torch.Tensor]) -> DataLoader:
    return DataLoader(TensorDataset(*image_data), batch_size=8)
