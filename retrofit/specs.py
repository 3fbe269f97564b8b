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
stored next to it in `ModelSpec.kwargs` / `arch_config`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from retrofit.adapters import adapter_for, get_adapter
from retrofit.errors import ConfigError, ModelError

# spec prefix -> model family (the bottleneck name)
PREFIXES = {
    "torchvision": "torchvision",
    "timm": "timm",
    "hf": "transformers",
    "open_clip": "open_clip",
    "python": "generic",
    "retrofit": "bundled",
}
# retrofit:NAME -> (module, factory) of a model shipped with retrofit
BUNDLED = {"demo": ("retrofit.datasets.demo", "load_demo_classifier")}
_PREFIX_OF = {family: prefix for prefix, family in PREFIXES.items()}
FORMS = (
    "torchvision:NAME[:WEIGHTS], timm:NAME, hf:ORG/NAME[@REVISION] or hf:/local/folder, "
    "open_clip:ARCH[:TAG], python:path/file.py:factory, retrofit:demo"
)


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
        prefix = _PREFIX_OF[self.family]
        if self.family == "generic":
            return f"{prefix}:{self.name}:{self.factory}"
        if self.family == "transformers":
            return f"{prefix}:{self.name}" + (f"@{self.revision}" if self.revision else "")
        return f"{prefix}:{self.name}" + (f":{self.weights}" if self.weights else "")

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
        if family not in _PREFIX_OF or not isinstance(data.get("name"), str):
            raise ConfigError(
                f"A model spec needs a known family ({sorted(_PREFIX_OF)}) and a name; got {data!r}."
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
    """Parse a spec string (see the module docstring for the forms)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"A model spec must be a non-empty string like {FORMS}; got {text!r}.")
    text = text.strip()
    prefix, sep, rest = text.partition(":")
    if prefix not in PREFIXES or not sep:
        if Path(text).is_dir() and (Path(text) / "config.json").is_file():
            return ModelSpec("transformers", text)
        raise ConfigError(
            f"Cannot parse model spec {text!r}: it must start with one of "
            f"{[p + ':' for p in PREFIXES]}. Forms: {FORMS}."
        )
    if not rest:
        raise ConfigError(f"Model spec {text!r} has nothing after {prefix!r}. Forms: {FORMS}.")
    family = PREFIXES[prefix]
    if prefix == "torchvision":
        name, _, weights = rest.partition(":")
        if not name or ":" in weights:
            raise ConfigError(f"Expected torchvision:NAME[:WEIGHTS], got {text!r}.")
        return ModelSpec(family, name, weights=weights or None)
    if prefix == "open_clip":
        arch, _, tag = rest.partition(":")
        if not arch:
            raise ConfigError(f"Expected open_clip:ARCH[:TAG], got {text!r}.")
        return ModelSpec(family, arch, weights=tag or None)
    if prefix == "python":
        path, sep, factory = rest.rpartition(":")
        if not sep or not path.endswith(".py") or not factory.isidentifier():
            raise ConfigError(
                f"Expected python:path/file.py:factory (a function name after the last ':'), "
                f"got {text!r}."
            )
        return ModelSpec(family, path, factory=factory)
    if prefix == "hf":
        if not Path(rest).is_dir() and "@" in rest:
            name, _, revision = rest.partition("@")
            return ModelSpec(family, name, revision=revision or None)
        return ModelSpec(family, rest)
    return ModelSpec(family, rest)  # timm: everything after the prefix, e.g. "hf-hub:timm/x"


def build_model(
    spec: ModelSpec | str, pretrained: bool = True, trust_remote_code: bool | None = None
) -> nn.Module:
    """Rebuild the model a spec names, through the family's bottleneck `load` function.

    pretrained=False builds the architecture only (random weights, nothing downloaded), for
    weights that come from elsewhere, e.g. an export's backbone.safetensors. trust_remote_code
    is passed to transformers (None: its own default).
    """
    if isinstance(spec, str):
        spec = parse_spec(spec)
    try:
        if spec.family == "generic":
            return _from_python_file(spec)
        if spec.family == "bundled":
            return _bundled(spec)
        if spec.family == "open_clip":
            return _open_clip_classifier(spec, pretrained)
        load = get_adapter(spec.family).load
        if spec.family == "torchvision":
            if pretrained and spec.weights:
                return load(spec.name, weights=spec.weights)
            return load(spec.name, weights=None, **_pick(spec.kwargs, "num_classes"))
        if spec.family == "timm":
            return load(spec.name, pretrained=pretrained, **spec.kwargs)
        if pretrained or spec.arch_config is None:
            local = Path(spec.name)
            if not local.is_dir() and (local.is_absolute() or spec.name.startswith(".")):
                raise ModelError(
                    f"The HF model folder {spec.name} does not exist (any more). Pass the model "
                    "itself, or export with include_backbone=True so the folder stands alone."
                )
            trust = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
            return load(spec.name, revision=spec.revision, **trust)
        return _hf_from_config(spec.arch_config)
    except (ConfigError, ModelError):
        raise
    except Exception as error:  # the family's own loader failed: say which spec and why
        raise ModelError(
            f"Could not build the model {spec} ({type(error).__name__}: {error}). Check the "
            "name and weights, that the files are reachable offline, or pass the model itself."
        ) from error


def _bundled(spec: ModelSpec) -> nn.Module:
    import importlib

    if spec.name not in BUNDLED:
        raise ModelError(f"retrofit ships no model {spec.name!r}; it ships {sorted(BUNDLED)}.")
    module, factory = BUNDLED[spec.name]
    return getattr(importlib.import_module(module), factory)()


def _pick(kwargs: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: kwargs[k] for k in names if k in kwargs}


def _hf_from_config(config_dict: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForImageClassification

    data = dict(config_dict)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    return AutoModelForImageClassification.from_config(config)


def _open_clip_classifier(spec: ModelSpec, pretrained: bool) -> nn.Module:
    from retrofit.adapters.open_clip import OpenCLIPClassifier, load_open_clip

    missing = [k for k in ("num_classes", "embed_dim") if k not in spec.kwargs]
    if missing:
        raise ModelError(
            f"The open_clip spec {spec} lacks the classifier head's shape ({missing}); an "
            "open_clip classifier is rebuilt from an export, or pass the model itself."
        )
    clip = load_open_clip(spec.name, pretrained=spec.weights if pretrained else None)
    head = nn.Linear(
        spec.kwargs["embed_dim"], spec.kwargs["num_classes"], bias=spec.kwargs.get("head_bias")
    )
    return OpenCLIPClassifier(clip.visual, head, float(spec.kwargs.get("logit_scale", 100.0)))


def _from_python_file(spec: ModelSpec) -> nn.Module:
    path = Path(spec.name).expanduser().resolve()
    if not path.is_file():
        raise ModelError(
            f"The model factory file {spec.name} (resolved to {path}) does not exist; python: "
            "specs are relative to the working directory. Pass the model itself instead."
        )
    module_name = (
        "retrofit_factory_" + hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()
    )
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses defined in the file look it up here
    loader_spec.loader.exec_module(module)
    factory = getattr(module, spec.factory or "", None)
    if not callable(factory):
        raise ModelError(f"{path} has no function {spec.factory!r} to build the model.")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"{path}:{spec.factory}() returned {type(model).__name__}, not a torch nn.Module."
        )
    return model


def classifier_width(model: nn.Module) -> int | None:
    """The number of outputs of the model's own classifier, read off its modules."""
    family = adapter_for(model).name
    if family == "timm":
        return int(model.num_classes)
    if family == "transformers":
        return int(model.config.num_labels)
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module.out_features
        elif isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1):
            last = module.out_channels
    return last


