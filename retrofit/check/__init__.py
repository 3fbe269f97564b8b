"""Faithfulness checks (Captum), interpretability metrics and the self-contained HTML report."""

from retrofit.check.pixel import PIXEL_METHODS, PixelSettings
from retrofit.check.report import THRESHOLDS, CheckFailedError, Report, ThresholdResult
from retrofit.check.run import check

__all__ = [
    "PIXEL_METHODS",
    "THRESHOLDS",
    "CheckFailedError",
    "PixelSettings",
    "Report",
    "ThresholdResult",
    "check",
]
