"""The registry of model families: one file per family, found by `adapter_for(model)`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from retrofit.errors import ConfigError


@dataclass(frozen=True)
class ModelAdapter:
    """What retrofit knows about one model family.

    `matches` recognises a model of the family; `preferred_heads` names its classification
    module(s) when the family has a convention (detection falls back to the execution trace);
    `load` rebuilds a model from its name, weights, hub id or local path (see retrofit.io.specs).
    `build_kwargs` is the allow-list of architecture arguments an export may pass to `load`,
    each with a check of its value; anything else (e.g. a checkpoint path) needs
    trust_remote_code=True on load.
    `image_transform` builds, from the preprocessing an export records for the family, the
    callable that turns a PIL image into the model's input tensor (see retrofit.extraction.preprocessing).

    Spec strings (retrofit.io.specs only dispatches to these): `prefix` names the family in
    "PREFIX:REST"; `parse_spec(rest, text)` reads REST (default: the name is REST);
    `format_spec` writes it back (default PREFIX:NAME[:WEIGHTS]); `claims_spec(text)` takes a
    spec without a known prefix (a local HF folder); `build(spec, pretrained,
    trust_remote_code)` rebuilds the model (default: load(name, **kwargs)); `derive_spec(model)`
    names a model that did not say its spec; `describe(model, spec)` records the architecture
    arguments a spec string cannot carry; `classifier_width(model)` reads the class count
    (default: the last Linear or 1x1 Conv); `data_transform(model, spec)` is the preprocessing
    the CLI applies to images (None: resize only); `without_backbone` says why an export without
    backbone.safetensors cannot be rebuilt from the spec alone (None: it can);
    `preprocessing(model, spec)` is the record an export keeps of how the model reads an image
    (JSON data tagged with `source`, read back by `image_transform`; None: nothing recorded);
    `class_names(model)` the names the model itself carries for its classes (None: none).
    """

    name: str
    matches: Callable[[nn.Module], bool]
    preferred_heads: Callable[[nn.Module], list[str]] = field(default=lambda model: [])
    load: Callable[..., nn.Module] | None = None
    priority: int = 0
    build_kwargs: Mapping[str, Callable[[Any], bool]] = field(default_factory=dict)
    image_transform: Callable[[Mapping[str, Any]], Callable[[Any], Any]] | None = None
    prefix: str | None = None
    spec_forms: str = ""
    parse_spec: Callable[[str, str], ModelSpec] | None = None
    format_spec: Callable[[ModelSpec], str] | None = None
    claims_spec: Callable[[str], bool] | None = None
    build: Callable[[ModelSpec, bool, bool | None], nn.Module] | None = None
    derive_spec: Callable[[nn.Module], ModelSpec | None] | None = None
    describe: Callable[[nn.Module, ModelSpec], None] | None = None
    classifier_width: Callable[[nn.Module], int | None] | None = None
    data_transform: Callable[[nn.Module, ModelSpec], Callable | None] | None = None
    preprocessing: Callable[[nn.Module, ModelSpec | None], dict[str, Any] | None] | None = None
    class_names: Callable[[nn.Module], list[str] | None] | None = None
    without_backbone: str | None = None


_REGISTRY: dict[str, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Add a family; a higher priority is tried first (the generic rule has the lowest)."""
    _REGISTRY[adapter.name] = adapter
    return adapter


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The first registered family that recognises `model` (the generic rule always does)."""
    for adapter in sorted(_REGISTRY.values(), key=lambda a: -a.priority):
        if adapter.matches(model):
            return adapter
    raise ConfigError(f"No model family recognises {type(model).__name__}.")


def get_adapter(name: str) -> ModelAdapter:
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown model family {name!r}; known families are {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def available_adapters() -> list[str]:
    return sorted(_REGISTRY)


def unregister_adapter(name: str) -> None:
    """Remove a family (for plugins and tests that register one for a while)."""
    _REGISTRY.pop(name, None)


def spec_families() -> dict[str, ModelAdapter]:
    """Spec prefix -> the family that reads specs starting with "PREFIX:"."""
    return {a.prefix: a for a in _REGISTRY.values() if a.prefix}


def last_layer_width(model: nn.Module) -> int | None:
    """The outputs of the last Linear (or 1x1 Conv) module: a classifier's class count."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module.out_features
        elif isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1):
            last = module.out_channels
    return last


def pick(kwargs: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {k: kwargs[k] for k in names if k in kwargs}


def module_name(model: nn.Module, target: nn.Module) -> str | None:
    """The dotted name of `target` inside `model`, found by identity."""
    for name, module in model.named_modules():
        if module is target and name:
            return name
    return None


def plain(value: Any) -> Any:
    """JSON data from a preprocessing setting: tuples become lists, anything else a string."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class ModelSpec:
    """A parsed spec: family, name (model name, hub id, local path or file), weights, extras."""

    family: str
    name: str
    weights: str | None = None  # torchvision weights tag or open_clip pretrained tag
    revision: str | None = None  # HF hub revision
    factory: str | None = None  # python: the factory function in `name`
    kwargs: dict[str, Any] = field(default_factory=dict)  # architecture arguments
    arch_config: dict[str, Any] | None = None  # HF config dict: build offline without weights

    def __str__(self) -> str:
        adapter = get_adapter(self.family)
        if adapter.format_spec is not None:
            return adapter.format_spec(self)
        return f"{adapter.prefix}:{self.name}" + (f":{self.weights}" if self.weights else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": str(self),
            "family": self.family,
            "name": self.name,
            "weights": self.weights,
            "revision": self.revision,
            "factory": self.factory,
            "kwargs": dict(self.kwargs),
            "arch_config": self.arch_config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        family = data.get("family")
        known = sorted(a.name for a in spec_families().values())
        if family not in known or not isinstance(data.get("name"), str):
            raise ConfigError(
                f"A model spec needs a known family ({known}) and a name; got {data!r}."
            )
        return cls(
            family=family,
            name=data["name"],
            weights=data.get("weights"),
            revision=data.get("revision"),
            factory=data.get("factory"),
            kwargs=dict(data.get("kwargs") or {}),
            arch_config=data.get("arch_config"),
        )
