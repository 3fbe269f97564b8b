"""Save and load interpretable models: safetensors + JSON + a model card, nothing pickled.

An export folder holds
  model.safetensors      adapter (selected indices, mean, log_std, optional mix) and head
                         (int8 assignment + scale when weight == scale·assignment, else weights)
  retrofit_config.json   schema version, base model spec + fingerprint, classes, features with
                         their concepts, the RetrofitConfig, stats, versions, file hashes
  README.md              model card with the global explanation
  backbone.safetensors   the backbone's weights (only with include_backbone=True)
Saving writes a temporary sibling folder and swaps it in, so an interrupted save leaves the
previous export intact (a save killed between the two renames leaves it at `.NAME.old-*`, which
load and the next save move back). Saving replaces only an export or an empty folder.
Loading checks every file against the config (retrofit.export_schema: names inside the folder,
bounded JSON, typed fields, finite tensors) before building anything. Nothing in the folder is
executed or unpickled, and a base model spec that would run code or read files outside the
export (a `python:` factory, a local folder, file-pointing build kwargs) is refused unless
trust_remote_code=True (retrofit.trust).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from retrofit.adapter import Adapter, FixedHead
from retrofit.adapters import adapter_for
from retrofit.attributes import AttributeMap
from retrofit.cache import atomic_write_bytes
from retrofit.config import RetrofitConfig
from retrofit.errors import (
    ConfigError,
    ExportCorruptedError,
    ExportError,
    ExportNotFoundError,
    ExportSchemaError,
    ExportVersionError,
    FingerprintMismatchError,
    ModelError,
)
from retrofit.export_schema import (
    BUILD,
    FIELDS,
    FILE_INFO,
    STATS_INPUT_SIZE,
    check_fields,
    check_safetensors_header,
    read_json,
    safe_member,
)
from retrofit.fingerprint import model_fingerprint
from retrofit.hooks import LayerSpec
from retrofit.model import InterpretableModel
from retrofit.model_card import render_model_card
from retrofit.specs import ModelSpec, build_model, describe_model, preprocessing_of
from retrofit.trust import check_spec

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MODEL_FILE = "model.safetensors"
BACKBONE_FILE = "backbone.safetensors"
CONFIG_FILE = "retrofit_config.json"
README_FILE = "README.md"
REPORT_FILES = frozenset({"report.html", "report.json"})  # written next to an export by `check`
EXPORT_FILES = frozenset({MODEL_FILE, BACKBONE_FILE, CONFIG_FILE, README_FILE}) | REPORT_FILES
TENSOR_METADATA = {"format": "pt"}
_VERSIONED = (
    "torch",
    "torchvision",
    "transformers",
    "timm",
    "open_clip_torch",
    "mip",
    "safetensors",
    "huggingface_hub",
    "numpy",
)


# ---------------------------------------------------------------------------------- saving


def save(
    imodel: InterpretableModel,
    path: str | os.PathLike,
    include_backbone: bool = False,
    base_model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an export folder (see the module docstring); returns its path.

    `base_model` (a spec string, see retrofit.specs) overrides config.base_model and what can
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
    _remove_dead_stagings(target)
    staging = target.parent / f".{target.name}.saving-{_owner()}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        save_file(tensors, str(staging / MODEL_FILE), metadata=TENSOR_METADATA)
        if include_backbone:
            save_model(backbone, str(staging / BACKBONE_FILE), metadata=TENSOR_METADATA)
        files = {name: _file_info(staging / name) for name in (MODEL_FILE, BACKBONE_FILE)}
        config = _config(imodel, spec, head_info, {k: v for k, v in files.items() if v})
        atomic_write_bytes(
            staging / CONFIG_FILE, json.dumps(config, indent=2, allow_nan=False).encode()
        )
        atomic_write_bytes(staging / README_FILE, render_model_card(imodel, config).encode())
        for name in os.listdir(staging):
            _fsync(staging / name)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved the interpretable model to %s", target)
    return target


def check_save_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, holds files no export has, or holds export-named
    files without being an export (a user's own README.md) unless overwrite=True."""
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder; pick a folder path to save to.")
    if not target.is_dir():
        return
    names = set(os.listdir(target))
    foreign = sorted(names - EXPORT_FILES)
    if foreign:
        raise ExportError(
            f"Saving replaces the whole folder {target}, which holds other files "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); save into "
            "an empty or new folder."
        )
    if names and CONFIG_FILE not in names and not overwrite:
        raise ExportError(
            f"{target} holds {', '.join(sorted(names))} but is not a retrofit export; pass "
            "overwrite=True (CLI: --overwrite) to replace them, or save into another folder."
        )


