"""The one config dataclass that `convert`'s keyword arguments mirror; stored in every export."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from retrofit.consistency_settings import ConsistencySettings
from retrofit.errors import ConfigError
from retrofit.methods.flint.settings import check_flint_layers, parse_flint
from retrofit.registry import HEADS
from retrofit.settings import (
    BottleneckSettings,
    DenseSettings,
    HeadSettings,
    QPMSettings,
    split_legacy_extra,
)
from retrofit.validation import reject_unknown

# the file save_pretrained writes (an export's retrofit_config.json holds it under "config")
CONFIG_NAME = "convert_config.json"
# what the head reads: the backbone's penultimate features, or FLINT attributes learned from them
FEATURE_SOURCES = ("backbone", "flint")
FINETUNE_MODES = ("bottleneck", "none", "backbone")
SOLVERS = ("cbc", "highs", "gurobi")
REWEIGHT_MODES = ("consistency", "counterfactual")
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
    # let the MIP solver's own log (CBC, HiGHS) reach the terminal; off, retrofit prints one
    # summary line per solve when progress is on
    solver_log: bool = False
    class_names: list[str] | None = None
    # CLIP naming: an encoder or spec ("tiny", "open_clip:...", "hf:..."), a vocabulary, (N, K)
    # concept labels, or a dict of retrofit.concepts.ConceptSettings fields
    concepts: Any = None
    # with concepts: the head chooses among linear concept probes (retrofit.concepts.basis), so
    # classes are explained by features that mean one thing; with fewer detectable concepts
    # than n_features (or "mix") the backbone channels are candidates too; False: channels only
    concept_features: bool | str = True
    # typed stage settings (retrofit.settings); each also takes a dict of its fields
    qpm: QPMSettings = field(default_factory=QPMSettings)
    head: HeadSettings = field(default_factory=HeadSettings)
    dense: DenseSettings = field(default_factory=DenseSettings)
    bottleneck: BottleneckSettings = field(default_factory=BottleneckSettings)
    # FLINT attributes: a dict of retrofit.methods.flint.attributes.FlintSettings fields (J, loss weights, ...)
    flint: dict[str, Any] | None = None
    features: str = "backbone"  # "flint": qpm/qsenn/sparse/dense fit on learned FLINT attributes
    # reweight="consistency" (ALGORITHMS §9.2): refit with weights 1 − E, K rounds, E on the
    # first reweight_images training images; reweight_consistency: ConsistencySettings fields.
    # reweight="counterfactual" (ALGORITHMS §12): refit on the first reweight_images training
    # images' objects pasted onto reweight_copies backgrounds of other classes (needs masks=)
    reweight: str | None = None
    reweight_rounds: int = 2
    reweight_images: int = 256
    reweight_clip: float = 5.0
    reweight_temperature: float = 1.0
    reweight_consistency: dict[str, Any] = field(default_factory=dict)
    reweight_copies: int = 2
    # how the pooled features are cached: "float16" / "bfloat16" halve disk and I/O
    cache_dtype: str = "float32"
    # shard extraction and backbone fine-tuning (DDP) over a torch.distributed group: None when
    # one is initialised, False never
    distributed: bool | None = None
    # FLINT attributes also read these earlier modules' outputs, pooled per image (by name, as
    # named_modules() lists them); only with method="flint" or features="flint"
    flint_layers: list[str] | None = None
    # the old home of the stage settings: read into qpm/head/dense/bottleneck (deprecated)
    extra: InitVar[dict[str, Any] | None] = None

    def __post_init__(self, extra: dict[str, Any] | None = None) -> None:
        if extra:
            warnings.warn(
                "RetrofitConfig(extra=...) is deprecated; its keys now live in typed settings: "
                + _legacy_hint(extra),
                DeprecationWarning,
                stacklevel=3,
            )
        self._read_stage_settings(extra)
        if self.finetune == "adapter":  # its name before "adapter" came to mean model families
            self.finetune = "bottleneck"
        if self.method not in _registered_heads():
            raise ConfigError(
                f"method={self.method!r} is not a registered head; choose one of "
                f"{list(_registered_heads())}, or import the module that registers it "
                "(retrofit.methods.base.register_head) before building or loading a config that names it."
            )
        _check_choice("finetune", self.finetune, FINETUNE_MODES)
        _check_choice("solver", self.solver, SOLVERS)
        if not isinstance(self.solver_log, bool):
            raise ConfigError(f"solver_log must be True or False, got {self.solver_log!r}.")
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
        if self.concepts is not None and not _is_summary(self.concepts):
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
            _check_positive_int("reweight_copies", self.reweight_copies)
            if not self.reweight_clip > 1:
                raise ConfigError(f"reweight_clip must be > 1, got {self.reweight_clip!r}.")
            if not self.reweight_temperature > 0:
                raise ConfigError(
                    f"reweight_temperature must be > 0, got {self.reweight_temperature!r}."
                )
            ConsistencySettings.parse(dict(self.reweight_consistency))
        _check_choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        if self.distill < 0:
            raise ConfigError(f"distill must be >= 0, got {self.distill!r}.")
        _check_choice("features", self.features, FEATURE_SOURCES)
        if self.flint is not None:
            parse_flint(self.flint)
        if self.flint_layers is not None:
            self.flint_layers = check_flint_layers(self)

    def _read_stage_settings(self, extra: dict[str, Any] | None) -> None:
        """qpm/head/dense/bottleneck as typed settings, old `extra` keys read over them."""
        legacy = split_legacy_extra(extra) if extra else {}
        for name, kind in _STAGE_SETTINGS.items():
            settings = kind.parse(getattr(self, name))
            if name in legacy:
                settings = kind.parse({**settings.to_dict(), **legacy[name]})
            setattr(self, name, settings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings. Concepts are stored as given when they are plain data; an encoder
        object or label tensor becomes a marked summary (retrofit.concepts.stored)."""
        from retrofit.concepts.settings import concepts_to_json

        data = dataclasses.asdict(dataclasses.replace(self, concepts=None))
        data["concepts"] = concepts_to_json(self.concepts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrofitConfig:
        """The config `to_dict` wrote; stored concept summaries come back as ConceptsSummary."""
        from retrofit.concepts.settings import concepts_from_json

        if not isinstance(data, dict):
            raise ConfigError(f"A stored config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        reject_unknown("config", data, [*known, "extra"])
        data = dict(data)
        legacy = data.pop("extra", None)  # configs and exports written before typed settings
        config = cls(**{**data, "concepts": concepts_from_json(data.get("concepts"))})
        if legacy:
            config._read_stage_settings(legacy)
        return config

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the config as FOLDER/convert_config.json (atomically); returns the file."""
        from retrofit.io.files import atomic_write_bytes

        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            text = json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ConfigError(
                f"The config cannot be written as JSON ({error}); keep `flint` and the stage settings to "
                "plain numbers, strings, lists and dicts."
            ) from error
        path = folder / CONFIG_NAME
        atomic_write_bytes(path, (text + "\n").encode("utf-8"))
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> RetrofitConfig:
        """A config from save_pretrained's folder (or its JSON file), or from an export folder."""
        from retrofit.export.layout import CONFIG_FILE
        from retrofit.io.files import read_json

        path = Path(path).expanduser()
        if path.is_dir():
            path = next(
                (path / name for name in (CONFIG_NAME, CONFIG_FILE) if (path / name).is_file()),
                path / CONFIG_NAME,
            )
        if not path.is_file():
            raise ConfigError(
                f"{path} is neither a {CONFIG_NAME} file nor a folder holding one (or an export's "
                f"{CONFIG_FILE}); write one with RetrofitConfig.save_pretrained(folder)."
            )
        data = read_json(path)
        if (
            isinstance(data, dict)
            and isinstance(data.get("config"), dict)
            and "schema_version" in data
        ):
            data = data["config"]  # an export's config file: its conversion settings
        return cls.from_dict(data)


_STAGE_SETTINGS = {
    "qpm": QPMSettings,
    "head": HeadSettings,
    "dense": DenseSettings,
    "bottleneck": BottleneckSettings,
}


def _legacy_hint(extra: dict[str, Any]) -> str:
    grouped = split_legacy_extra(extra)
    return ", ".join(f"{stage}={fields!r}" for stage, fields in grouped.items()) or "(none)"


def _registered_heads() -> tuple[str, ...]:
    """The head registry is the one list of methods (retrofit.methods.base.register_head)."""
    return tuple(HEADS.names())


def _is_summary(concepts: Any) -> bool:
    from retrofit.concepts.stored import ConceptsSummary

    return isinstance(concepts, ConceptsSummary)


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
