"""HTML sections of registered check metrics (retrofit.check.registry): one per metric with
results, a table of its numbers with their meanings unless the metric renders itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from retrofit.check.html_parts import esc as _esc
from retrofit.check.html_parts import num as _num
from retrofit.check.html_parts import table as _table
from retrofit.check.registry import CheckMetric, registered_metrics

if TYPE_CHECKING:
    from retrofit.check.report import Report


def metric_sections(report: Report) -> list[tuple[str, str]]:
    """(section id, title) of every registered metric this report has results for."""
    return [(_section_id(m), m.title) for m in _measured(report)]


def render_metric_sections(report: Report) -> str:
    parts = []
    for metric in _measured(report):
        values = report.results[metric.name]
        body = metric.render(values) if metric.render is not None else _table_of(metric, values)
        parts.append(
            f'<section id="{_section_id(metric)}"><h2>{_esc(metric.title)}</h2>{body}</section>'
        )
    return "".join(parts)


def _measured(report: Report) -> list[CheckMetric]:
    return [m for m in registered_metrics() if isinstance(report.results.get(m.name), Mapping)]


def _section_id(metric: CheckMetric) -> str:
    return f"metric-{metric.name}"


def _table_of(metric: CheckMetric, values: Mapping[str, Any]) -> str:
    rows = [
        [_esc(key), _num(value), _esc(metric.meanings.get(key, ""))]
        for key, value in _flat(values).items()
    ]
    return _table(["quantity", "value", "meaning"], rows, {1})


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists are left out of the table (they stay in the JSON)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        elif not isinstance(value, (list, tuple)):
            out[f"{prefix}{key}"] = value
    return out
