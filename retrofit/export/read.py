"""Read an export folder into the parts of an InterpretableModel, every file checked first."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from retrofit.config import RetrofitConfig
from retrofit.errors import ConfigError, ExportCorruptedError, ExportSchemaError
from retrofit.export.backbone import check_backbone_fits, load_backbone
from retrofit.export.layout import CONFIG_FILE, MODEL_FILE, dequantise
from retrofit.export.schema import (
    attribute_shape,
    check_tensors,
    read_config,
    read_edits,
    read_pairs,
    upgrade_tensors,
    verify_file,
)
from retrofit.extraction.hooks import LayerSpec
from retrofit.fitting.bottleneck import Bottleneck, FixedHead
from retrofit.io.files import check_safetensors_header, safe_member
from retrofit.methods.flint.attributes import AttributeMap


@dataclass
class ExportParts:
    """Everything an InterpretableModel is built from, read and checked from an export folder."""

    backbone: nn.Module
    layer: LayerSpec
    bottleneck: Bottleneck
    head: FixedHead
    config: RetrofitConfig
    class_names: list[str]
    stats: dict[str, Any]
    concepts: list[list[dict[str, Any]]]
    pair_concepts: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    edits: list[dict[str, Any]] = field(default_factory=list)
    class_relevance: torch.Tensor | None = None
    preprocessing: dict[str, Any] | None = None


def read_export(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    strict: bool = True,
    trust_remote_code: bool = False,
) -> ExportParts:
    """Read an export folder; the model built from it gives the saved model's logits.

    The backbone is `model` when given (its fingerprint must match, or with strict=False a
    warning is issued), else backbone.safetensors on the architecture of the base model spec
    when the export includes it, else the base model rebuilt from its spec. A spec that would
    run code or read files outside the export needs trust_remote_code=True (retrofit.io.trust).
    """
    folder = Path(path).expanduser()
    config = read_config(folder)
    tensors = upgrade_tensors(_read_tensors(folder, config), config)
    check_tensors(tensors, config)
    backbone = load_backbone(folder, config, model, strict, trust_remote_code)
    layer = LayerSpec.from_dict(config["base_model"]["layer"])
    check_backbone_fits(backbone, layer, tensors["bottleneck.selected"], config)
    try:
        retrofit_config = RetrofitConfig.from_dict(config["config"])
    except (ConfigError, TypeError, ValueError) as error:
        raise ExportSchemaError(
            f"{folder / CONFIG_FILE}: the 'config' entry is invalid: {error}"
        ) from error
    head = _head(tensors)
    return ExportParts(
        backbone=backbone,
        layer=layer,
        bottleneck=_bottleneck(tensors, config),
        head=head,
        config=retrofit_config,
        class_names=list(config["class_names"]),
        stats=config["stats"],
        concepts=[list(f["concepts"]) for f in config["features"]],
        pair_concepts=read_pairs(
            config.get("pairs", []), head.weight.shape[0], head.weight.shape[1]
        ),
        edits=read_edits(config.get("edits", [])),
        class_relevance=tensors.get("relevance.class"),
        preprocessing=config.get("preprocessing"),
    )


def _read_tensors(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    for name, info in config["files"].items():
        verify_file(safe_member(folder, name, f"{CONFIG_FILE} files"), info)
    check_safetensors_header(folder / MODEL_FILE)
    try:
        return load_file(str(folder / MODEL_FILE))
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportCorruptedError(
            f"{folder / MODEL_FILE} cannot be read ({error}); the export is corrupted."
        ) from error


def _bottleneck(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Bottleneck:
    log_std = tensors["bottleneck.log_std"]
    shape = attribute_shape(config)
    attributes = None
    if shape is not None:
        attributes = AttributeMap(shape["in_features"], shape["n_attributes"], shape["hidden"])
        prefix = "bottleneck.attributes."
        attributes.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        attributes.requires_grad_(False)
    bottleneck = Bottleneck(
        tensors["bottleneck.selected"],
        tensors["bottleneck.mean"],
        log_std.exp(),
        config["base_model"]["feature_dim"],
        linear_mix="bottleneck.mix" in tensors,
        attributes=attributes,
    )
    with torch.no_grad():  # exp/log does not round-trip bit for bit: restore the stored values
        bottleneck.log_std.copy_(log_std)
        if bottleneck.mix is not None:
            bottleneck.mix.copy_(tensors["bottleneck.mix"])
    return bottleneck


def _head(tensors: dict[str, torch.Tensor]) -> FixedHead:
    if "head.assignment" in tensors:
        weight = dequantise(tensors["head.scale"], tensors["head.assignment"])
    else:
        weight = tensors["head.weight"]
    return FixedHead(weight, tensors["head.bias"])