def describe_model(model: nn.Module, base_model: str | None = None) -> ModelSpec | None:
    """The spec that rebuilds `model`: an explicit `base_model` string, else one derived from
    the model (HF `config._name_or_path`, timm `pretrained_cfg`), else None.

    The explicit string wins because it is what the user said (e.g. a hub id where the model
    was loaded from a temporary folder). The architecture arguments are always read off the model.
    """
    family = adapter_for(model).name
    spec = parse_spec(base_model) if base_model else _derive(model, family)
    if spec is None:
        return None
    if spec.family == family:
        spec.kwargs.update(_architecture_kwargs(model, family))
        if family == "transformers":
            spec.arch_config = json.loads(model.config.to_json_string(use_diff=False))
    return spec


def _derive(model: nn.Module, family: str) -> ModelSpec | None:
    if family == "transformers":
        config = model.config
        name = getattr(config, "_name_or_path", "") or ""
        if not name:
            return None
        revision = None if Path(name).is_dir() else getattr(config, "_commit_hash", None)
        if Path(name).is_dir():
            name = str(Path(name).resolve())
        return ModelSpec(family, name, revision=revision)
    if family == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        arch = cfg.get("architecture")
        if not arch:
            return None
        return ModelSpec(family, f"{arch}.{cfg['tag']}" if cfg.get("tag") else arch)
    return None


