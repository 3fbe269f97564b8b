"""What every head method returns, and the registry that maps a method name to its file."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from retrofit.config import RetrofitConfig
from retrofit.extraction.streaming import chunk_rows, row_slices
from retrofit.registry import HEADS


def linear_accuracy(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, y: torch.Tensor
) -> float:
    """Accuracy of logits = x @ weight.T + bias, one row chunk at a time (x may be a
    memory-mapped tensor or a streaming.Standardised view: no N×C table is built)."""
    rows = chunk_rows(max(int(x.shape[1]), int(weight.shape[0])))
    correct = sum(
        int((torch.addmm(bias, x[r], weight.T).argmax(dim=1) == y[r]).sum())
        for r in row_slices(len(x), rows)
    )
    return correct / max(1, len(x))


@dataclass
class HeadResult:
    """A fitted head on standardised selected features.

    logits = ((x[:, selected] - mean) / std) @ weight.T + bias
    For quantised heads weight == scale * assignment.
    """

    selected: torch.Tensor  # (n_f,) int64 indices into the D penultimate features, in rank order
    weight: torch.Tensor  # (C, n_f) float32
    bias: torch.Tensor  # (C,) float32
    mean: torch.Tensor  # (n_f,) float32, training-set mean of the selected features
    std: torch.Tensor  # (n_f,) float32, population std, clamped >= 1e-6
    assignment: torch.Tensor | None = None  # (C, n_f) int8 in {-1, 0, 1}; None for dense/sparse
    scale: float = 1.0
    # solver status, objective, bound, gap, time
    stats: dict[str, Any] = field(default_factory=dict)
    # the trained retrofit.fitting.bottleneck.Bottleneck when the method fine-tuned one itself (qsenn rounds)
    bottleneck: torch.nn.Module | None = None


class HeadMethod(Protocol):
    """maps: cached spatial maps (locality, diversity loss); logits: the original model's, for
    config.distill in methods that fine-tune a bottleneck themselves. Methods ignore what they
    do not use. A method that assigns features to classes may also take `prior` (D, C), a
    preference for giving feature j to class c (retrofit.concepts.coverage); `fit_head` passes
    it only to methods whose signature names it, so older plugins keep working."""

    def __call__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        config: RetrofitConfig,
        maps: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
    ) -> HeadResult: ...


@dataclass(frozen=True)
class MethodTraits:
    """What the rest of retrofit needs to know of a method beyond fitting it, so that editing,
    conversion and the model ask the method instead of branching on its name.

    resolve_edits: `fn(imodel, plan, train, time_limit, progress) -> slots whose channel
        changed`, re-solving the head under human edits; None: the head is refitted on the
        edited support (retrofit.solvers.masked_refit).
    refills_dropped: a dropped feature's slot is refilled with a new channel (so dropping one
        does not shrink the model).
    shared_magnitude: the head's non-zeros share one magnitude, kept when it is refitted.
    free_counts: classes may use any number of features (the dense probe).
    learns_attributes: the method learns its own attribute dictionary (no concept features,
        no FLINT attributes under another head).
    relevance_tau: the default tau of the global explanation, whose head reads every feature
        and lists only the relevant ones (None: every used feature is listed).
    """

    resolve_edits: Callable[..., list[int]] | None = None
    refills_dropped: bool = False
    shared_magnitude: bool = False
    free_counts: bool = False
    learns_attributes: bool = False
    relevance_tau: float | None = None


_TRAITS: dict[str, MethodTraits] = {}


def register_head(name: str, **traits: Any) -> Callable[[HeadMethod], HeadMethod]:
    """Register a head-fitting function under `name` (one file per method; retrofit.registry),
    with its MethodTraits given as keywords (a plugin without any gets the defaults)."""
    described = MethodTraits(**traits)
    register = HEADS.register(name)

    def decorate(method: HeadMethod) -> HeadMethod:
        _TRAITS[name] = described
        return register(method)

    return decorate


def unregister_head(name: str) -> None:
    """Remove a registered method (for plugins and tests that register one for a while)."""
    HEADS.unregister(name)
    _TRAITS.pop(name, None)


def method_traits(name: str) -> MethodTraits:
    """The traits of method `name`, importing a built-in method's folder on first use."""
    get_head(name)
    return _TRAITS.get(name, MethodTraits())


def shared_magnitude(weight: torch.Tensor) -> float | None:
    """The one magnitude of a quantised head's non-zeros, None for a continuous head."""
    values = weight[weight != 0].abs()
    if not values.numel():
        return 1.0
    return float(values[0]) if bool((values == values[0]).all()) else None


def get_head(name: str) -> HeadMethod:
    """The method `name`; a built-in one's file is imported on first use."""
    return HEADS.get(name)


def fit_head(
    name: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: RetrofitConfig,
    maps: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> HeadResult:
    """Fit the registered method `name`, with `prior` where the method takes one."""
    method = get_head(name)
    if prior is not None and "prior" in inspect.signature(method).parameters:
        return method(features, labels, config, maps, logits, prior=prior)
    return method(features, labels, config, maps, logits)


def available_heads() -> list[str]:
    """Every method name, built-in or registered, without importing any method file."""
    return HEADS.names()
