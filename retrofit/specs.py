"""Model spec strings: how an export names the backbone it was built on, and rebuilds it.

  torchvision:NAME[:WEIGHTS]   torchvision.models.get_model(NAME, weights=WEIGHTS)
  timm:NAME                    timm.create_model(NAME, pretrained=True)
  hf:ORG/NAME[@REVISION]       AutoModelForImageClassification.from_pretrained (hub id)
  hf:/local/folder             the same from a local folder (a bare existing folder works too)
  open_clip:ARCH[:TAG]         open_clip.create_model(ARCH, pretrained=TAG), visual tower + head
  python:path/file.py:factory  factory() from a Python file on this machine (path relative to cwd)
  retrofit:NAME                a model shipped with retrofit (`demo`: the bundled demo CNN)

A spec string names the model; the architecture arguments a string cannot carry (class count,
timm img_size, an HF config, an open_clip head) are read off the model by `describe_model` and
stored next to it in `ModelSpec.kwargs` / `arch_config`. Each form is read, written and built
by its family's file in retrofit.adapters (ModelAdapter.prefix, parse_spec, build, ...); this
module only dispatches, so a new family registers its own prefix there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from retrofit.adapters import adapter_for, get_adapter
from retrofit.adapters.base import ModelAdapter, last_layer_width, spec_families
from retrofit.errors import ConfigError, ModelError


def spec_forms() -> str:
    """The spec forms of every registered family, for error messages."""
    return ", ".join(a.spec_forms or f"{a.prefix}:NAME" for a in spec_families().values())


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


def parse_spec(text: str) -> ModelSpec:
    """Parse a spec string "PREFIX:REST"; the family registered for PREFIX reads REST."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"A model spec must be a non-empty string like {spec_forms()}; got {text!r}."
        )
    text = text.strip()
    prefix, sep, rest = text.partition(":")
    families = spec_families()
    if prefix not in families or not sep:
        claimant = _claimant(text)
        if claimant is not None:
            return _parse_with(claimant, text, text)
        raise ConfigError(
            f"Cannot parse model spec {text!r}: it must start with one of "
            f"{[p + ':' for p in families]}. Forms: {spec_forms()}."
        )
    if not rest:
        raise ConfigError(
            f"Model spec {text!r} has nothing after {prefix!r}. Forms: {spec_forms()}."
        )
    return _parse_with(families[prefix], rest, text)


def _claimant(text: str) -> ModelAdapter | None:
    """The family that takes a spec without a known prefix (e.g. a local HF model folder)."""
    return next(
        (a for a in spec_families().values() if a.claims_spec is not None and a.claims_spec(text)),
        None,
    )


def _parse_with(adapter: ModelAdapter, rest: str, text: str) -> ModelSpec:
    if adapter.parse_spec is None:
        return ModelSpec(adapter.name, rest)
    return adapter.parse_spec(rest, text)


def build_model(
    spec: ModelSpec | str, pretrained: bool = True, trust_remote_code: bool | None = None
) -> nn.Module:
    """Rebuild the model a spec names, through its family's `build` (retrofit.adapters).

    pretrained=False builds the architecture only (random weights, nothing downloaded), for
    weights that come from elsewhere, e.g. an export's backbone.safetensors. trust_remote_code
    is passed to transformers (None: its own default).
    """
    if isinstance(spec, str):
        spec = parse_spec(spec)
    try:
        adapter = get_adapter(spec.family)
        if adapter.build is not None:
            return adapter.build(spec, pretrained, trust_remote_code)
        if adapter.load is None:
            raise ModelError(f"The {spec.family} family cannot rebuild a model from a spec.")
        return adapter.load(spec.name, **spec.kwargs)
    except (ConfigError, ModelError):
        raise
    except Exception as error:  # the family's own loader failed: say which spec and why
        raise ModelError(
            f"Could not build the model {spec} ({type(error).__name__}: {error}). Check the "
            "name and weights, that the files are reachable offline, or pass the model itself."
        ) from error


def classifier_width(model: nn.Module) -> int | None:
    """The number of outputs of the model's own classifier, read off its modules."""
    adapter = adapter_for(model)
    if adapter.classifier_width is not None:
        return adapter.classifier_width(model)
    return last_layer_width(model)


def describe_model(model: nn.Module, base_model: str | None = None) -> ModelSpec | None:
    """The spec that rebuilds `model`: an explicit `base_model` string, else one derived from
    the model (HF `config._name_or_path`, timm `pretrained_cfg`), else None.

    The explicit string wins because it is what the user said (e.g. a hub id where the model
    was loaded from a temporary folder). The architecture arguments are always read off the model.
    """
    adapter = adapter_for(model)
    if base_model:
        spec = parse_spec(base_model)
    else:
        spec = adapter.derive_spec(model) if adapter.derive_spec is not None else None
    if spec is None:
        return None
    if spec.family == adapter.name and adapter.describe is not None:
        adapter.describe(model, spec)
    return spec


def preprocessing_of(model: nn.Module, spec: ModelSpec | None) -> dict[str, Any] | None:
    """The input preprocessing the backbone expects, where its family records it; else None."""
    hook = adapter_for(model).preprocessing
    if hook is None:
        return None
    try:
        return hook(model, spec)
    except Exception:  # preprocessing is informative only; never fail an export on it
        return None
