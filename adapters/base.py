"""The registry of model families: one file per family, found by `adapter_for(model)`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from retrofit.errors import ConfigError


@dataclass(frozen=True)
class ModelAdapter:
    """What retrofit knows about one model family.

    `matches` recognises a model of the family; `preferred_heads` names its classification
    module(s) when the family has a convention (detection falls back to the execution trace);
    `load` rebuilds a model from its name, weights, hub id or local path (see retrofit.specs).
    `build_kwargs` is the allow-list of architecture arguments an export may pass to `load`,
    each with a check of its value; anything else (e.g. a checkpoint path) needs
    trust_remote_code=True on load.
    `image_transform` builds, from the preprocessing an export records for the family, the
    callable that turns a PIL image into the model's input tensor (see retrofit.preprocessing).
    """

    name: str
    matches: Callable[[nn.Module], bool]
    preferred_heads: Callable[[nn.Module], list[str]] = field(default=lambda model: [])
    load: Callable[..., nn.Module] | None = None
    priority: int = 0
    build_kwargs: Mapping[str, Callable[[Any], bool]] = field(default_factory=dict)
    image_transform: Callable[[Mapping[str, Any]], Callable[[Any], Any]] | None = None


_REGISTRY: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Add a family; a higher priority is tried first (the generic rule has the lowest)."""
    _REGISTRY[adapter.name] = adapter
    return adapter


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The first registered family that recognises `model` (the generic rule always does)."""
    for adapter in sorted(_REGISTRY.values(), key=lambda a: -a.priority):
        if adapter.matches(model):
            return adapter
    raise ConfigError(f"No model family recognises {type(model).__name__}.")


def get_adapter(name: str) -> ModelAdapter:
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown model family {name!r}; known families are {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def available_adapters() -> list[str]:
    return sorted(_REGISTRY)


def module_name(model: nn.Module, target: nn.Module) -> str | None:
    """The dotted name of `target` inside `model`, found by identity."""
    for name, module in model.named_modules():
        if module is target and name:
            return name
    return None
