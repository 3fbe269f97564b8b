"""Typed settings of the fitting stages, which were once string keys of `RetrofitConfig.extra`.

Each class is a dataclass with its constraints beside its fields; construction validates, and
`parse` builds one from None, an instance or a dict (unknown keys fail with the close match).
`LEGACY_EXTRA_KEYS` maps every old `extra` key to its typed home, so configs and exports that
hold `extra` keep loading. A leaf: it imports only retrofit.validation and retrofit.errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from retrofit.errors import ConfigError
from retrofit.validation import BOOL, Interval, Options, check_param, reject_unknown

S = TypeVar("S", bound="StageSettings")

NON_NEGATIVE = Interval(float, 0, None)
POSITIVE_INT = Interval(int, 1, None)
NON_NEGATIVE_INT = Interval(int, 0, None)
FORMULATIONS = ("projected", "assignment")


class StageSettings:
    """Base of the typed settings: `CONSTRAINTS` names, per field, what a value may be."""

    NAME: ClassVar[str] = ""
    CONSTRAINTS: ClassVar[dict[str, tuple[Any, ...]]] = {}

    def __post_init__(self) -> None:
        for name, constraints in self.CONSTRAINTS.items():
            check_param(f"{self.NAME}.{name}", getattr(self, name), *constraints)

    @classmethod
    def parse(cls: type[S], value: Any) -> S:
        """An instance from None (the defaults), an instance, or a dict of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{cls.NAME} must be a dict of {cls.__name__} fields or a {cls.__name__}, "
                f"got {type(value).__name__}."
            )
        reject_unknown(cls.NAME, value, (f.name for f in dataclasses.fields(cls)))
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class QPMSettings(StageSettings):
    """How QPM chooses and solves (ALGORITHMS §2).

    candidates: features the program may choose from (None: 8 * n_features, raised towards
        2 * C but to no more than 12 * n_features, at most D); D or more disables pre-selection.
    duplicate_cut: candidates whose cosine with a kept one exceeds this are skipped.
    locality: add the locality bias b_j (needs the spatial maps, `maps=True`).
    search_rounds: kicks of the iterated local search that builds the warm start.
    max_rounds: cap on the lazy uniqueness rounds.
    cut_rounds, cuts_per_round: the root loop of clique / stable-set cuts (0 rounds: off).
    formulation: "projected" (one value per class bounded by exact cuts) or "assignment" (a
        variable per feature and class).
    value_cut_window: how many of a class's best features seed its exact value cuts (0: none,
        the cuts are then found lazily).
    """

    NAME: ClassVar[str] = "qpm"
    CONSTRAINTS: ClassVar[dict[str, tuple[Any, ...]]] = {
        "candidates": (POSITIVE_INT, None),
        "duplicate_cut": (Interval(float, 0, 1, closed="right"),),
        "locality": (BOOL,),
        "search_rounds": (NON_NEGATIVE_INT,),
        "max_rounds": (NON_NEGATIVE_INT,),
        "cut_rounds": (NON_NEGATIVE_INT,),
        "cuts_per_round": (POSITIVE_INT,),
        "formulation": (Options(*FORMULATIONS),),
        "value_cut_window": (NON_NEGATIVE_INT,),
    }

    candidates: int | None = None
    duplicate_cut: float = 0.95
    locality: bool = False
    search_rounds: int = 200
    max_rounds: int = 100
    cut_rounds: int = 50
    cuts_per_round: int = 500
    formulation: str = "projected"
    value_cut_window: int = 3


@dataclass
class HeadSettings(StageSettings):
    """What every sparse head (qpm, qsenn, sparse) shares.

    concept_prior: weight of the class–concept prior from the concept basis (+1 where a class
        shows a concept feature's concept, −1 where it does not); 0 ignores it.
    """

    NAME: ClassVar[str] = "head"
    CONSTRAINTS: ClassVar[dict[str, tuple[Any, ...]]] = {"concept_prior": (NON_NEGATIVE,)}

    concept_prior: float = 0.5


@dataclass
class DenseSettings(StageSettings):
    """The dense baseline head. l2: ridge strength λ of ½λ‖W‖²."""

    NAME: ClassVar[str] = "dense"
    CONSTRAINTS: ClassVar[dict[str, tuple[Any, ...]]] = {"l2": (NON_NEGATIVE,)}

    l2: float = 1e-4


@dataclass
class BottleneckSettings(StageSettings):
    """The bottleneck's fine-tuning terms (ALGORITHMS §3).

    diversity_beta: β of the diversity loss over the spatial maps (the reference's ResNet-50
        weight).
    concept_retention: ρ holding named features to their concepts while the bottleneck trains
        (None: on when the conversion names concepts, else off).
    class_diversity: γ of the within-class decorrelation term (None: on when the conversion
        names concepts, else off).
    """

    NAME: ClassVar[str] = "bottleneck"
    CONSTRAINTS: ClassVar[dict[str, tuple[Any, ...]]] = {
        "diversity_beta": (NON_NEGATIVE,),
        "concept_retention": (NON_NEGATIVE, None),
        "class_diversity": (NON_NEGATIVE, None),
    }

    diversity_beta: float = 0.196
    concept_retention: float | None = None
    class_diversity: float | None = None


# every key `RetrofitConfig.extra` once held: (config field, settings field)
LEGACY_EXTRA_KEYS: dict[str, tuple[str, str]] = {
    **{name: ("qpm", name) for name in QPMSettings.CONSTRAINTS},
    "concept_prior": ("head", "concept_prior"),
    "dense_l2": ("dense", "l2"),
    "diversity_beta": ("bottleneck", "diversity_beta"),
    "concept_retention": ("bottleneck", "concept_retention"),
    "class_diversity": ("bottleneck", "class_diversity"),
}
# keys the shown-word bar used before names were tested (issue 30): read and ignored
RETIRED_EXTRA_KEYS = ("concept_min_separability",)


def split_legacy_extra(extra: Any) -> dict[str, dict[str, Any]]:
    """Old `extra` keys grouped by their typed home: {"qpm": {...}, "dense": {...}, ...}."""
    if not isinstance(extra, dict):
        raise ConfigError(f"extra must be a dict of settings, got {type(extra).__name__}.")
    reject_unknown("extra", extra, [*LEGACY_EXTRA_KEYS, *RETIRED_EXTRA_KEYS])
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in extra.items():
        if key in RETIRED_EXTRA_KEYS:
            continue
        stage, name = LEGACY_EXTRA_KEYS[key]
        grouped.setdefault(stage, {})[name] = value
    return grouped
