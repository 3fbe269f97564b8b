"""Faithfulness checks (Captum), interpretability metrics and the self-contained HTML report."""

from retrofit.check.consistency import ConsistencyResult, ConsistencySettings, consistency
from retrofit.check.pixel import PIXEL_METHODS, PixelSettings
from retrofit.check.report import THRESHOLDS, CheckFailedError, Report, ThresholdResult
from retrofit.check.run import check

# `retrofit.check` is this function at the top level, so the consistency check hangs off it too:
# retrofit.check.consistency(model, loader) works whichever `check` a user holds
check.consistency = consistency  # type: ignore[attr-defined]

__all__ = [
    "PIXEL_METHODS",
    "THRESHOLDS",
    "CheckFailedError",
    "ConsistencyResult",
    "ConsistencySettings",
    "PixelSettings",
    "Report",
    "ThresholdResult",
    "check",
    "consistency",
]