def _architecture_kwargs(model: nn.Module, family: str) -> dict[str, Any]:
    if family == "torchvision":
        width = classifier_width(model)
        return {} if width is None else {"num_classes": width}
    if family == "timm":
        kwargs: dict[str, Any] = {"num_classes": int(model.num_classes)}
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        default = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if img_size is not None and (default is None or tuple(default[1:]) != tuple(img_size)):
            kwargs["img_size"] = list(img_size)
        return kwargs
    if family == "open_clip":
        return {
            "num_classes": model.head.out_features,
            "embed_dim": model.head.in_features,
            "head_bias": model.head.bias is not None,
            "logit_scale": float(model.logit_scale),
        }
    return {}


def preprocessing_of(model: nn.Module, spec: ModelSpec | None) -> dict[str, Any] | None:
    """The input preprocessing the backbone expects, where the family records it; else None."""
    family = adapter_for(model).name
    try:
        if family == "torchvision" and spec is not None and spec.weights:
            import torchvision

            transform = torchvision.models.get_model_weights(spec.name)[spec.weights].transforms()
            return {
                "source": "torchvision",
                "resize_size": list(transform.resize_size),
                "crop_size": list(transform.crop_size),
                "mean": list(transform.mean),
                "std": list(transform.std),
                "interpolation": str(transform.interpolation.value),
            }
        if family == "timm":
            from timm.data import resolve_data_config

            data = resolve_data_config({}, model=model)
            img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
            if img_size is not None:
                data["input_size"] = (data["input_size"][0], *img_size)
            return {"source": "timm", **{k: _plain(v) for k, v in data.items()}}
        if family == "transformers":
            return _hf_preprocessor(getattr(model.config, "_name_or_path", "") or "")
        if family == "open_clip":
            visual = model.visual
            cfg = getattr(visual, "preprocess_cfg", None)
            if cfg:
                return {"source": "open_clip", **{k: _plain(v) for k, v in cfg.items()}}
            mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
            size = getattr(visual, "image_size", None)
            if mean is not None and std is not None:
                return {
                    "source": "open_clip",
                    "size": _plain(size),
                    "mean": _plain(mean),
                    "std": _plain(std),
                }
    except Exception:  # preprocessing is informative only; never fail an export on it
        return None
    return None


def _hf_preprocessor(name: str) -> dict[str, Any] | None:
    """preprocessor_config.json from a local folder or the local HF cache (never the network)."""
    if not name:
        return None
    if Path(name).is_dir():
        file = Path(name) / "preprocessor_config.json"
        path = str(file) if file.is_file() else None
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "preprocessor_config.json")
        path = found if isinstance(found, str) else None
    if path is None:
        return None
    return {"source": "transformers", **json.loads(Path(path).read_text())}


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
