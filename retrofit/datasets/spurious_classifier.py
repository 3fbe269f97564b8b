"""Two small CNNs trained on the spurious-background world, shipped with their weights so tests
and benchmarks have a model that really relies on the background, and a control that does not.

`"spurious"` was trained on backgrounds that predict the class (correlation 0.9); `"control"`
on shuffled backgrounds, so only the object's shape predicts the class. Both are `DemoCNN`s
on float32 CHW images in [0, 1] (no normalisation).
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from retrofit.datasets.demo import DemoCNN
from retrofit.errors import ConfigError, ModelError
from retrofit.io.weights import load_matching_state

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("spurious", "control")
SETTINGS_NAME = "spurious_cnn.json"
REGENERATE_COMMAND = "python scripts/train_spurious_classifier.py"


def weights_name(kind: str) -> str:
    return f"spurious_cnn_{kind}.safetensors"


def _weights_dir() -> Path:
    return Path(str(resources.files("retrofit") / "weights"))


def spurious_world_settings() -> dict[str, Any]:
    """The world both models were trained on, their architecture and measured accuracies."""
    path = _weights_dir() / SETTINGS_NAME
    if not path.is_file():
        raise ModelError(
            f"spurious-background classifier settings not found at {path}; regenerate them with "
            f"`{REGENERATE_COMMAND}` from the repository root."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_spurious_classifier(
    kind: str = "spurious", device: str | torch.device | None = None
) -> DemoCNN:
    """The trained `"spurious"` (background-relying) or `"control"` CNN in eval mode."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {list(KINDS)}, got {kind!r}.")
    settings = spurious_world_settings()
    arch = settings["architecture"]
    model = DemoCNN(
        n_classes=settings["n_classes"], width=arch["width"], feature_dim=arch["feature_dim"]
    )
    path = _weights_dir() / weights_name(kind)
    if not path.is_file():
        raise ModelError(
            f"spurious-background classifier weights not found at {path}; regenerate them with "
            f"`{REGENERATE_COMMAND}` from the repository root."
        )
    load_matching_state(
        model,
        path,
        f"{path} does not match the DemoCNN architecture in {SETTINGS_NAME}; regenerate both "
        f"with `{REGENERATE_COMMAND}`.",
    )
    logger.debug("loaded the %s spurious-background classifier from %s", kind, path)
    return model.to(device).eval() if device is not None else model.eval()
