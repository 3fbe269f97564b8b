"""Which layers INV explains, and their activations and class gradients in one pass.

The default layers come from the execution trace: among the modules whose output is a spatial
grid (N, K, H, W) or a square token grid (N, T, D), the children of one parent that share a
type, are the most numerous and hold at least half the parameters of the heaviest such group
are the network's stages (DemoCNN's conv blocks, a ResNet's
layer1..4, a ViT's encoder blocks); the last few of them are explained.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from retrofit.errors import LayerNotFoundError
from retrofit.extraction.hooks import _map_layout, _resolve_override, maps_to_grid, trace_modules
from retrofit.extraction.outputs import logits_of

DEFAULT_N_LAYERS = 3


def spatial_layout(shape: tuple[int, ...] | None) -> str | None:
    """ "nchw" or "tokens" when a module's output has a spatial grid, else None."""
    if shape is None or len(shape) not in (3, 4):
        return None
    return _map_layout(shape, shape[1] if len(shape) == 4 else shape[2])


def _parameter_count(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def spatial_layers(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(name, layout) of the model's stages in execution order (see the module docstring)."""
    events, _ = trace_modules(model, probe)
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for event in events:
        layout = spatial_layout(event.output_shape)
        if event.end < 0 or layout is None:
            continue
        parent = event.name.rpartition(".")[0]
        groups[(parent, type(event.module).__name__)].append((event, layout))
    scored = [
        (sum(_parameter_count(e.module) for e, _ in members), members[-1][0].end, members)
        for members in groups.values()
    ]
    scored = [s for s in scored if s[0] > 0]
    if not scored:
        raise LayerNotFoundError(
            f"{type(model).__name__} has no layer with a spatial grid (N, C, H, W) or a square "
            "token grid (N, T, D) to cluster; INV needs convolutional maps or ViT tokens."
        )
    heaviest = max(params for params, _, _ in scored)
    _, _, members = max(
        (s for s in scored if s[0] >= heaviest / 2), key=lambda s: (len(s[2]), s[0], s[1])
    )
    return [(e.name, layout) for e, layout in members]


def resolve_layers(
    model: nn.Module, probe: torch.Tensor, layers: Sequence[str] | None, n_layers: int
) -> list[tuple[str, str]]:
    """(name, layout) of the requested layers, or of the last `n_layers` stages by default."""
    if layers is None:
        return spatial_layers(model, probe)[-n_layers:]
    if isinstance(layers, str):
        layers = [layers]
    names = []
    for layer in layers:
        try:
            name, _ = _resolve_override(model, layer)
        except LayerNotFoundError as error:
            raise LayerNotFoundError(f"Cluster-map layer {layer!r}: {error}") from error
        names.append(name)
    events, _ = trace_modules(model, probe)
    by_name = {e.name: e for e in events if e.end >= 0}
    resolved = []
    for name in names:
        if name not in by_name:
            raise LayerNotFoundError(
                f"Layer {name!r} exists but is not called in the forward pass."
            )
        layout = spatial_layout(by_name[name].output_shape)
        if layout is None:
            raise LayerNotFoundError(
                f"Layer {name!r} outputs shape {by_name[name].output_shape}, which has no spatial "
                "grid (N, C, H, W with H*W > 1, or N, T, D tokens on a square grid); choose a "
                "convolutional stage or a transformer block."
            )
        resolved.append((name, layout))
    return sorted(resolved, key=lambda item: list(by_name).index(item[0]))


@contextmanager
def _capturing(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def grab(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            captured[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    for name in names:
        handles.append(modules[name].register_forward_hook(grab(name)))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def activations_and_gradients(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[tuple[str, str]],
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Logits, and per layer the (N, K, H, W) activations and gradients of the target logit
    (the predicted class when `targets` is None), from one forward and one backward pass."""
    with torch.enable_grad(), _capturing(model, [name for name, _ in layers]) as captured:
        logits = logits_of(model(images))
        chosen = logits.argmax(dim=1) if targets is None else targets.to(logits.device)
        values = [captured[name] for name, _ in layers]
        gradients = torch.autograd.grad(
            logits.gather(1, chosen[:, None]).sum(), values, allow_unused=True
        )
    out = {}
    for (name, layout), value, gradient in zip(layers, values, gradients):
        if gradient is None:
            gradient = torch.zeros_like(value)
        out[name] = (
            maps_to_grid(value.detach(), layout).float(),
            maps_to_grid(gradient.detach(), layout).float(),
        )
    return logits.detach(), out
