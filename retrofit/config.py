"""The one config dataclass that `convert`'s keyword arguments mirror; stored in every export."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from retrofit.errors import ConfigError

METHODS = ("qpm", "qsenn", "sparse", "dense", "flint")
# what the head reads: the backbone's penultimate features, or FLINT attributes learned from them
FEATURE_SOURCES = ("backbone", "flint")
FINETUNE_MODES = ("bottleneck", "none", "backbone")
SOLVERS = ("cbc", "highs", "gurobi")
REWEIGHT_MODES = ("consistency",)
CACHE_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class RetrofitConfig:
    """Settings of one conversion. Validated on construction so mistakes fail before any work."""

    method: str = "qpm"
    n_features: int = 50
    per_class: int = 5
    feature_layer: str | None = None
    # how to rebuild the backbone on load, e.g. "torchvision:resnet50:IMAGENET1K_V2", "hf:ORG/NAME"
    base_model: str | None = None
    maps: bool = False  # cache spatial maps: enables the diversity loss and QPM's locality term
    finetune: str = "bottleneck"
    solver: str = "cbc"
    time_limit: float | None = None  # seconds for the QPM solver; None: 600 (DEFAULT_TIME_LIMIT)
    mip_gap: float | None = None
    threads: int | None = None
    balanced: bool = False
    rounds: int = 4
    # each feature a learned mix of the D penultimate channels, initialised to its selected one
    linear_mix: bool = True
    distill: float = 0.0
    epochs: int | None = (
        None  # bottleneck epochs; None: enough for MIN_BOTTLENECK_STEPS minibatches
    )
    backbone_epochs: int = 1
    backbone_lr: float = 1e-4
    lr: float = 1e-2
    batch_size: int = 64
    seed: int = 0
    cache_dir: str | None = None
    device: str | None = None
    progress: bool = True
    class_names: list[str] | None = None
    # CLIP naming: an encoder or spec ("tiny", "open_clip:...", "hf:..."), a vocabulary, (N, K)
    # concept labels, or a dict of retrofit.concepts.ConceptSettings fields
    concepts: Any = None
    # with concepts: the head chooses among linear concept probes (retrofit.concepts.basis), so
    # classes are explained by features that mean one thing; with fewer detectable concepts
    # than n_features (or "mix") the backbone channels are candidates too; False: channels only
    concept_features: bool | str = True
    extra: dict[str, Any] = field(default_factory=dict)
    # FLINT attributes: a dict of retrofit.attributes.FlintSettings fields (J, loss weights, ...)
    flint: dict[str, Any] | None = None
    features: str = "backbone"  # "flint": qpm/qsenn/sparse/dense fit on learned FLINT attributes
    # consistency reweighting (ALGORITHMS §9.2): refit with weights 1 − E, K rounds, E on the
    # first reweight_images training images; reweight_consistency: ConsistencySettings fields
    reweight: str | None = None
    reweight_rounds: int = 2
    reweight_images: int = 256
    reweight_clip: float = 5.0
    reweight_temperature: float = 1.0
    reweight_consistency: dict[str, Any] = field(default_factory=dict)
    # how the pooled features are cached: "float16" / "bfloat16" halve disk and I/O
    cache_dtype: str = "float32"
    # shard extraction and backbone fine-tuning (DDP) over a torch.distributed group: None when
    # one is initialised, False never
    distributed: bool | None = None

    def __post_init__(self) -> None:
        if self.finetune == "adapter":  # its name before "adapter" came to mean model families
            self.finetune = "bottleneck"
        _check_choice("method", self.method, METHODS)
        _check_choice("finetune", self.finetune, FINETUNE_MODES)
        _check_choice("solver", self.solver, SOLVERS)
        if self.concept_features not in (True, False, "mix"):
            raise ConfigError(
                f"concept_features must be True, False or 'mix', got {self.concept_features!r}."
            )
        _check_positive_int("n_features", self.n_features)
        _check_positive_int("per_class", self.per_class)
        _check_positive_int("rounds", self.rounds)
        if self.epochs is not None:
            _check_positive_int("epochs", self.epochs, allow_zero=True)
        _check_positive_int("batch_size", self.batch_size)
        if self.per_class > self.n_features:
            raise ConfigError(
                f"per_class={self.per_class} is larger than n_features={self.n_features}: "
                "a class cannot use more features than are selected. Lower per_class or raise n_features."
            )
        if self.time_limit is not None and not self.time_limit > 0:
            raise ConfigError(
                f"time_limit must be a positive number of seconds or None, got {self.time_limit!r}."
            )
        if self.mip_gap is not None and not 0 <= self.mip_gap < 1:
            raise ConfigError(f"mip_gap must be in [0, 1), got {self.mip_gap!r}.")
        if self.concepts is not None:
            from retrofit.concepts import parse_concepts

            settings = parse_concepts(self.concepts)
            if settings.align and not self.linear_mix:
                raise ConfigError(
                    "concepts with align=True needs linear_mix=True: a per-feature scale and shift "
                    "cannot change how well a feature tracks its concept."
                )
            if settings.align and self.method == "flint":
                raise ConfigError(
                    "concepts with align=True cannot re-mix FLINT attributes (the flint head reads "
                    "them as they are); use method='qpm' with features='flint', or align=False."
                )
        if self.reweight is not None:
            _check_choice("reweight", self.reweight, REWEIGHT_MODES)
            _check_positive_int("reweight_rounds", self.reweight_rounds)
            _check_positive_int("reweight_images", self.reweight_images)
            if not self.reweight_clip > 1:
                raise ConfigError(f"reweight_clip must be > 1, got {self.reweight_clip!r}.")
            if not self.reweight_temperature > 0:
                raise ConfigError(
                    f"reweight_temperature must be > 0, got {self.reweight_temperature!r}."
                )
            from retrofit.check.consistency import ConsistencySettings

            ConsistencySettings.parse(dict(self.reweight_consistency))
        _check_choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        if self.distill < 0:
            raise ConfigError(f"distill must be >= 0, got {self.distill!r}.")
        _check_choice("features", self.features, FEATURE_SOURCES)
        if self.flint is not None:
            from retrofit.attributes import parse_flint

            parse_flint(self.flint)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings; concept settings are summarised (labels by their shape)."""
        from retrofit.concepts import parse_concepts

        concepts = parse_concepts(self.concepts)
        data = dataclasses.asdict(dataclasses.replace(self, concepts=None))
        data["concepts"] = concepts.to_dict() if concepts is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrofitConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown config keys {unknown}; known keys are {sorted(known)}.")
        # a stored concepts summary records how features were named; it is not re-run on load
        return cls(**{**data, "concepts": None})


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {list(choices)}.")


def _check_positive_int(name: str, value: object, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else ">= 1"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}.")
