"""Faithfulness checks (Captum), interpretability metrics and the self-contained HTML report."""

from retrofit.check import names as _names  # noqa: F401  (registers the "names" metric)
from retrofit.check import reliance as _reliance  # noqa: F401  (the "background_reliance" metric)
from retrofit.check.config import CheckConfig
from retrofit.check.consistency import ConsistencyResult, ConsistencySettings, consistency
from retrofit.check.pixel import PIXEL_METHODS, PixelSettings
from retrofit.check.registry import (
    CheckMetric,
    MetricInputs,
    available_metrics,
    register_metric,
    unregister_metric,
)
from retrofit.check.report import THRESHOLDS, CheckFailedError, Report, ThresholdResult
from retrofit.check.run import check

# `retrofit.check` is this function at the top level, so the consistency check hangs off it too:
# retrofit.check.consistency(model, loader) works whichever `check` a user holds
check.consistency = consistency  # type: ignore[attr-defined]

__all__ = [
    "PIXEL_METHODS",
    "THRESHOLDS",
    "CheckConfig",
    "CheckFailedError",
    "CheckMetric",
    "ConsistencyResult",
    "ConsistencySettings",
    "MetricInputs",
    "PixelSettings",
    "Report",
    "ThresholdResult",
    "available_metrics",
    "check",
    "consistency",
    "register_metric",
    "unregister_metric",
]
