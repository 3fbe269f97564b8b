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

from typing import Any

from torch import nn

from retrofit.adapters import adapter_for, get_adapter
from retrofit.adapters.base import ModelAdapter, ModelSpec, last_layer_width, spec_families
from retrofit.errors import ConfigError, ModelError


def spec_forms() -> str:
    """The spec forms of every registered family, for error messages."""
    return ", ".join(a.spec_forms or f"{a.prefix}:NAME" for a in spec_families().values())


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
            model = adapter.build(spec, pretrained, trust_remote_code)
        elif adapter.load is None:
            raise ModelError(f"The {spec.family} family cannot rebuild a model from a spec.")
        else:
            model = adapter.load(spec.name, **spec.kwargs)
        record_spec(model, spec, _weights_from_spec(spec, pretrained))
        return model
    except (ConfigError, ModelError):
        raise
    except Exception as error:  # the family's own loader failed: say which spec and why
        raise ModelError(
            f"Could not build the model {spec} ({type(error).__name__}: {error}). Check the "
            "name and weights, that the files are reachable offline, or pass the model itself."
        ) from error


# the attribute build_model sets on the models it builds: (spec, weights_from_spec)
_RECORD = "_retrofit_built_from"


def _weights_from_spec(spec: ModelSpec, pretrained: bool) -> bool | None:
    """Whether building `spec` again gives these weights: True (pretrained weights, retrofit's
    shipped ones), False (an architecture with random weights), None (unknown: a factory)."""
    if spec.family == "bundled":
        return True
    if spec.family == "generic":
        return None
    if spec.family == "transformers":
        return pretrained or spec.arch_config is None
    if spec.family == "torchvision":
        return pretrained and bool(spec.weights)
    return pretrained


def record_spec(model: nn.Module, spec: ModelSpec, weights_from_spec: bool | None) -> None:
    """Remember on `model` the spec it was built from, so saving it needs no base_model=;
    `weights_from_spec` says whether that spec rebuilds its weights too (see build_model)."""
    copy = ModelSpec.from_dict(spec.to_dict())
    object.__setattr__(model, _RECORD, (copy, weights_from_spec))


def recorded_spec(model: nn.Module) -> tuple[ModelSpec, bool | None] | None:
    """(spec, weights_from_spec) that build_model recorded on `model`, or None."""
    record = getattr(model, _RECORD, None)
    if record is None:
        return None
    spec, weights = record
    return ModelSpec.from_dict(spec.to_dict()), weights


def weights_from_spec(model: nn.Module, spec: ModelSpec | None) -> bool | None:
    """Whether rebuilding `spec` gives `model`'s weights, when build_model recorded it (False
    once other weights were loaded into it); None when unknown."""
    record = recorded_spec(model)
    if spec is None or record is None or str(record[0]) != str(spec):
        return None
    return record[1]


def classifier_width(model: nn.Module) -> int | None:
    """The number of outputs of the model's own classifier, read off its modules."""
    adapter = adapter_for(model)
    if adapter.classifier_width is not None:
        return adapter.classifier_width(model)
    return last_layer_width(model)


def describe_model(model: nn.Module, base_model: str | None = None) -> ModelSpec | None:
    """The spec that rebuilds `model`: an explicit `base_model` string, else the spec
    build_model recorded on it, else one derived from the model (HF `config._name_or_path`,
    timm `pretrained_cfg`), else None.

    The explicit string wins because it is what the user said (e.g. a hub id where the model
    was loaded from a temporary folder). The architecture arguments are always read off the model.
    """
    adapter = adapter_for(model)
    record = recorded_spec(model)
    if base_model:
        spec = parse_spec(base_model)
    elif record is not None:  # build_model built it: the spec it was built from
        spec = record[0]
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


def load_weights(model: nn.Module, path: str, what: str = "--weights") -> nn.Module:
    """Load the safetensors state dict in `path` into `model`; a WeightsFileError naming the
    file (and the first mismatching keys) when it is not safetensors or does not fit."""
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from retrofit.errors import WeightsFileError

    file = Path(path)
    if not file.is_file():
        state = "is a folder" if file.is_dir() else "does not exist"
        raise WeightsFileError(f"{what} {path} {state}; pass a .safetensors file.")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsFileError(
            f"{what} {path} is not a readable safetensors file ({' '.join(str(error).split())}"
            "); save the state dict with safetensors.torch.save_file(model.state_dict(), path)."
        ) from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    resized = sorted(
        k
        for k in set(expected) & set(tensors)
        if tuple(expected[k].shape) != tuple(tensors[k].shape)
    )
    if missing or unexpected or resized:
        parts = [
            f"{label} {len(keys)} ({', '.join(k[:80] for k in keys[:3])}"
            f"{', ...' if len(keys) > 3 else ''})"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", resized),
            )
            if keys
        ]
        prefixes = {k.split(".", 1)[0] for k in tensors}
        prefix = f"{prefixes.pop()}." if len(prefixes) == 1 else ""
        hint = (
            f" Every key starts with {prefix!r:.40}: strip it when saving."
            if prefix and {k[len(prefix) :] for k in tensors} == set(expected)
            else ""
        )
        if resized:
            hint += " A classifier of another width needs --num-classes N."
        raise WeightsFileError(
            f"{what} {path} does not fit the model {type(model).__name__}: keys "
            f"{'; '.join(parts)}. Pass weights saved from this architecture.{hint}"
        )
    model.load_state_dict(tensors)
    record = recorded_spec(model)
    if record is not None:  # its spec no longer rebuilds these weights
        record_spec(model, record[0], False)
    return model
