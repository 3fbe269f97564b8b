"""The demo classifier: a small CNN trained on the synthetic concept world, shipped with its
weights so examples, tests and the CLI demo have a real model to convert without downloads.

Its last layer is `fc = nn.Linear(feature_dim, n_classes)` after global average pooling, so the
penultimate features are `fc`'s input. Inputs are float32 CHW images in [0, 1] as
`SyntheticConceptDataset` yields them (no further normalisation).
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from retrofit.errors import ConfigError, ModelError
from retrofit.io.weights import load_matching_state

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "demo_cnn.safetensors"
SETTINGS_NAME = "demo_cnn.json"
REGENERATE_COMMAND = "python scripts/train_demo_classifier.py"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DemoCNN(nn.Module):
    """Six 3x3 conv blocks (BatchNorm + ReLU) over four scales, global average pooling, `fc`.

    One thin block at full resolution sees the fine textures; two blocks at each of the two
    coarsest scales give the depth that shape recognition needs, where convolutions are cheap.
    """

    def __init__(self, n_classes: int = 50, width: int = 24, feature_dim: int = 160) -> None:
        super().__init__()
        for name, value in (
            ("n_classes", n_classes),
            ("width", width),
            ("feature_dim", feature_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        self.n_classes, self.width, self.feature_dim = n_classes, width, feature_dim
        w = width
        self.features = nn.Sequential(
            _block(3, w),
            nn.MaxPool2d(2),
            _block(w, 2 * w),
            nn.MaxPool2d(2),
            _block(2 * w, 4 * w),
            _block(4 * w, 4 * w),
            nn.MaxPool2d(2),
            _block(4 * w, 8 * w),
            _block(8 * w, feature_dim),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _weights_dir() -> Path:
    return Path(str(resources.files("retrofit") / "weights"))


def demo_world_settings() -> dict[str, Any]:
    """The world the demo model was trained on (n_classes, image_size, seed), its architecture,
    measured test accuracy and the command that regenerates it."""
    path = _weights_dir() / SETTINGS_NAME
    if not path.is_file():
        raise ModelError(
            f"demo classifier settings not found at {path}; regenerate them with "
            f"`{REGENERATE_COMMAND}` from the repository root."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_demo_classifier(device: str | torch.device | None = None) -> DemoCNN:
    """The trained demo CNN in eval mode, weights read with safetensors (nothing unpickled)."""
    settings = demo_world_settings()
    arch = settings["architecture"]
    model = DemoCNN(
        n_classes=settings["n_classes"], width=arch["width"], feature_dim=arch["feature_dim"]
    )
    path = _weights_dir() / WEIGHTS_NAME
    if not path.is_file():
        raise ModelError(
            f"demo classifier weights not found at {path}; regenerate them with "
            f"`{REGENERATE_COMMAND}` from the repository root."
        )
    load_matching_state(
        model,
        path,
        f"{path} does not match the DemoCNN architecture in {SETTINGS_NAME}; regenerate "
        f"both with `{REGENERATE_COMMAND}`.",
    )
    logger.debug("loaded demo classifier from %s", path)
    return model.to(device).eval() if device is not None else model.eval()
