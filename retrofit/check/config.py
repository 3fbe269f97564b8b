"""The options of one `check` call in one validated object (thresholds, budgets, seed).

`check(imodel, loader, reference, config=CheckConfig(...))`; keyword options given to check
override the config's fields, so `check(m, data, min_fidelity=0.9)` keeps working. The data
check reads (masks, attributes, concept labels and names) stays keyword arguments of check:
it is input, not settings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from retrofit.check.pixel import PIXEL_METHODS, validate_methods
from retrofit.check.report import THRESHOLDS, validate_thresholds
from retrofit.errors import ConfigError
from retrofit.methods.flint.mas import DEFAULT_MAS_PAIRS

_COUNTS = ("max_pixel_images", "top_images", "max_explanations", "mas_pairs", "am_pi_pairs")


@dataclass
class CheckConfig:
    """What `check` measures and which numbers must pass.

    Thresholds (min_*/max_*, and `thresholds` for those of registered metrics, keyword ->
    limit) decide `Report.passed`; with `raise_on_failure` a miss raises CheckFailedError.
    `consistency` (True, a dict or a ConsistencySettings) adds explanation consistency under
    background perturbation for both models. The Captum work runs on the first
    `max_pixel_images` images only; `ig_steps`, `curve_steps`, `perturb_samples` and
    `internal_batch_size` trade its cost for precision. `mas_pairs` caps the relevant
    class-feature pairs whose top images (FLINT's MAS) the report shows; for the first
    `am_pi_pairs` of them it adds FLINT's AM+PI image. `metrics` names the registered metrics
    to run (None: all of them; retrofit.check.register_metric). `deletion_images` caps the
    images concept deletion measures (a seeded random subset when there are more; its cost is
    O(images · n_f · classes); None: all). `reference_logits_budget_mb` caps the memory of the
    original model's (N, C) logits kept for registered metrics (`MetricInputs.reference_logits`
    is None beyond it; everything built in needs only per-image results).
    """

    min_fidelity: float | None = None
    min_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    min_mistake_agreement: float | None = None
    min_concept_deletion_gain: float | None = None
    min_pixel_deletion_gain: float | None = None
    min_diversity: float | None = None
    max_dependence: float | None = None
    min_truth_precision: float | None = None
    min_truth_recall: float | None = None
    min_truth_distinct: float | None = None
    min_consistency: float | None = None
    max_consistency_flip_rate: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    raise_on_failure: bool = False
    pixel_methods: Sequence[str] = PIXEL_METHODS
    max_pixel_images: int = 32
    ig_steps: int = 32
    curve_steps: int = 20
    perturb_samples: int = 8
    internal_batch_size: int = 64
    top_images: int = 6
    max_explanations: int = 8
    batch_size: int = 64
    seed: int = 0
    progress: bool = True
    mas_pairs: int = DEFAULT_MAS_PAIRS
    am_pi_pairs: int = 0
    consistency: Any = None
    metrics: Sequence[str] | None = None
    deletion_images: int | None = 10_000
    reference_logits_budget_mb: float = 256.0

    def __post_init__(self) -> None:
        self.pixel_methods = validate_methods(self.pixel_methods)
        for name in _COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}.")
        _check_budgets(self.deletion_images, self.reference_logits_budget_mb)
        if not isinstance(self.thresholds, Mapping):
            raise ConfigError(
                f"thresholds must be a dict of threshold name -> limit, got {self.thresholds!r}."
            )
        self.limits()  # unknown names and non-finite limits fail here, before any work
        if self.metrics is not None:
            from retrofit.check.registry import registered_metrics

            if isinstance(self.metrics, str):
                raise ConfigError("metrics must be a list of metric names, not one string.")
            self.metrics = tuple(m.name for m in registered_metrics(self.metrics))

    def limits(self) -> dict[str, float]:
        """Every threshold that is set, built-in and registered, validated."""
        named = {name: getattr(self, name) for name in THRESHOLDS}
        clash = sorted(set(self.thresholds) & set(THRESHOLDS))
        if clash:
            raise ConfigError(
                f"Give {clash} as CheckConfig fields (or check() keywords), not in thresholds=."
            )
        return validate_thresholds({**named, **self.thresholds})

    @classmethod
    def resolve(cls, config: CheckConfig | None, options: Mapping[str, Any]) -> CheckConfig:
        """`config` (default CheckConfig()) with check()'s keyword options overriding it."""
        if config is not None and not isinstance(config, CheckConfig):
            raise ConfigError(
                f"config= must be a retrofit.check.CheckConfig, got {type(config).__name__}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"check() got unknown options {unknown}; the options are CheckConfig's fields "
                f"{sorted(known)}, and the data keywords masks, attributes, concept_names, "
                "concept_labels."
            )
        base = config if config is not None else cls()
        return dataclasses.replace(base, **options) if options else base


def _check_budgets(deletion_images: Any, budget_mb: Any) -> None:
    if deletion_images is not None and (
        isinstance(deletion_images, bool)
        or not isinstance(deletion_images, int)
        or deletion_images < 1
    ):
        raise ConfigError(
            f"deletion_images must be None (all images) or an integer >= 1, got {deletion_images!r}."
        )
    if (
        isinstance(budget_mb, bool)
        or not isinstance(budget_mb, (int, float))
        or not math.isfinite(budget_mb)
        or budget_mb < 0
    ):
        raise ConfigError(
            f"reference_logits_budget_mb must be a finite number of megabytes >= 0, got {budget_mb!r}."
        )
