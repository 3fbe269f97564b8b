"""A wall-clock deadline shared by every stage of one head fit, so `time_limit` bounds them all."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """A point in `time.perf_counter()` time; `inf` never expires."""

    end: float = math.inf

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(math.inf if seconds is None else time.perf_counter() + float(seconds))

    def remaining(self) -> float:
        return self.end - time.perf_counter()

    def expired(self) -> bool:
        return time.perf_counter() >= self.end

    def share(self, fraction: float) -> Deadline:
        """An earlier deadline that leaves the stages after it `1 - fraction` of what is left."""
        if math.isinf(self.end):
            return self
        return Deadline(time.perf_counter() + max(0.0, fraction * self.remaining()))
