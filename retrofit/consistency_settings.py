"""The explanation-consistency check's settings (retrofit.check.consistency runs it).

A leaf beside retrofit.config, so `reweight_consistency=` is validated without importing the
check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from retrofit.errors import ConfigError

SIMILARITIES: tuple[str, ...] = ("l1", "cosine", "pearson", "iou")
PERTURBATIONS: tuple[str, ...] = ("pgd", "swap")
FILLS: tuple[str, ...] = ("diffuse", "mean")  # how a donor's own object is removed in a swap


@dataclass(frozen=True)
class ConsistencySettings:
    """How the check perturbs and compares; the paper leaves all of these open.

    `epsilon` and `step_size` are in input units (8/255 assumes images in [0, 1]); `bounds`
    clamps the perturbed images (None: the batch's own minimum and maximum). `top_k` is the
    share of pixels compared by the "iou" similarity. `perturbation` is "pgd" (adversarial,
    within ε: the explanation's robustness) or "swap" (the background replaced by another
    image's clean background: background reliance; `swap_fill` says how a donor's own object
    is removed when no object-free `backgrounds=` are given; ε and the PGD steps are unused).
    """

    epsilon: float = 8 / 255
    steps: int = 10
    step_size: float | None = None  # None: 2.5·ε / steps
    quantile: float = 0.5
    similarity: str = "l1"
    top_k: float = 0.2
    bounds: tuple[float, float] | None = None
    max_images: int = 64
    batch_size: int = 32
    worst_classes: int = 5
    examples: int = 4
    perturbation: str = "pgd"
    swap_fill: str = "diffuse"

    def __post_init__(self) -> None:
        if self.perturbation not in PERTURBATIONS:
            raise ConfigError(
                f"perturbation={self.perturbation!r} is not supported; choose one of "
                f"{list(PERTURBATIONS)} (adversarial PGD within ε, or a swap of backgrounds)."
            )
        if self.swap_fill not in FILLS:
            raise ConfigError(
                f"swap_fill={self.swap_fill!r} is not supported; choose one of {list(FILLS)}."
            )
        if not _is_number(self.epsilon) or not self.epsilon > 0:
            raise ConfigError(
                f"epsilon must be a positive number (the L∞ radius in input units, e.g. 8/255 for "
                f"images in [0, 1]), got {self.epsilon!r}."
            )
        if self.step_size is not None and (not _is_number(self.step_size) or self.step_size <= 0):
            raise ConfigError(
                f"step_size must be a positive number or None, got {self.step_size!r}."
            )
        if not _is_number(self.quantile) or not 0 < self.quantile < 1:
            raise ConfigError(
                f"quantile must lie strictly between 0 and 1 (the share of pixels treated as "
                f"background), got {self.quantile!r}."
            )
        if self.similarity not in SIMILARITIES:
            raise ConfigError(
                f"similarity={self.similarity!r} is not supported; choose one of {list(SIMILARITIES)}."
            )
        if not _is_number(self.top_k) or not 0 < self.top_k <= 1:
            raise ConfigError(f"top_k must lie in (0, 1], got {self.top_k!r}.")
        if self.bounds is not None and (
            len(self.bounds) != 2 or not all(_is_number(b) for b in self.bounds)
            or not self.bounds[0] < self.bounds[1]
        ):  # fmt: skip
            raise ConfigError(f"bounds must be (low, high) with low < high, got {self.bounds!r}.")
        for name, low in (
            ("steps", 1),
            ("max_images", 1),
            ("batch_size", 1),
            ("worst_classes", 0),
            ("examples", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")

    @property
    def pgd_step(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps

    @classmethod
    def parse(cls, value: Any) -> ConsistencySettings:
        """Settings from an instance, True (the defaults) or a dict of fields."""
        if isinstance(value, cls):
            return value
        if value is True:
            return cls()
        if isinstance(value, dict):
            try:
                return cls(**value)
            except TypeError as error:
                raise ConfigError(
                    f"{error}; ConsistencySettings fields are {list(cls.__dataclass_fields__)}."
                ) from error
        raise ConfigError(
            f"consistency must be True, a dict of settings or a ConsistencySettings, got {value!r}."
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
