"""The result of `retrofit.check`: numbers, pass/fail thresholds, JSON and a self-contained HTML file.

A Report holds plain JSON-able results (what `to_json` writes) and, separately, the tensors the
HTML report draws (images, heatmaps, the head), which are never written to JSON.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrofit.check.registry import BUILT_IN_THRESHOLDS as THRESHOLDS
from retrofit.errors import ConfigError, RetrofitError
from retrofit.io.files import atomic_write_bytes

# threshold keyword -> (dotted metric path, comparison); "*" expands to every method measured
_COMPARE: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


class CheckFailedError(RetrofitError):
    """The interpretable model missed one or more of the thresholds given to `check`."""

    def __init__(self, failures: list[ThresholdResult]) -> None:
        self.failures = list(failures)
        lines = "; ".join(f.describe() for f in self.failures)
        super().__init__(
            f"{len(self.failures)} check threshold(s) failed: {lines}. Improve the model (more "
            "features, finetune='bottleneck', distill) or relax the thresholds."
        )


@dataclass(frozen=True)
class ThresholdResult:
    """One threshold: which metric, the limit, the measured value and whether it passed."""

    name: str
    metric: str
    op: str
    limit: float
    value: float | None
    passed: bool

    def describe(self) -> str:
        if self.value is None:
            return f"{self.name}: {self.metric} was not measured (limit {self.op} {self.limit:g})"
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.name}: {self.metric} = {self.value:.4g}, needs {self.op} {self.limit:g} ({verdict})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metric": self.metric,
            "op": self.op,
            "limit": self.limit,
            "value": self.value,
            "passed": self.passed,
        }


def _lookup(results: Mapping[str, Any], path: str) -> Any:
    value: Any = results
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def known_thresholds() -> dict[str, tuple[str, str]]:
    """The built-in thresholds and those of registered metrics (retrofit.check.registry)."""
    from retrofit.check.registry import metric_thresholds

    return {**THRESHOLDS, **metric_thresholds()}


def validate_thresholds(limits: Mapping[str, float | None]) -> dict[str, float]:
    """The thresholds that are set, checked to be known names with finite numeric limits."""
    known = known_thresholds()
    unknown = sorted(set(limits) - set(known))
    if unknown:
        raise ConfigError(f"Unknown thresholds {unknown}; known ones are {sorted(known)}.")
    checked = {}
    for name, limit in limits.items():
        if limit is None:
            continue
        if _finite(limit) is None:
            raise ConfigError(f"{name} must be a finite number or None, got {limit!r}.")
        checked[name] = float(limit)
    return checked


def evaluate_thresholds(
    results: Mapping[str, Any], limits: Mapping[str, float | None]
) -> list[ThresholdResult]:
    """Compare `results` with every threshold that is set; an unmeasured metric fails."""
    out = []
    known = known_thresholds()
    for name, limit in validate_thresholds(limits).items():
        path, op = known[name]
        if "*" in path:
            head, _, tail = path.partition(".*.")
            group = _lookup(results, head) or {}
            paths = [f"{head}.{m}.{tail}" for m in group if m != "random"] or [path]
        else:
            paths = [path]
        for metric in paths:
            value = _finite(_lookup(results, metric))
            passed = value is not None and _COMPARE[op](value, limit)
            out.append(ThresholdResult(name, metric, op, limit, value, passed))
    return out


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (JSON has no NaN); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: Any, digits: int = 3) -> str:
    number = _finite(value)
    if number is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{number:.{digits}f}"


class Report:
    """What `check` measured: fidelity, concept and pixel faithfulness, interpretability metrics.

    `results` is plain data (nested dicts of numbers and lists); `visuals` holds the tensors the
    HTML report draws. `passed` is False when any threshold given to `check` failed.
    """

    def __init__(
        self,
        results: dict[str, Any],
        thresholds: list[ThresholdResult] | None = None,
        visuals: dict[str, Any] | None = None,
    ) -> None:
        self.results = results
        self.thresholds = list(thresholds or [])
        self.visuals = dict(visuals or {})

    def __getitem__(self, key: str) -> Any:
        return self.results[key]

    @property
    def meta(self) -> dict[str, Any]:
        return self.results.get("meta", {})

    @property
    def fidelity(self) -> dict[str, Any]:
        return self.results.get("fidelity", {})

    @property
    def concept_deletion(self) -> dict[str, Any]:
        return self.results.get("concept_deletion", {})

    @property
    def pixel(self) -> dict[str, Any]:
        return self.results.get("pixel", {})

    @property
    def metrics(self) -> dict[str, Any]:
        return self.results.get("metrics", {})

    @property
    def failures(self) -> list[ThresholdResult]:
        return [t for t in self.thresholds if not t.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def raise_for_thresholds(self) -> None:
        """Raise CheckFailedError naming each failed threshold; do nothing when all passed."""
        if self.failures:
            raise CheckFailedError(self.failures)

    def to_dict(self) -> dict[str, Any]:
        """The results as JSON-safe data (NaN -> None), with the threshold verdicts."""
        return _json_safe(
            {
                "passed": self.passed,
                "thresholds": [t.to_dict() for t in self.thresholds],
                **self.results,
            }
        )

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the results as JSON (atomically); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))
        return path

    def to_html(self, path: str | os.PathLike) -> Path:
        """Write one self-contained HTML file (images inlined, no external files); returns the path."""
        from retrofit.check.html import render_report

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, render_report(self).encode("utf-8"))
        return path

    def summary(self) -> str:
        """A few lines of plain text with the headline numbers and the threshold verdicts."""
        meta, fid, concept = self.meta, self.fidelity, self.concept_deletion
        metrics = self.metrics
        verdict = (
            f"{'PASSED' if self.passed else 'FAILED'} ({len(self.thresholds)} threshold(s), "
            f"{len(self.failures)} failed)"
            if self.thresholds
            else "measured only: no threshold was set, so nothing was checked against one "
            "(--min-fidelity, --min-accuracy, --min-name-precision, ...)"
        )
        lines = [
            f"retrofit check: {verdict}",
            f"images {meta.get('n_images', 'n/a')} (pixel checks on "
            f"{meta.get('n_pixel_images', 0)}), {meta.get('n_classes', 'n/a')} classes, "
            f"{meta.get('n_features', 'n/a')} features",
            f"fidelity   accuracy {_fmt(fid.get('accuracy'))} (reference "
            f"{_fmt(fid.get('reference_accuracy'))}), agreement {_fmt(fid.get('agreement'))}, "
            f"on reference mistakes {_fmt(fid.get('agreement_on_reference_mistakes'))}",
        ]
        if concept:
            lines.append(
                f"concepts   deletion AUC {_fmt(concept.get('deletion_auc'))} vs random "
                f"{_fmt(concept.get('deletion_auc_random'))}, insertion AUC "
                f"{_fmt(concept.get('insertion_auc'))} vs random "
                f"{_fmt(concept.get('insertion_auc_random'))}"
                + (
                    f" (on {concept['n_images']} of {concept['n_total']} images)"
                    if concept.get("n_total", 0) > concept.get("n_images", 0)
                    else ""
                )
            )
        for level in ("class", "feature"):
            entries = self.pixel.get(level, {})
            random = entries.get("random", {})
            parts = [
                f"{method} {_fmt(e.get('deletion_auc'))}/{_fmt(e.get('insertion_auc'))}"
                for method, e in entries.items()
                if method != "random"
            ]
            if parts:
                lines.append(
                    f"pixels     {level} deletion/insertion AUC: {', '.join(parts)} (random "
                    f"{_fmt(random.get('deletion_auc'))}/{_fmt(random.get('insertion_auc'))})"
                )
        if metrics:
            lines.append(
                f"metrics    features used {_fmt(metrics.get('features_used'))}, per class "
                f"{_fmt(metrics.get('features_per_class'), 2)}, Diversity@5 "
                f"{_fmt(metrics.get('diversity@5'))}, dependence {_fmt(metrics.get('dependence'))}, "
                f"class-independence {_fmt(metrics.get('class_independence'))}, contrastiveness "
                f"{_fmt(metrics.get('contrastiveness'))}"
            )
        truth = self.results.get("truth") or {}
        if "pair" in truth:
            pair, flat = truth["pair"], truth.get("global", {})
            lines.append(
                f"truth      class-conditional names: precision {_fmt(pair.get('precision'))}, "
                f"recall {_fmt(pair.get('recall'))}, distinct {_fmt(pair.get('distinct'))}, "
                f"coverage {_fmt(pair.get('coverage'))} (global names: precision "
                f"{_fmt(flat.get('precision'))}, recall {_fmt(flat.get('recall'))})"
            )
        lines.extend(f"  {t.describe()}" for t in self.thresholds)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Report(passed={self.passed}, n_images={self.meta.get('n_images')}, "
            f"thresholds={len(self.thresholds)})"
        )
