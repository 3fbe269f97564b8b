"""Model families retrofit knows, one file each (shipped as `retrofit.adapters`)."""

from retrofit.adapters import bundled, generic, open_clip, timm, torchvision, transformers
from retrofit.adapters.base import (
    ModelAdapter,
    adapter_for,
    available_adapters,
    get_adapter,
    register_adapter,
    spec_families,
    unregister_adapter,
)

__all__ = [
    "ModelAdapter",
    "adapter_for",
    "available_adapters",
    "bundled",
    "generic",
    "get_adapter",
    "open_clip",
    "register_adapter",
    "spec_families",
    "timm",
    "torchvision",
    "transformers",
    "unregister_adapter",
]
