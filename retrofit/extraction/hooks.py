"""Find the penultimate features of any classifier and capture them (and the maps) with hooks.

Detection runs the model once on a probe batch with hooks on every module and reads the
execution trace: the classification heads are the last modules mapping to C outputs (a Linear,
or a 1x1 Conv2d as in SqueezeNet; several when a model has two heads, as distilled DeiT); the
pooled features are their inputs; the maps are the output of the last module before the heads
that still has a spatial grid (or tokens) of the feature width.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from retrofit.errors import LayerNotFoundError, ModelError
from retrofit.extraction.outputs import logits_of
from retrofit.extraction.pooled_layers import (
    broadcast_pooled,
    pool_features,
    pool_output,
    resolve_pooled_layers,
)

MAX_PREFIX_TOKENS = 4


@dataclass(frozen=True)
class LayerSpec:
    """Where the features come from: head inputs, or the output (or input) of a named module."""

    heads: tuple[str, ...] = ()
    module: str | None = None
    use_input: bool = False
    maps_module: str | None = None
    maps_layout: str | None = None  # "nchw", "nhwc", "tokens" or "head_input"
    # earlier modules whose pooled outputs follow the features (FLINT's flint_layers)
    pooled_layers: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        if self.heads:
            return "+".join(f"{h}:input" for h in self.heads)
        return f"{self.module}:input" if self.use_input else str(self.module)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "heads": list(self.heads),
            "module": self.module,
            "use_input": self.use_input,
            "maps_module": self.maps_module,
            "maps_layout": self.maps_layout,
        }
        if self.pooled_layers:  # only then: the cache keys of every other spec stay as they were
            data["pooled_layers"] = list(self.pooled_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        return cls(
            heads=tuple(data.get("heads", ())),
            module=data.get("module"),
            use_input=bool(data.get("use_input", False)),
            maps_module=data.get("maps_module"),
            maps_layout=data.get("maps_layout"),
            pooled_layers=tuple(data.get("pooled_layers", ())),
        )


@dataclass
class _Event:
    name: str
    start: int
    end: int = -1
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    module: nn.Module | None = field(default=None, repr=False)
    calls: int = 1  # how often the module ran in the pass (a shared ReLU runs several times)


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def trace_modules(model: nn.Module, images: torch.Tensor) -> tuple[list[_Event], torch.Tensor]:
    """Run `model` once and record, per module call, when it started and ended and its shapes."""
    events: dict[str, _Event] = {}
    clock = iter(range(10**9))
    handles = []

    def pre_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            calls = events[name].calls + 1 if name in events else 1
            events[name] = _Event(
                name, next(clock), input_shape=_shape(args), module=module, calls=calls
            )

        return hook

    def post_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            event = events[name]
            event.end = next(clock)
            event.output_shape = _shape(output)

        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook(name)))
    try:
        with torch.no_grad():
            logits = logits_of(model(images))
    finally:
        for handle in handles:
            handle.remove()
    return sorted(events.values(), key=lambda e: e.start), logits


def _is_head(event: _Event, num_classes: int) -> bool:
    module = event.module
    if isinstance(module, nn.Linear):
        return module.out_features == num_classes
    if isinstance(module, nn.Conv2d):
        return module.out_channels == num_classes and tuple(module.kernel_size) == (1, 1)
    return False


def _has_parameters(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters(recurse=False))


def describe_candidates(model: nn.Module, limit: int = 12) -> str:
    """The last Linear/Conv modules of a model with their widths, for error messages."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            rows.append(f"{name} (Linear {module.in_features}->{module.out_features})")
        elif isinstance(module, nn.Conv2d):
            rows.append(
                f"{name} (Conv2d {module.in_channels}->{module.out_channels}, k={module.kernel_size})"
            )
    return ", ".join(rows[-limit:]) or "none"


def _find_heads(
    events: list[_Event], num_classes: int, model: nn.Module, preferred: list[str]
) -> list[_Event]:
    executed = {e.name: e for e in events if e.end >= 0}
    named = [executed[n] for n in preferred if n in executed and _is_head(executed[n], num_classes)]
    if named:
        return named
    heads = [e for e in events if e.end >= 0 and _is_head(e, num_classes)]
    if not heads:
        raise LayerNotFoundError(
            f"No classification head with {num_classes} outputs was found (a Linear or 1x1 Conv2d "
            f"mapping to the number of classes). Pass feature_layer='module.name' (its output is "
            f"used; 'module.name:input' uses its input). Candidates: {describe_candidates(model)}."
        )
    last = heads[-1]
    head_names = {h.name for h in heads}
    barrier = max(
        (
            e.end
            for e in events
            if e.name not in head_names and _has_parameters(e.module) and 0 <= e.end < last.start
        ),
        default=-1,
    )
    return [
        h
        for h in heads
        if h.start > barrier and h.input_shape and h.input_shape[1:] == last.input_shape[1:]
    ]