def recover_interrupted_save(target: Path) -> Path | None:
    """Move back the previous export that a save killed between its two renames left at
    `.NAME.old-*`, when `target` itself is missing; returns the restored folder or None."""
    if target.exists() or not target.parent.is_dir():
        return None
    for old in sorted(target.parent.glob(f".{target.name}.old-*"), key=_mtime, reverse=True):
        if not (old.is_dir() and (old / CONFIG_FILE).is_file() and (old / MODEL_FILE).is_file()):
            continue
        try:
            os.rename(old, target)
        except OSError:  # another process restored or saved it first
            return target if target.is_dir() else None
        logger.warning("restored %s from %s, left there by an interrupted save", target, old.name)
        return target
    return None


def _owner() -> str:
    """host~pid of this process, so a later save can tell a killed save's leftovers."""
    return f"{socket.gethostname().replace('.', '_')}~{os.getpid()}"


def _remove_dead_stagings(target: Path) -> None:
    """Delete staging folders of saves on this host whose process no longer exists."""
    host = _owner().split("~")[0]
    for staging in target.parent.glob(f".{target.name}.saving-{host}~*-*"):
        pid = staging.name.rsplit("~", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _swap_in(staging: Path, target: Path) -> None:
    """Rename any old export aside, the new one in, then delete the old one."""
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError as error:
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise ExportError(
            f"Could not move the new export into {target} ({error.strerror or error}); another "
            "process may have saved there at the same time. The previous export is kept."
        ) from error
    _fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    for leftover in target.parent.glob(f".{target.name}.old-*"):  # superseded by a kill -9
        shutil.rmtree(leftover, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_info(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensors(imodel: InterpretableModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter and head as contiguous CPU tensors, and how the head is stored."""
    adapter = imodel.adapter

    def cpu(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to("cpu").contiguous()

    tensors = {
        "adapter.selected": cpu(adapter.selected).to(torch.int64),
        "adapter.mean": cpu(adapter.mean),
        "adapter.log_std": cpu(adapter.log_std),
        "head.bias": cpu(imodel.head.bias),
    }
    if adapter.mix is not None:
        tensors["adapter.mix"] = cpu(adapter.mix)
    if adapter.attributes is not None:
        for name, value in adapter.attributes.state_dict().items():
            tensors[f"adapter.attributes.{name}"] = cpu(value).float()
    if imodel.class_relevance is not None:
        tensors["relevance.class"] = cpu(imodel.class_relevance).float()
    weight = cpu(imodel.head.weight).float()
    assignment = torch.sign(weight).to(torch.int8)
    nonzero = weight[weight != 0]
    scale = torch.tensor(float(nonzero[0].abs()) if nonzero.numel() else 1.0)
    if torch.equal(_dequantise(scale, assignment).view(torch.int32), weight.view(torch.int32)):
        tensors["head.assignment"] = assignment
        tensors["head.scale"] = scale
        return tensors, {"storage": "assignment", "scale": float(scale)}
    tensors["head.weight"] = weight
    return tensors, {"storage": "weight", "scale": None}


def _dequantise(scale: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """The one expression that turns the stored int8 head back into weights, saving and loading."""
    return scale.float() * assignment.float()


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
        "retrofit_version": _version("retrofit"),
        "base_model": {
            "family": adapter_for(backbone).name,
            "class": type(backbone).__name__,
            "build": spec.to_dict() if spec is not None else None,
            "layer": imodel.spec.to_dict(),
            "layer_name": imodel.spec.name,
            "fingerprint": model_fingerprint(backbone),
            "feature_dim": int(imodel.adapter.in_features),
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
            for j, index in enumerate(imodel.adapter.selected.tolist())
        ],
        "pairs": [
            {"class": c, "feature": j, **_jsonable(pair)}
            for (c, j), pair in sorted(imodel.pair_concepts.items())
        ],
        "edits": _jsonable(imodel.edits),
        "head": {**head_info, "nonzero": int((imodel.head.weight != 0).sum())},
        "adapter": {
            "linear_mix": imodel.adapter.mix is not None,
            **(
                {"attributes": imodel.adapter.attributes.describe()}
                if imodel.adapter.attributes is not None
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
        "versions": {name: _version(name) for name in _VERSIONED},
        "files": files,
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


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


# -------------------------------------------------------------------------------- the hub


def push_to_hub(
    imodel: InterpretableModel,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    include_backbone: bool = False,
    base_model: str | None = None,
    commit_message: str | None = None,
) -> Any:
    """Save to a temporary folder and upload it to the Hugging Face Hub (returns the commit info).

    The repository is created (with `private`) only when the first upload finds none.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save(imodel, Path(tmp) / "export", include_backbone, base_model)
        upload = {
            "repo_id": repo_id,
            "folder_path": str(folder),
            "repo_type": "model",
            "commit_message": commit_message or "Upload interpretable model (retrofit)",
        }
        try:
            return api.upload_folder(**upload)
        except RepositoryNotFoundError:
            api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
            return api.upload_folder(**upload)


# --------------------------------------------------------------------------------- loading

# A type, a tuple of types (None allowed), a dict of required keys, or [schema of each item].
_SCHEMA: dict[str, Any] = {
    "schema_version": int,
    "retrofit_version": (str, None),
    "base_model": {
        "family": str,
        "class": str,
        "build": (dict, None),
        "layer": dict,
        "layer_name": str,
        "fingerprint": str,
        "feature_dim": int,
    },
    "preprocessing": (dict, None),
    "class_names": [str],
    "num_classes": int,
    "n_features": int,
    "features": [
        {"feature": int, "backbone_index": int, "name": str, "concepts": [{"concept": str}]}
    ],
    "head": {"storage": str, "scale": (float, None)},
    "adapter": {"linear_mix": bool},
    "config": dict,
    "method": str,
    "stats": dict,
    "metrics": dict,
    "seed": int,
    "versions": dict,
    "files": {MODEL_FILE: {"bytes": int, "sha256": str}},
}


def load(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    strict: bool = True,
    trust_remote_code: bool = False,
) -> InterpretableModel:
    """Load an export folder; its logits equal the saved model's.

    The backbone is `model` when given (its fingerprint must match, or with strict=False a
    warning is issued), else backbone.safetensors on the architecture of the base model spec
    when the export includes it, else the base model rebuilt from its spec. A spec that would
    run code or read files outside the export needs trust_remote_code=True (retrofit.trust).
    """
    folder = Path(path).expanduser()
    config = read_config(folder)
    tensors = _read_tensors(folder, config)
    _check_tensors(tensors, config)
    backbone = _backbone(folder, config, model, strict, trust_remote_code)
    layer = LayerSpec.from_dict(config["base_model"]["layer"])
    _check_backbone_fits(backbone, layer, tensors["adapter.selected"], config)
    try:
        retrofit_config = RetrofitConfig.from_dict(config["config"])
    except (ConfigError, TypeError, ValueError) as error:
        raise ExportSchemaError(
            f"{folder / CONFIG_FILE}: the 'config' entry is invalid: {error}"
        ) from error
    imodel = InterpretableModel(
        backbone,
        layer,
        _adapter(tensors, config),
        _head(tensors),
        retrofit_config,
        class_names=config["class_names"],
        stats=config["stats"],
    )
    imodel.concepts = [list(f["concepts"]) for f in config["features"]]
    imodel.pair_concepts = _pairs(config.get("pairs", []), imodel.num_classes, imodel.n_features)
    imodel.edits = _edits(config.get("edits", []))
    imodel.class_relevance = tensors.get("relevance.class")
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    return imodel.to(device).eval()


def _pairs(
    entries: Any, num_classes: int, n_features: int
) -> dict[tuple[int, int], dict[str, Any]]:
    """Class-conditional names from the config's optional 'pairs' list, bounds-checked."""
    if not isinstance(entries, list):
        raise ExportSchemaError("'pairs' in the export config must be a list of objects.")
    pairs = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("concept"), str):
            raise ExportSchemaError(
                "every entry of 'pairs' needs a 'class', a 'feature' and a 'concept' string."
            )
        c, j = entry.get("class"), entry.get("feature")
        if not (
            isinstance(c, int)
            and 0 <= c < num_classes
            and isinstance(j, int)
            and 0 <= j < n_features
        ):
            raise ExportSchemaError(
                f"'pairs' entry {entry!r} names a class or feature outside the model "
                f"({num_classes} classes, {n_features} features)."
            )
        pairs[(c, j)] = {k: v for k, v in entry.items() if k not in ("class", "feature")}
    return pairs


def _edits(entries: Any) -> list[dict[str, Any]]:
    """The optional provenance of human edits (retrofit.edit), one record per edit call."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ExportSchemaError("'edits' in the export config must be a list of objects.")
    return [dict(entry) for entry in entries]


def read_config(folder: Path) -> dict[str, Any]:
    """retrofit_config.json of an export folder, checked against the schema (the one
    validator that load and the CLI use; see retrofit.export_schema)."""
    if not folder.is_dir():
        recover_interrupted_save(Path(os.path.abspath(folder)))
    if not folder.is_dir():
        raise ExportNotFoundError(f"No export folder at {folder}.")
    for name in (CONFIG_FILE, MODEL_FILE):
        if not safe_member(folder, name, str(folder)).is_file():
            raise ExportNotFoundError(
                f"{folder} is not a complete retrofit export: {name} is missing. Save it again "
                "with imodel.save_pretrained(folder)."
            )
    config = read_json(folder / CONFIG_FILE)
    if not isinstance(config, dict):
        raise ExportSchemaError(f"{folder / CONFIG_FILE} must hold a JSON object.")
    version = config.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ExportVersionError(
            f"{folder / CONFIG_FILE} has schema_version {version!r}; this retrofit "
            f"({_version('retrofit')}) reads version {SCHEMA_VERSION}. "
            + (
                "Upgrade retrofit to load it."
                if isinstance(version, int) and version > SCHEMA_VERSION
                else "The file is not a valid retrofit export."
            )
        )
    _validate(config, _SCHEMA, "")
    check_fields(config, FIELDS, "", CONFIG_FILE)
    _check_consistency(config)
    _check_build(config["base_model"]["build"])
    if not STATS_INPUT_SIZE(config["stats"].get("input_size")):
        raise ExportSchemaError(
            f"{CONFIG_FILE}: stats.input_size must be null or a list of 1 to 3 image sides, got "
            f"{config['stats'].get('input_size')!r:.80}."
        )
    for name, info in config["files"].items():
        safe_member(folder, name, f"{CONFIG_FILE} files")
        if name not in (MODEL_FILE, BACKBONE_FILE):
            raise ExportSchemaError(f"{CONFIG_FILE}: files lists {name!r:.80}, not an export file.")
        check_fields(info, FILE_INFO, f"files.{name}", CONFIG_FILE)
    _pairs(config.get("pairs", []), config["num_classes"], config["n_features"])
    return config


def _check_build(build: dict[str, Any] | None) -> None:
    if build is None:
        return
    check_fields(build, BUILD, "base_model.build", CONFIG_FILE)
    try:
        ModelSpec.from_dict(build)
    except ConfigError as error:
        raise ExportSchemaError(f"{CONFIG_FILE}: base_model.build is invalid: {error}") from error


def _validate(value: Any, schema: Any, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise _schema_error(where, "a JSON object", value)
        for key, sub in schema.items():
            if key not in value:
                raise ExportSchemaError(
                    f"{CONFIG_FILE}: required key {(where + '.' if where else '') + key!r} is missing."
                )
            _validate(value[key], sub, f"{where}.{key}" if where else key)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise _schema_error(where, "a JSON list", value)
        for i, item in enumerate(value):
            _validate(item, schema[0], f"{where}[{i}]")
    else:
        allowed = schema if isinstance(schema, tuple) else (schema,)
        if not any(_is(value, t) for t in allowed):
            names = " or ".join("null" if t is None else t.__name__ for t in allowed)
            raise _schema_error(where, names, value)


def _is(value: Any, kind: Any) -> bool:
    if kind is None:
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _schema_error(where: str, expected: str, value: Any) -> ExportSchemaError:
    return ExportSchemaError(
        f"{CONFIG_FILE}: {where!r} must be {expected}, got {type(value).__name__} {value!r:.80}."
    )


def _check_consistency(config: dict[str, Any]) -> None:
    c, n_f = config["num_classes"], config["n_features"]
    dim = config["base_model"]["feature_dim"]
    if len(config["class_names"]) != c:
        raise ExportSchemaError(
            f"{CONFIG_FILE}: {len(config['class_names'])} class_names for num_classes={c}."
        )
    if len(config["features"]) != n_f:
        raise ExportSchemaError(
            f"{CONFIG_FILE}: {len(config['features'])} features listed for n_features={n_f}."
        )
    if config["head"]["storage"] not in ("assignment", "weight"):
        raise ExportSchemaError(
            f"{CONFIG_FILE}: head.storage must be 'assignment' or 'weight', got "
            f"{config['head']['storage']!r}."
        )
    for j, feature in enumerate(config["features"]):
        if feature["feature"] != j:
            raise ExportSchemaError(f"{CONFIG_FILE}: features[{j}].feature must be {j}.")
        if not 0 <= feature["backbone_index"] < dim:
            raise ExportSchemaError(
                f"{CONFIG_FILE}: features[{j}].backbone_index={feature['backbone_index']} is out "
                f"of range for the backbone's {dim} features (base_model.feature_dim)."
            )


def _read_tensors(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    for name, info in config["files"].items():
        _verify_file(safe_member(folder, name, f"{CONFIG_FILE} files"), info)
    check_safetensors_header(folder / MODEL_FILE)
    try:
        return load_file(str(folder / MODEL_FILE))
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportCorruptedError(
            f"{folder / MODEL_FILE} cannot be read ({error}); the export is corrupted."
        ) from error


def _verify_file(path: Path, info: Any) -> None:
    if not isinstance(info, dict) or not isinstance(info.get("bytes"), int):
        raise ExportSchemaError(f"{CONFIG_FILE}: files[{path.name!r}] must give bytes and sha256.")
    if not path.is_file():
        raise ExportNotFoundError(
            f"{path} is missing but the export lists it; copy the whole folder, or save again."
        )
    size = path.stat().st_size
    if size != info["bytes"]:
        raise ExportCorruptedError(
            f"{path} has {size} bytes but was saved with {info['bytes']}: it is truncated or "
            "was replaced. Copy or download the export again."
        )
    if _sha256(path) != info.get("sha256"):
        raise ExportCorruptedError(
            f"{path} does not match the checksum it was saved with: the file is corrupted. "
            "Copy or download the export again."
        )


def _check_tensors(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    c, n_f = config["num_classes"], config["n_features"]
    dim = config["base_model"]["feature_dim"]
    expected = {
        "adapter.selected": ((n_f,), (torch.int64,)),
        "adapter.mean": ((n_f,), (torch.float32,)),
        "adapter.log_std": ((n_f,), (torch.float32,)),
        "head.bias": ((c,), (torch.float32,)),
    }
    if "relevance.class" in tensors:  # optional: FLINT's r_{j,c}, measured at conversion
        expected["relevance.class"] = ((c, n_f), (torch.float32,))
    attributes = _attribute_shape(config)
    width = attributes["n_attributes"] if attributes else dim
    if config["adapter"]["linear_mix"]:
        expected["adapter.mix"] = ((n_f, width), (torch.float32,))
    if attributes:
        hidden = attributes["hidden"]
        for name, shape in {
            "input_mean": (dim,),
            "input_std": (dim,),
            "hidden.weight": (hidden, dim),
            "hidden.bias": (hidden,),
            "out.weight": (width, hidden),
            "out.bias": (width,),
        }.items():
            expected[f"adapter.attributes.{name}"] = (shape, (torch.float32,))
    if config["head"]["storage"] == "assignment":
        expected["head.assignment"] = ((c, n_f), (torch.int8,))
        expected["head.scale"] = ((), (torch.float32,))
    else:
        expected["head.weight"] = ((c, n_f), (torch.float32,))
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise ExportSchemaError(
            f"{MODEL_FILE} holds tensors {unknown} that {CONFIG_FILE} does not describe."
        )
    for name, (shape, dtypes) in expected.items():
        if name not in tensors:
            raise ExportSchemaError(f"{MODEL_FILE} lacks the tensor {name!r}.")
        tensor = tensors[name]
        if tuple(tensor.shape) != shape or tensor.dtype not in dtypes:
            raise ExportSchemaError(
                f"{MODEL_FILE}: {name} is {tuple(tensor.shape)} {tensor.dtype}, but {CONFIG_FILE} "
                f"(num_classes={c}, n_features={n_f}, feature_dim={dim}) implies {shape} "
                f"{dtypes[0]}."
            )
    selected = tensors["adapter.selected"].tolist()
    listed = [f["backbone_index"] for f in config["features"]]
    if selected != listed:
        raise ExportSchemaError(
            f"{MODEL_FILE} selects backbone features {selected} but {CONFIG_FILE} lists {listed}."
        )
    if attributes and selected and max(selected) >= width:
        raise ExportSchemaError(
            f"{MODEL_FILE} selects attribute {max(selected)} of only {width} FLINT attributes."
        )
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ExportSchemaError(
                f"{MODEL_FILE}: {name} holds NaN or infinite values; the export is corrupted."
            )
    if not torch.isfinite(tensors["adapter.log_std"].exp()).all():
        raise ExportSchemaError(f"{MODEL_FILE}: adapter.log_std is too large to be a scale.")
    if "head.assignment" in tensors and not set(tensors["head.assignment"].unique().tolist()) <= {
        -1,
        0,
        1,
    }:
        raise ExportSchemaError(f"{MODEL_FILE}: head.assignment must hold only -1, 0 and 1.")


def _backbone(
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
            "spec was known when it was saved). Pass the backbone: retrofit.load(folder, model=...)."
        )
    with_weights = BACKBONE_FILE in config["files"]
    check_spec(spec, trust_remote_code, pretrained=not with_weights, where=str(folder))
    if with_weights:
        backbone = _rebuild(spec, folder, pretrained=False, trust_remote_code=trust_remote_code)
        _load_backbone_weights(backbone, folder / BACKBONE_FILE, spec)
        _verify_fingerprint(backbone, base["fingerprint"], strict, f"{BACKBONE_FILE} on {spec}")
        return backbone
    if spec.family == "open_clip":
        raise ExportError(
            f"{folder} holds an open_clip classifier without its backbone; its head (e.g. "
            "zero-shot text embeddings) is not part of the pretrained tag. Pass the classifier "
            "as model=, or save with include_backbone=True."
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
            "retrofit.load(folder, model=...)."
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
        raise FingerprintMismatchError(message + " Pass strict=False to load it anyway.")
    warnings.warn(message, stacklevel=4)


def _check_backbone_fits(
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


def _attribute_shape(config: dict[str, Any]) -> dict[str, int] | None:
    """The FLINT attribute map's shape from config['adapter']['attributes'], checked; or None."""
    shape = config["adapter"].get("attributes")
    if shape is None:
        return None
    keys = ("in_features", "n_attributes", "hidden")
    if not isinstance(shape, dict) or not all(
        _is(shape.get(k), int) and shape[k] >= 1 for k in keys
    ):
        raise ExportSchemaError(
            f"{CONFIG_FILE}: adapter.attributes must give positive integers {list(keys)}."
        )
    if shape["in_features"] != config["base_model"]["feature_dim"]:
        raise ExportSchemaError(
            f"{CONFIG_FILE}: adapter.attributes reads {shape['in_features']} features but the "
            f"backbone gives {config['base_model']['feature_dim']} (base_model.feature_dim)."
        )
    return {k: shape[k] for k in keys}


def _adapter(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Adapter:
    log_std = tensors["adapter.log_std"]
    shape = _attribute_shape(config)
    attributes = None
    if shape is not None:
        attributes = AttributeMap(shape["in_features"], shape["n_attributes"], shape["hidden"])
        prefix = "adapter.attributes."
        attributes.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        attributes.requires_grad_(False)
    adapter = Adapter(
        tensors["adapter.selected"],
        tensors["adapter.mean"],
        log_std.exp(),
        config["base_model"]["feature_dim"],
        linear_mix="adapter.mix" in tensors,
        attributes=attributes,
    )
    with torch.no_grad():  # exp/log does not round-trip bit for bit: restore the stored values
        adapter.log_std.copy_(log_std)
        if adapter.mix is not None:
            adapter.mix.copy_(tensors["adapter.mix"])
    return adapter


def _head(tensors: dict[str, torch.Tensor]) -> FixedHead:
    if "head.assignment" in tensors:
        weight = _dequantise(tensors["head.scale"], tensors["head.assignment"])
    else:
        weight = tensors["head.weight"]
    return FixedHead(weight, tensors["head.bias"])
