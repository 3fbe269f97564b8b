"""Earlier layers whose globally pooled outputs are appended to the penultimate features.

FLINT's attributes may read more than the penultimate layer (`flint_layers=[...]`, ALGORITHMS
§9.1): each named module's output is pooled per image to (N, C), the way the feature layer is
pooled (pool_features: mean over H, W of (N, C, H, W), mean over the tokens of
(N, T, C), (N, C) as it is), and concatenated after the penultimate features in the order given.
This module checks the names against a probe forward pass before anything is extracted.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from retrofit.errors import ConfigError, LayerNotFoundError

MAX_POOLED_LAYERS = 64
POOLABLE_DIMS = (2, 3, 4)


def pool_features(value: torch.Tensor) -> torch.Tensor:
    """(N, D) pooled features from a 2-D, spatial (N, D, H, W) or token (N, T, D) tensor."""
    if value.ndim == 2:
        return value
    if value.ndim == 4:
        return value.mean(dim=(2, 3))
    if value.ndim == 3:
        return value.mean(dim=1)
    return value.flatten(1)


def check_layer_names(names: Any, setting: str = "flint_layers") -> tuple[str, ...]:
    """The names as a tuple of distinct, non-empty strings, else a ConfigError."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(
            f"{setting} must be a list of module names, e.g. ['layer2', 'layer3'], got "
            f"{type(names).__name__} {names!r:.80}."
        )
    if len(names) > MAX_POOLED_LAYERS:
        raise ConfigError(f"{setting} names {len(names)} layers; at most {MAX_POOLED_LAYERS}.")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{setting} entries must be non-empty module names, got {name!r}.")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ConfigError(
            f"{setting} names {repeated} more than once; each layer's pooled features would be "
            "read twice. List every layer once."
        )
    return tuple(names)


def pooled_width(shape: tuple[int, ...] | None) -> int | None:
    """The per-image width after pooling a tensor of `shape`, or None when it cannot be pooled."""
    if shape is None or len(shape) not in POOLABLE_DIMS:
        return None
    return int(shape[2] if len(shape) == 3 else shape[1])


def pool_output(name: str, value: Any, batch: int | None = None) -> torch.Tensor:
    """(N, C) from a module's output (its first element when a tuple), or LayerNotFoundError;
    `batch`, when known, is the N the output must start with."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
    if (
        shape is None
        or len(shape) not in POOLABLE_DIMS
        or (batch is not None and shape[0] != batch)
        or not value.is_floating_point()
    ):
        raise _unpoolable(name, value, shape)
    return pool_features(value)


def _unpoolable(name: str, value: Any, shape: tuple[int, ...] | None) -> LayerNotFoundError:
    got = f"shape {shape}" if shape is not None else type(value).__name__
    return LayerNotFoundError(
        f"flint_layers: the output of {name!r} ({got}) cannot be pooled per image. A layer must "
        "output float features per image: (N, C, H, W) maps, (N, T, C) tokens or (N, C) vectors, "
        "with the batch first. Pick another module (a block or activation rather than a "
        "reshape or attention internals)."
    )


def resolve_pooled_layers(
    model: nn.Module,
    names: Sequence[str],
    events: dict[str, Any],
    batch: int,
    taken: Sequence[str] = (),
) -> tuple[str, ...]:
    """Check that every name is a module of `model` that ran in the traced forward pass and
    whose output can be pooled; `events` maps names to retrofit.extraction.hooks trace events, `taken`
    names the module whose output already is the penultimate features (feature_layer)."""
    names = check_layer_names(names)
    modules = [n for n, _ in model.named_modules() if n]
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, modules, n=5, cutoff=0.5)
            hint = f" Did you mean {close}?" if close else ""
            raise LayerNotFoundError(
                f"flint_layers: {name!r} is not a module of {type(model).__name__}.{hint} List "
                "the names with [name for name, _ in model.named_modules()]; for example "
                f"{_sample(modules)}."
            )
        if name in taken:
            raise ConfigError(
                f"flint_layers: {name!r} is the feature_layer the penultimate features already "
                "come from; list only other (earlier) layers."
            )
        event = events.get(name)
        if event is None or event.end < 0:
            raise LayerNotFoundError(
                f"flint_layers: {name!r} exists but was not called in the forward pass, so it "
                "has no output to pool."
            )
        shape = event.output_shape
        if pooled_width(shape) is None or shape[0] != batch:
            raise _unpoolable(name, None, shape)
        if event.calls > 1:
            raise LayerNotFoundError(
                f"flint_layers: {name!r} runs {event.calls} times in one forward pass (a shared "
                "module, such as the ReLU of a torchvision ResNet block), so it has no single "
                "output to pool. Name the block that contains it instead."
            )
    return names


def _sample(modules: list[str], count: int = 8) -> str:
    """A few module names spread over the model, for error messages."""
    if len(modules) <= count:
        return ", ".join(modules) or "(none)"
    step = len(modules) / count
    return ", ".join(modules[int(i * step)] for i in range(count)) + ", ..."


def broadcast_pooled(maps: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
    """Maps (N, D, H, W) followed by each pooled (N, C) layer constant over the positions.

    Their spatial mean is then exactly the concatenated pooled features, so Φ applied at every
    position reads the penultimate features there and the earlier layers' global context.
    """
    if not pooled:
        return maps
    n, _, h, w = maps.shape
    extra = torch.cat(pooled, dim=1).to(maps.dtype)
    return torch.cat([maps, extra[:, :, None, None].expand(n, extra.shape[1], h, w)], dim=1)