def _token_grid(tokens: int) -> int | None:
    side = math.isqrt(tokens)
    return side if side > 1 and tokens - side * side <= MAX_PREFIX_TOKENS else None


def _map_layout(shape: tuple[int, ...] | None, dim: int) -> str | None:
    if shape is None:
        return None
    if len(shape) == 4 and shape[1] == dim and shape[2] * shape[3] > 1:
        return "nchw"
    if len(shape) == 4 and shape[3] == dim and shape[1] * shape[2] > 1:
        return "nhwc"
    if len(shape) == 3 and shape[2] == dim and _token_grid(shape[1]) is not None:
        return "tokens"
    return None


def _find_maps(
    events: list[_Event], before: int, dim: int, exclude: set[str]
) -> tuple[str | None, str | None]:
    best: _Event | None = None
    for event in events:
        if event.name in exclude or not 0 <= event.end < before:
            continue
        if _map_layout(event.output_shape, dim) and (best is None or event.end > best.end):
            best = event
    if best is None:
        return None, None
    return best.name, _map_layout(best.output_shape, dim)


def _resolve_override(model: nn.Module, feature_layer: str) -> tuple[str, bool]:
    name, _, suffix = feature_layer.partition(":")
    if suffix not in ("", "input", "output"):
        raise LayerNotFoundError(
            f"feature_layer suffix must be ':input' or ':output', got {feature_layer!r}."
        )
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise LayerNotFoundError(
            f"feature_layer={name!r} is not a module of {type(model).__name__}.{hint} "
            f"Classifier-like candidates: {describe_candidates(model)}."
        )
    return name, suffix == "input"


def detect_layers(
    model: nn.Module,
    images: torch.Tensor,
    feature_layer: str | None = None,
    preferred_heads: list[str] | None = None,
    pooled_layers: list[str] | tuple[str, ...] | None = None,
) -> tuple[LayerSpec, torch.Tensor]:
    """Work out the LayerSpec of `model` from one probe batch; returns it with the probe logits.

    `pooled_layers` (FLINT's flint_layers) are checked on the same pass and kept in the spec.
    """
    spec, logits, events = _detect(model, images, feature_layer, preferred_heads)
    if not pooled_layers:
        return spec, logits

    taken = (spec.module,) if spec.module and not spec.use_input else ()
    names = resolve_pooled_layers(model, pooled_layers, events, images.shape[0], taken)
    return replace(spec, pooled_layers=names), logits


def _detect(
    model: nn.Module,
    images: torch.Tensor,
    feature_layer: str | None,
    preferred_heads: list[str] | None,
) -> tuple[LayerSpec, torch.Tensor, dict[str, _Event]]:
    override = _resolve_override(model, feature_layer) if feature_layer else None
    events, logits = trace_modules(model, images)
    if logits.ndim != 2:
        raise ModelError(
            f"The model's logits must have shape (batch, classes); got {tuple(logits.shape)}."
        )
    by_name = {e.name: e for e in events}
    if override is not None:
        name, use_input = override
        event = by_name.get(name)
        if event is None or event.end < 0:
            raise LayerNotFoundError(
                f"feature_layer={name!r} exists but was not called in the forward pass."
            )
        shape = event.input_shape if use_input else event.output_shape
        if shape is None:
            raise LayerNotFoundError(f"feature_layer={feature_layer!r} does not produce a tensor.")
        if len(shape) == 4 and shape[2] * shape[3] > 1:
            layout = "head_input" if use_input else "nchw"
            return (
                LayerSpec(module=name, use_input=use_input, maps_module=name, maps_layout=layout),
                logits,
                by_name,
            )
        if len(shape) == 3 and not use_input and _token_grid(shape[1]) is not None:
            return LayerSpec(module=name, maps_module=name, maps_layout="tokens"), logits, by_name
        return LayerSpec(module=name, use_input=use_input), logits, by_name
    heads = _find_heads(events, logits.shape[1], model, preferred_heads or [])
    head_names = tuple(h.name for h in heads)
    if len(heads) > 1:
        return LayerSpec(heads=head_names), logits, by_name
    head = heads[0]
    in_shape = head.input_shape or ()
    if len(in_shape) == 4:
        return (
            LayerSpec(heads=head_names, maps_module=head.name, maps_layout="head_input"),
            logits,
            by_name,
        )
    maps_module, layout = _find_maps(events, head.start, in_shape[-1], set(head_names))
    return LayerSpec(heads=head_names, maps_module=maps_module, maps_layout=layout), logits, by_name


