"""Check metrics registered from outside retrofit: one file per metric, like head methods.

A metric is a function of what `check` already collected (`MetricInputs`: the bottleneck
outputs, both models' logits or top-1 classes, the labels, the model and the loader) that returns a dict of
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from retrofit.errors import ConfigError

if TYPE_CHECKING:
    from retrofit.check.config import CheckConfig
    from retrofit.model.interpretable import InterpretableModel

# result keys the built-in parts of check() write; a registered metric may not take them
BUILT_IN_RESULTS = frozenset(
    {"fidelity", "concept_deletion", "pixel", "metrics", "truth", "consistency", "meta"}
)
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_OPS = (">=", "<=")
LOGIT_CHUNK = 4096  # rows of logits MetricInputs.logit_chunks computes at a time

# the built-in results' thresholds: keyword -> (dotted result key, comparison); a registered
# metric adds its own (register_metric(thresholds=...)), one mechanism for both
BUILT_IN_THRESHOLDS: dict[str, tuple[str, str]] = {
    "min_fidelity": ("fidelity.agreement", ">="),
    "min_accuracy": ("fidelity.accuracy", ">="),
    "max_accuracy_drop": ("fidelity.accuracy_drop", "<="),
    "min_mistake_agreement": ("fidelity.agreement_on_reference_mistakes", ">="),
    "min_concept_deletion_gain": ("concept_deletion.deletion_auc_gain", ">="),
    "min_pixel_deletion_gain": ("pixel.class.*.deletion_auc_gain", ">="),
    "min_diversity": ("metrics.diversity@5", ">="),
    "max_dependence": ("metrics.dependence", "<="),
    "min_truth_precision": ("truth.pair.precision", ">="),
    "min_truth_recall": ("truth.pair.recall", ">="),
    "min_truth_distinct": ("truth.pair.distinct", ">="),
    "min_consistency": ("consistency.interpretable.mean", ">="),
    "max_consistency_flip_rate": ("consistency.interpretable.flip_rate", "<="),
}


class MetricInputs:
    """What one check() call collected, for registered metrics to read (never to change).

    z: (N, F) bottleneck outputs; labels, predicted: (N,); `results` holds the built-in parts
    measured so far. `logits`: (N, C) of the interpretable model, computed from z by its linear
    head when first read (check keeps no (N, C) tensor; for large N read them in pieces with
    `logit_chunks`). `reference_predicted`: (N,) the original model's top-1 class (None without
    a reference). `reference_logits`: (N, C) of the original model, kept only while they fit
    `CheckConfig.reference_logits_budget_mb` (default 256 MB, i.e. 67 k images of 1,000
    classes); otherwise None, with the reason in `reference_logits_note`. `masks` and
    `backgrounds`: what check() was given for the checked images (None when not given).
    """

    def __init__(
        self,
        imodel: InterpretableModel,
        loader: Any,
        reference: nn.Module | None,
        z: torch.Tensor,
        logits: torch.Tensor | None,
        reference_logits: torch.Tensor | None,
        labels: torch.Tensor,
        predicted: torch.Tensor,
        config: CheckConfig,
        results: Mapping[str, Any],
        *,
        reference_predicted: torch.Tensor | None = None,
        reference_logits_note: str | None = None,
        masks: Any = None,
        backgrounds: Any = None,
    ) -> None:
        if reference_predicted is None and reference_logits is not None:
            reference_predicted = reference_logits.argmax(dim=1)
        self.__dict__.update(
            imodel=imodel,
            loader=loader,
            reference=reference,
            z=z,
            _logits=logits,
            reference_logits=reference_logits,
            labels=labels,
            predicted=predicted,
            config=config,
            results=results,
            reference_predicted=reference_predicted,
            reference_logits_note=reference_logits_note,
            masks=masks,
            backgrounds=backgrounds,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"MetricInputs is read-only: {name} cannot be set.")

    @property
    def logits(self) -> torch.Tensor:
        """(N, C) interpretable-model logits, computed once from z on first use."""
        if self.__dict__["_logits"] is None:
            self.__dict__["_logits"] = torch.cat([chunk for _, chunk in self.logit_chunks()])
        return self.__dict__["_logits"]

    def logit_chunks(self, rows: int = LOGIT_CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, (rows, C) logits) over z in order: the logits in bounded memory."""
        given = self.__dict__["_logits"]
        head = self.imodel.head
        for start in range(0, len(self.z), rows):
            if given is not None:
                yield start, given[start : start + rows]
                continue
            piece = self.z[start : start + rows].to(head.weight.device, head.weight.dtype)
            with torch.no_grad():
                yield start, head(piece).float().cpu()


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
    if not _NAME.fullmatch(name) or name in BUILT_IN_RESULTS:
        raise ConfigError(
            f"A check metric needs a lower-case name like 'my_metric' that is not one of the "
            f"built-in results {sorted(BUILT_IN_RESULTS)}; got {name!r}."
        )
    thresholds = dict(thresholds or {})
    taken = {k for m in _REGISTRY.values() if m.name != name for k in m.thresholds}
    for keyword, (key, op) in thresholds.items():
        if keyword in BUILT_IN_THRESHOLDS or keyword in taken:
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
