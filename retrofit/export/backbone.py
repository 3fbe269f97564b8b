"""The backbone of a loaded export: the one passed, its stored weights, or rebuilt from its spec."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model
from torch import nn

from retrofit.adapters import get_adapter
from retrofit.errors import (
    ConfigError,
    ExportCorruptedError,
    ExportError,
    ExportSchemaError,
    FingerprintMismatchError,
    ModelError,
)
from retrofit.export.layout import BACKBONE_FILE, CONFIG_FILE
from retrofit.extraction.fingerprint import model_fingerprint
from retrofit.extraction.hooks import LayerSpec
from retrofit.io.files import check_safetensors_header
from retrofit.io.specs import ModelSpec, build_model, spec_forms
from retrofit.io.trust import check_spec


def load_backbone(
    folder: Path,
    config: dict[str, Any],
    model: nn.Module | None,
    strict: bool,
    trust_remote_code: bool = False,
) -> nn.Module:
    base = config["base_model"]
    if model is not None:
        _verify_fingerprint(model, base["fingerprint"], strict, "the model passed as model=")
        return model
    try:
        spec = ModelSpec.from_dict(base["build"]) if base["build"] is not None else None
    except ConfigError as error:
        raise ExportSchemaError(f"{CONFIG_FILE}: base_model.build is invalid: {error}") from error
    if spec is None:
        raise ExportError(
            f"{folder} does not say how to rebuild its {base['class']} backbone (no base model "
            "spec was known when it was saved). Pass the backbone: retrofit.load(folder, "
            f"model=...), or save it with base_model='...' (a spec: {spec_forms()}) and "
            "include_backbone=True so the folder stands alone."
        )
    with_weights = BACKBONE_FILE in config["files"]
    if not with_weights and base.get("weights_from_spec") is False:
        raise ExportError(
            f"{folder} holds no backbone weights, and its base model spec {spec} does not "
            "rebuild them (the backbone was built without pretrained weights, loaded other "
            "weights or was fine-tuned). Pass the backbone: retrofit.load(folder, model=...), "
            "or save with include_backbone=True so the folder stands alone."
        )
    check_spec(spec, trust_remote_code, pretrained=not with_weights, where=str(folder))
    if with_weights:
        backbone = _rebuild(spec, folder, pretrained=False, trust_remote_code=trust_remote_code)
        _load_backbone_weights(backbone, folder / BACKBONE_FILE, spec)
        _verify_fingerprint(backbone, base["fingerprint"], strict, f"{BACKBONE_FILE} on {spec}")
        return backbone
    reason = get_adapter(spec.family).without_backbone
    if reason:
        raise ExportError(
            f"{folder} holds an {spec.family} classifier without its backbone; {reason} Pass "
            "the classifier as model=, or save with include_backbone=True."
        )
    backbone = _rebuild(spec, folder, pretrained=True, trust_remote_code=trust_remote_code)
    _verify_fingerprint(backbone, base["fingerprint"], strict, f"the model rebuilt from {spec}")
    return backbone


def _rebuild(
    spec: ModelSpec, folder: Path, pretrained: bool, trust_remote_code: bool = False
) -> nn.Module:
    try:
        return build_model(spec, pretrained, trust_remote_code=trust_remote_code).eval()
    except (ModelError, ConfigError) as error:
        raise ExportError(
            f"Cannot rebuild the backbone of {folder}: {error} You can also pass it: "
            "retrofit.load(folder, model=...), or save with include_backbone=True so the "
            "folder stands alone."
        ) from error


def _load_backbone_weights(backbone: nn.Module, path: Path, spec: ModelSpec) -> None:
    check_safetensors_header(path)
    try:
        missing, unexpected = load_model(backbone, str(path), strict=False)
    except (SafetensorError, OSError) as error:
        raise ExportCorruptedError(f"{path} cannot be read ({error}).") from error
    except RuntimeError as error:  # shapes that do not fit the architecture
        raise ExportSchemaError(
            f"{path} does not fit the architecture built from {spec}: {error}"
        ) from error
    if missing or unexpected:
        raise ExportSchemaError(
            f"{path} does not fit the architecture built from {spec}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )


def _verify_fingerprint(model: nn.Module, expected: str, strict: bool, what: str) -> None:
    actual = model_fingerprint(model)
    if actual == expected:
        return
    message = (
        f"The backbone ({what}) is not the one this export was made from: its weights "
        f"fingerprint is {actual}, the export expects {expected}. Its features, and so the "
        "explanations, would differ."
    )
    if strict:
        if what.startswith("the model rebuilt from"):
            message += (
                " Its spec does not rebuild its weights: pass the backbone, "
                "retrofit.load(folder, model=...), or save with include_backbone=True."
            )
        raise FingerprintMismatchError(message + " Pass strict=False to load it anyway.")
    warnings.warn(message, stacklevel=4)


def check_backbone_fits(
    backbone: nn.Module, layer: LayerSpec, selected: torch.Tensor, config: dict[str, Any]
) -> None:
    """The hooked modules exist and their feature width fits the selected indices."""
    modules = dict(backbone.named_modules())
    names = layer.heads or ((layer.module,) if layer.module else ())
    missing = [n for n in names if n not in modules]
    if missing or not names:
        raise ExportSchemaError(
            f"The backbone ({type(backbone).__name__}) has no module {missing or names} where the "
            f"export takes its features ({config['base_model']['layer_name']}); it is a "
            "different architecture."
        )
    absent = [n for n in layer.pooled_layers if n not in modules]
    if absent:
        raise ExportSchemaError(
            f"The backbone ({type(backbone).__name__}) has no module {absent} whose pooled output "
            "the export's FLINT attributes read (flint_layers); it is a different architecture."
        )
    if layer.pooled_layers:
        return  # the pooled layers' widths are only known after a forward pass
    widths = [_input_width(modules[n]) for n in layer.heads]
    if not layer.heads or None in widths:
        return  # the width of a named module's output is only known after a forward pass
    width = sum(widths)
    if selected.numel() and int(selected.max()) >= width:
        raise ExportSchemaError(
            f"The export selects backbone feature {int(selected.max())}, out of range for this "
            f"backbone's {width} features ({config['base_model']['layer_name']})."
        )
    if width != config["base_model"]["feature_dim"]:
        raise ExportSchemaError(
            f"This backbone has {width} features at {config['base_model']['layer_name']}, the "
            f"export was made on {config['base_model']['feature_dim']}."
        )


def _input_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels
    return None
