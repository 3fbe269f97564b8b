"""What an export folder holds: its file names, schema version, and the packages it records."""

from __future__ import annotations

import importlib.metadata

import torch

SCHEMA_VERSION = 2  # 2: the "adapter" entries became "bottleneck" (1 is upgraded on read)
MODEL_FILE = "model.safetensors"
BACKBONE_FILE = "backbone.safetensors"
CONFIG_FILE = "retrofit_config.json"
README_FILE = "README.md"
REPORT_FILES = frozenset({"report.html", "report.json"})  # written next to an export by `check`
EXPORT_FILES = frozenset({MODEL_FILE, BACKBONE_FILE, CONFIG_FILE, README_FILE}) | REPORT_FILES
TENSOR_METADATA = {"format": "pt"}
VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "timm",
    "open_clip_torch",
    "mip",
    "safetensors",
    "huggingface_hub",
    "numpy",
)


def dequantise(scale: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """The one expression that turns the stored int8 head back into weights, saving and loading."""
    return scale.float() * assignment.float()


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
