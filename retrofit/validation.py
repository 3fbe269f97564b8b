"""Parameter constraints in the scikit-learn style, so every setting fails with one message shape.

A constraint says what a value may be (`Interval(int, 1, None)`, `Options("a", "b")`,
`None`); `check_param` raises a ConfigError naming the parameter, what it may be and the
value. `reject_unknown` refuses keys a settings class does not have, with the close match.
A leaf: it imports nothing of retrofit but its errors.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from retrofit.errors import ConfigError

CLOSED = ("both", "left", "right", "neither")


@dataclass(frozen=True)
class Interval:
    """A number of `kind` (int or float) between `low` and `high` (None: unbounded).

    `closed` says which ends belong to it. An int interval accepts only integers (never bools);
    a float interval accepts integers too, and never NaN.
    """

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def __post_init__(self) -> None:
        if self.kind not in (int, float):
            raise TypeError(f"Interval kind must be int or float, got {self.kind!r}")
        if self.closed not in CLOSED:
            raise TypeError(f"Interval closed must be one of {CLOSED}, got {self.closed!r}")

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        low_open = self.closed in ("right", "neither")
        high_open = self.closed in ("left", "neither")
        if self.low is not None and (value < self.low or (value == self.low and low_open)):
            return False
        if self.high is not None and (value > self.high or (value == self.high and high_open)):
            return False
        return self.high is not None or math.isfinite(value)

    def describe(self) -> str:
        name = "an integer" if self.kind is int else "a number"
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        return f"{name} in {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (strings or bools)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, value: Any) -> bool:
        return any(value is v or (type(value) is type(v) and value == v) for v in self.values)

    def describe(self) -> str:
        return f"one of {list(self.values)}"


BOOL = Options(True, False)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _describe(constraint: Any) -> str:
    return "None" if constraint is None else constraint.describe()


def check_param(name: str, value: Any, *constraints: Any) -> None:
    """Raise ConfigError unless `value` meets one of `constraints` (None admits None)."""
    for constraint in constraints:
        if (constraint is None and value is None) or (
            constraint is not None and constraint.accepts(value)
        ):
            return
    allowed = " or ".join(_describe(c) for c in constraints)
    raise ConfigError(f"{name} must be {allowed}, got {value!r}.")


def reject_unknown(owner: str, keys: Iterable[str], known: Iterable[str]) -> None:
    """Raise ConfigError for keys not in `known`, suggesting the closest known key."""
    known = sorted(known)
    unknown = sorted(set(keys) - set(known))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise ConfigError(f"Unknown {owner} settings {', '.join(hints)}; known ones are {known}.")
