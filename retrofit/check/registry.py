"""Check metrics registered from outside retrofit: one file per metric, like head methods.

A metric is a function of what `check` already collected (`MetricInputs`: the bottleneck
outputs, both models' logits, the labels, the model and the loader) that returns a dict of
JSON-able numbers. Registering it is all a new metric needs: `check` runs it and stores its
dict under its name in the report's results (and report.json), its thresholds become valid
`CheckConfig.thresholds` keys, and the HTML report gets a section for it (a table of its
numbers, or the metric's own `render`).

    @register_metric("margin", title="Logit margin", thresholds={"min_margin": ("mean", ">=")})
    def margin(inputs: MetricInputs) -> dict[str, float]:
        top2 = inputs.logits.topk(2, dim=1).values
        return {"mean": float((top2[:, 0] - top2[:, 1]).mean())}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from retrofit.errors import ConfigError

if TYPE_CHECKING:
    from retrofit.check.config import CheckConfig
    from retrofit.model import InterpretableModel

# result keys the built-in parts of check() write; a registered metric may not take them
BUILT_IN_RESULTS = frozenset(
    {"fidelity", "concept_deletion", "pixel", "metrics", "truth", "consistency", "meta"}
)
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_OPS = (">=", "<=")


@dataclass(frozen=True)
class MetricInputs:
    """What one check() call collected, for registered metrics to read (never to change).

    z: (N, F) bottleneck outputs; logits / reference_logits: (N, C) of the interpretable and
    the original model (None without a reference); labels, predicted: (N,); `results` holds
    the built-in parts measured so far.
    """

    imodel: InterpretableModel
    loader: Any
    reference: nn.Module | None
    z: torch.Tensor
    logits: torch.Tensor
    reference_logits: torch.Tensor | None
    labels: torch.Tensor
    predicted: torch.Tensor
    config: CheckConfig
    results: Mapping[str, Any]


MetricFunction = Callable[[MetricInputs], Mapping[str, Any]]


@dataclass(frozen=True)
class CheckMetric:
    """A registered metric: its results key, function, HTML title, thresholds and rendering.

    thresholds: keyword -> (key inside the metric's dict, ">=" or "<="); meanings: key -> one
    line for the HTML table; render: results dict -> HTML body (default: the table).
    """

    name: str
    compute: MetricFunction
    title: str
    thresholds: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    meanings: Mapping[str, str] = field(default_factory=dict)
    render: Callable[[Mapping[str, Any]], str] | None = None


_REGISTRY: dict[str, CheckMetric] = {}


def register_metric(
    name: str,
    *,
    title: str | None = None,
    thresholds: Mapping[str, tuple[str, str]] | None = None,
    meanings: Mapping[str, str] | None = None,
    render: Callable[[Mapping[str, Any]], str] | None = None,
) -> Callable[[MetricFunction], MetricFunction]:
    """Register `fn(inputs) -> dict` as the check metric `name` (see the module docstring)."""
    from retrofit.check.report import THRESHOLDS

    if not _NAME.fullmatch(name) or name in BUILT_IN_RESULTS:
        raise ConfigError(
            f"A check metric needs a lower-case name like 'my_metric' that is not one of the "
            f"built-in results {sorted(BUILT_IN_RESULTS)}; got {name!r}."
        )
    thresholds = dict(thresholds or {})
    taken = {k for m in _REGISTRY.values() if m.name != name for k in m.thresholds}
    for keyword, (key, op) in thresholds.items():
        if keyword in THRESHOLDS or keyword in taken:
            raise ConfigError(f"The threshold {keyword!r} is already defined; pick another name.")
        if op not in _OPS or not isinstance(key, str) or not key:
            raise ConfigError(
                f"Threshold {keyword!r} needs (key in the metric's results, one of {_OPS}), got "
                f"{(key, op)!r}."
            )

    def decorate(fn: MetricFunction) -> MetricFunction:
        _REGISTRY[name] = CheckMetric(
            name,
            fn,
            title or name.replace("_", " ").capitalize(),
            thresholds,
            dict(meanings or {}),
            render,
        )
        return fn

    return decorate


def unregister_metric(name: str) -> None:
    """Remove a registered metric (for plugins and tests that register one for a while)."""
    _REGISTRY.pop(name, None)


def available_metrics() -> list[str]:
    return sorted(_REGISTRY)


def registered_metrics(names: Any = None) -> list[CheckMetric]:
    """The metrics to run: all registered (names None) or the named ones, in name order."""
    if names is None:
        return [_REGISTRY[n] for n in sorted(_REGISTRY)]
    unknown = sorted(set(names) - set(_REGISTRY))
    if unknown:
        raise ConfigError(
            f"Unknown check metrics {unknown}; registered ones are {available_metrics()} "
            "(add one with retrofit.check.register_metric)."
        )
    return [_REGISTRY[n] for n in sorted(set(names))]


def metric_thresholds() -> dict[str, tuple[str, str]]:
    """Threshold keyword -> (dotted results path, op) of every registered metric."""
    return {
        keyword: (f"{metric.name}.{key}", op)
        for metric in _REGISTRY.values()
        for keyword, (key, op) in metric.thresholds.items()
    }


def run_metrics(inputs: MetricInputs, timings: dict[str, float]) -> dict[str, Any]:
    """Each selected metric's dict under its name; one that fails names itself in the error."""
    import time

    out: dict[str, Any] = {}
    for metric in registered_metrics(inputs.config.metrics):
        start = time.perf_counter()
        value = metric.compute(inputs)
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"The check metric {metric.name!r} returned {type(value).__name__}; a metric "
                "returns a dict of numbers (or lists, nested dicts)."
            )
        out[metric.name] = dict(value)
        timings[f"metric.{metric.name}"] = time.perf_counter() - start
    return out