def maps_to_grid(value: torch.Tensor, layout: str) -> torch.Tensor:
    """Spatial maps in one shape, (N, D, H, W), whatever layout the layer produced."""
    if layout in ("nchw", "head_input"):
        return value
    if layout == "nhwc":
        return value.permute(0, 3, 1, 2)
    side = _token_grid(value.shape[1])
    if side is None:
        raise ModelError(f"Cannot lay {value.shape[1]} tokens on a square grid.")
    grid = value[:, value.shape[1] - side * side :, :]
    return grid.transpose(1, 2).reshape(value.shape[0], value.shape[2], side, side)


class FeatureCapture:
    """Hooks that capture the pooled features (and optionally the maps) during a forward pass."""

    def __init__(self, model: nn.Module, spec: LayerSpec, with_maps: bool = False) -> None:
        self.model = model
        self.spec = spec
        self.with_maps = with_maps and spec.maps_module is not None
        self.parts: dict[str, torch.Tensor] = {}
        # pooled at once: a later in-place op (ReLU(inplace=True)) would change a kept output
        self.pooled: dict[str, torch.Tensor] = {}
        self.grid: torch.Tensor | None = None

    @property
    def maps(self) -> torch.Tensor | None:
        """The (N, D, H, W) maps of the last forward pass; with pooled layers, followed by their
        pooled features constant over the positions (so those channels average to them too)."""
        if self.grid is None or not self.spec.pooled_layers:
            return self.grid

        return broadcast_pooled(self.grid, self._pooled_parts())

    def _pooled_parts(self) -> list[torch.Tensor]:
        missing = [n for n in self.spec.pooled_layers if n not in self.pooled]
        if missing:
            raise ModelError(
                f"The forward pass did not reach the flint_layers {missing}; the model's forward "
                "may branch."
            )
        return [self.pooled[n] for n in self.spec.pooled_layers]

    def _modules(self) -> dict[str, nn.Module]:
        return dict(self.model.named_modules())

    @contextmanager
    def attached(self) -> Iterator[FeatureCapture]:
        modules = self._modules()
        handles = []

        def grab_input(name: str):
            def hook(module: nn.Module, args: tuple) -> None:
                self.parts[name] = args[0]

            return hook

        def grab_output(name: str):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                self.parts[name] = output[0] if isinstance(output, (tuple, list)) else output

            return hook

        def grab_maps(module: nn.Module, args: tuple, output: Any) -> None:
            value = args[0] if self.spec.maps_layout == "head_input" else output
            value = value[0] if isinstance(value, (tuple, list)) else value
            self.grid = maps_to_grid(value, self.spec.maps_layout or "nchw")

        def grab_pooled(name: str):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:

                batch = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else None
                self.pooled[name] = pool_output(name, output, batch)

            return hook

        try:
            if self.spec.heads:
                for name in self.spec.heads:
                    handles.append(modules[name].register_forward_pre_hook(grab_input(name)))
            elif self.spec.use_input:
                handles.append(
                    modules[self.spec.module].register_forward_pre_hook(
                        grab_input(self.spec.module)
                    )
                )
            else:
                handles.append(
                    modules[self.spec.module].register_forward_hook(grab_output(self.spec.module))
                )
            for name in self.spec.pooled_layers:
                handles.append(modules[name].register_forward_hook(grab_pooled(name)))
            if self.with_maps:
                module = modules[self.spec.maps_module]
                if self.spec.maps_layout == "head_input":
                    handles.append(
                        module.register_forward_pre_hook(lambda m, a: grab_maps(m, a, None))
                    )
                else:
                    handles.append(module.register_forward_hook(grab_maps))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def features(self) -> torch.Tensor:
        """The pooled (N, D) features of the last forward pass."""
        names = self.spec.heads or (self.spec.module,)
        missing = [n for n in names if n not in self.parts]
        if missing:
            raise ModelError(
                f"The forward pass did not reach {missing}; the model's forward may branch."
            )
        pooled = [pool_features(self.parts[n]) for n in names]
        if self.spec.pooled_layers:
            pooled += self._pooled_parts()
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)

    def clear(self) -> None:
        self.parts.clear()
        self.pooled.clear()
        self.grid = None
