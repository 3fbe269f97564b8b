"""Write an export folder: tensors, config and model card, swapped in only when complete."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file, save_model

from retrofit.adapters import adapter_for
from retrofit.errors import ExportError
from retrofit.export.layout import (
    BACKBONE_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    README_FILE,
    SCHEMA_VERSION,
    TENSOR_METADATA,
    VERSIONED_PACKAGES,
    dequantise,
    package_version,
)
from retrofit.export.model_card import render_model_card
from retrofit.export.staging import (
    check_save_target,
    fsync,
    owner_tag,
    recover_interrupted_save,
    remove_dead_stagings,
    swap_in,
)
from retrofit.extraction.fingerprint import model_fingerprint
from retrofit.io.files import as_umask_allows, atomic_write_bytes, sha256_of
from retrofit.io.specs import ModelSpec, describe_model, preprocessing_of, weights_from_spec

if TYPE_CHECKING:
    from retrofit.model.interpretable import InterpretableModel

logger = logging.getLogger(__name__)


def save(
    imodel: InterpretableModel,
    path: str | os.PathLike,
    include_backbone: bool = False,
    base_model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an export folder (see the module docstring); returns its path.

    `base_model` (a spec string, see retrofit.io.specs) overrides config.base_model and what can
    be derived from the model. include_backbone=True stores the backbone's weights so the folder
    stands alone; it needs a spec for the architecture. An existing export is replaced once the
    new one is complete; a folder holding anything else is refused, except that files an export
    also has (e.g. your own README.md) are replaced with overwrite=True.
    """
    target = Path(path).expanduser().resolve()
    recover_interrupted_save(target)
    check_save_target(target, overwrite)
    backbone = imodel.backbone
    spec = describe_model(backbone, base_model or imodel.config.base_model)
    if include_backbone and spec is None:
        raise ExportError(
            f"include_backbone=True needs the backbone's architecture, which cannot be derived "
            f"from a {type(backbone).__name__}: pass base_model= a spec string such as "
            "'torchvision:resnet18' or 'python:models.py:build_model' (a factory function)."
        )
    if imodel.config.finetune == "backbone" and not include_backbone:
        warnings.warn(
            "The backbone was fine-tuned, so it cannot be rebuilt from its base model spec; "
            "load this export with model=<the fine-tuned backbone>, or save with "
            "include_backbone=True.",
            stacklevel=3,
        )
    tensors, head_info = _tensors(imodel)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_stagings(target)
    staging = target.parent / f".{target.name}.saving-{owner_tag()}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        save_file(tensors, str(staging / MODEL_FILE), metadata=TENSOR_METADATA)
        as_umask_allows(staging / MODEL_FILE)
        if include_backbone:
            save_model(backbone, str(staging / BACKBONE_FILE), metadata=TENSOR_METADATA)
            as_umask_allows(staging / BACKBONE_FILE)
        files = {name: file_info(staging / name) for name in (MODEL_FILE, BACKBONE_FILE)}
        config = _config(imodel, spec, head_info, {k: v for k, v in files.items() if v})
        atomic_write_bytes(
            staging / CONFIG_FILE, json.dumps(config, indent=2, allow_nan=False).encode()
        )
        atomic_write_bytes(staging / README_FILE, render_model_card(imodel, config).encode())
        for name in os.listdir(staging):
            fsync(staging / name)
        swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved the interpretable model to %s", target)
    return target


def file_info(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def _tensors(imodel: InterpretableModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The bottleneck and head as contiguous CPU tensors, and how the head is stored."""
    bottleneck = imodel.bottleneck

    def cpu(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to("cpu").contiguous()

    tensors = {
        "bottleneck.selected": cpu(bottleneck.selected).to(torch.int64),
        "bottleneck.mean": cpu(bottleneck.mean),
        "bottleneck.log_std": cpu(bottleneck.log_std),
        "head.bias": cpu(imodel.head.bias),
    }
    if bottleneck.mix is not None:
        tensors["bottleneck.mix"] = cpu(bottleneck.mix)
    if bottleneck.attributes is not None:
        for name, value in bottleneck.attributes.state_dict().items():
            tensors[f"bottleneck.attributes.{name}"] = cpu(value).float()
    if imodel.class_relevance is not None:
        tensors["relevance.class"] = cpu(imodel.class_relevance).float()
    weight = cpu(imodel.head.weight).float()
    assignment = torch.sign(weight).to(torch.int8)
    nonzero = weight[weight != 0]
    scale = torch.tensor(float(nonzero[0].abs()) if nonzero.numel() else 1.0)
    if torch.equal(dequantise(scale, assignment).view(torch.int32), weight.view(torch.int32)):
        tensors["head.assignment"] = assignment
        tensors["head.scale"] = scale
        return tensors, {"storage": "assignment", "scale": float(scale)}
    tensors["head.weight"] = weight
    return tensors, {"storage": "weight", "scale": None}


def _config(
    imodel: InterpretableModel,
    spec: ModelSpec | None,
    head_info: dict[str, Any],
    files: dict[str, Any],
) -> dict[str, Any]:
    backbone = imodel.backbone
    stats = _jsonable(imodel.stats)
    return {
        "schema_version": SCHEMA_VERSION,
        "retrofit_version": package_version("retrofit"),
        "base_model": {
            "family": adapter_for(backbone).name,
            "class": type(backbone).__name__,
            "build": spec.to_dict() if spec is not None else None,
            # whether rebuilding `build` gives the backbone's weights (None: not known)
            "weights_from_spec": (
                False if imodel.config.finetune == "backbone" else weights_from_spec(backbone, spec)
            ),
            "layer": imodel.spec.to_dict(),
            "layer_name": imodel.spec.name,
            "fingerprint": model_fingerprint(backbone),
            "feature_dim": int(imodel.bottleneck.in_features),
        },
        "preprocessing": _jsonable(preprocessing_of(backbone, spec)),
        "class_names": list(imodel.class_names),
        "num_classes": imodel.num_classes,
        "n_features": imodel.n_features,
        "features": [
            {
                "feature": j,
                "backbone_index": int(index),
                "name": imodel.feature_name(j),
                "concepts": _jsonable(imodel.concepts[j]),
            }
            for j, index in enumerate(imodel.bottleneck.selected.tolist())
        ],
        "pairs": [
            {"class": c, "feature": j, **_jsonable(pair)}
            for (c, j), pair in sorted(imodel.pair_concepts.items())
        ],
        "edits": _jsonable(imodel.edits),
        "head": {**head_info, "nonzero": int((imodel.head.weight != 0).sum())},
        "bottleneck": {
            "linear_mix": imodel.bottleneck.mix is not None,
            **(
                {"attributes": imodel.bottleneck.attributes.describe()}
                if imodel.bottleneck.attributes is not None
                else {}
            ),
        },
        "config": _jsonable(imodel.config.to_dict()),
        "method": imodel.config.method,
        "stats": stats,
        "metrics": {
            k: stats[k] for k in ("train", "val", "test") if isinstance(stats.get(k), dict)
        },
        "seed": imodel.config.seed,
        "versions": {name: package_version(name) for name in VERSIONED_PACKAGES},
        "files": files,
    }


def _jsonable(value: Any) -> Any:
    """Plain JSON data: tensors and numpy values become numbers or lists; non-finite floats None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars and arrays
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return str(value)
