"""The bounds an export must keep before anything in it is used: one validator for load and CLI.

An export folder is untrusted input. Before its config or tensors reach any other code:
  - every file it names is a plain name inside the folder and a regular file of bounded size
    (retrofit.io.files), whose size and sha256 match the config;
  - the JSON is bounded in size and depth, has no NaN/Infinity, and every field the loader
    uses has a type and a range (`FIELDS`);
  - the tensors have the names, shapes and dtypes the config implies, and are finite.
Free-form entries (stats, versions, concept scores) only get the global size and depth bounds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from retrofit.errors import (
    ConfigError,
    ExportCorruptedError,
    ExportNotFoundError,
    ExportSchemaError,
    ExportVersionError,
)
from retrofit.export.layout import (
    BACKBONE_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    SCHEMA_VERSION,
    package_version,
)
from retrofit.export.staging import recover_interrupted_save
from retrofit.io.files import (
    MAX_COUNT,
    MAX_FEATURE_DIM,
    MAX_FILE_BYTES,
    MAX_IMAGE_SIDE,
    any_object,
    flag,
    one_of,
    optional,
    read_json,
    real,
    safe_member,
    sha256_of,
    sizes,
    text,
    whole,
)
from retrofit.io.specs import ModelSpec

MAPS_LAYOUTS = ("nchw", "nhwc", "tokens", "head_input")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MODULE_NAME = r"[^\s.][^\s]*"  # a dotted module path, never "" (the whole model)
LAYER = {
    "heads": [text(1024, MODULE_NAME)],
    "module": optional(text(1024, MODULE_NAME)),
    "use_input": flag,
    "maps_module": optional(text(1024, MODULE_NAME)),
    "maps_layout": optional(one_of(*MAPS_LAYOUTS)),
}
BUILD = {
    "family": text(64),
    "name": text(4096),
    "weights": optional(text(256)),
    "revision": optional(text(256)),
    "factory": optional(text(256, r"[A-Za-z_][A-Za-z0-9_]*")),
    "kwargs": any_object,
    "arch_config": optional(any_object),
}
FILE_INFO = {"bytes": whole(0, MAX_FILE_BYTES), "sha256": text(64, _SHA256.pattern)}
FIELDS: dict[str, Any] = {
    "num_classes": whole(1, MAX_COUNT),
    "n_features": whole(1, MAX_COUNT),
    "class_names": [text(1024)],
    "seed": whole(-(1 << 63), (1 << 64) - 1),
    "base_model": {
        "family": text(64),
        "class": text(1024),
        "layer": LAYER,
        "layer_name": text(4096),
        "fingerprint": text(256),
        "feature_dim": whole(1, MAX_FEATURE_DIM),
    },
    "head": {"storage": one_of("assignment", "weight"), "scale": optional(real())},
    "features": [{"name": text(4096), "concepts": [{"concept": text(4096)}]}],
}
STATS_INPUT_SIZE = optional(sizes(1, 3, MAX_IMAGE_SIDE))
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
    "bottleneck": {"linear_mix": bool},
    "config": dict,
    "method": str,
    "stats": dict,
    "metrics": dict,
    "seed": int,
    "versions": dict,
    "files": {MODEL_FILE: {"bytes": int, "sha256": str}},
}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """An export config of an older schema version in today's shape (files are not touched)."""
    if config.get("schema_version") == 1 and isinstance(config.get("adapter"), dict):
        upgraded = {k: v for k, v in config.items() if k != "adapter"}
        upgraded.update(schema_version=2, bottleneck=config["adapter"], upgraded_from=1)
        return upgraded
    return config


def upgrade_tensors(
    tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """model.safetensors of a schema-1 export under today's tensor names."""
    if config.get("upgraded_from") != 1:
        return tensors
    old = "adapter."
    return {
        ("bottleneck." + k[len(old) :] if k.startswith(old) else k): v for k, v in tensors.items()
    }


def read_config(folder: Path) -> dict[str, Any]:
    """retrofit_config.json of an export folder, checked against the schema (the one
    validator that load and the CLI use; see this module)."""
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
    config = upgrade_config(config)
    version = config.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ExportVersionError(
            f"{folder / CONFIG_FILE} has schema_version {version!r}; this retrofit "
            f"({package_version('retrofit')}) reads version {SCHEMA_VERSION}. "
            + (
                "Upgrade retrofit to load it."
                if isinstance(version, int) and version > SCHEMA_VERSION
                else "The file is not a valid retrofit export."
            )
        )
    _validate(config, _SCHEMA, "")
    check_fields(config, FIELDS, "", CONFIG_FILE)
    _check_consistency(config)
    check_pooled_layers(config)
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
    read_pairs(config.get("pairs", []), config["num_classes"], config["n_features"])
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


def verify_file(path: Path, info: Any) -> None:
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
    if sha256_of(path) != info.get("sha256"):
        raise ExportCorruptedError(
            f"{path} does not match the checksum it was saved with: the file is corrupted. "
            "Copy or download the export again."
        )


def check_tensors(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    c, n_f = config["num_classes"], config["n_features"]
    dim = config["base_model"]["feature_dim"]
    expected = {
        "bottleneck.selected": ((n_f,), (torch.int64,)),
        "bottleneck.mean": ((n_f,), (torch.float32,)),
        "bottleneck.log_std": ((n_f,), (torch.float32,)),
        "head.bias": ((c,), (torch.float32,)),
    }
    if "relevance.class" in tensors:  # optional: FLINT's r_{j,c}, measured at conversion
        expected["relevance.class"] = ((c, n_f), (torch.float32,))
    attributes = attribute_shape(config)
    width = attributes["n_attributes"] if attributes else dim
    if config["bottleneck"]["linear_mix"]:
        expected["bottleneck.mix"] = ((n_f, width), (torch.float32,))
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
            expected[f"bottleneck.attributes.{name}"] = (shape, (torch.float32,))
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
    selected = tensors["bottleneck.selected"].tolist()
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
    if not torch.isfinite(tensors["bottleneck.log_std"].exp()).all():
        raise ExportSchemaError(f"{MODEL_FILE}: bottleneck.log_std is too large to be a scale.")
    if "head.assignment" in tensors and not set(tensors["head.assignment"].unique().tolist()) <= {
        -1,
        0,
        1,
    }:
        raise ExportSchemaError(f"{MODEL_FILE}: head.assignment must hold only -1, 0 and 1.")


def attribute_shape(config: dict[str, Any]) -> dict[str, int] | None:
    """The FLINT attribute map's shape from config['bottleneck']['attributes'], checked; or None."""
    shape = config["bottleneck"].get("attributes")
    if shape is None:
        return None
    keys = ("in_features", "n_attributes", "hidden")
    if not isinstance(shape, dict) or not all(
        _is(shape.get(k), int) and shape[k] >= 1 for k in keys
    ):
        raise ExportSchemaError(
            f"{CONFIG_FILE}: bottleneck.attributes must give positive integers {list(keys)}."
        )
    if shape["in_features"] != config["base_model"]["feature_dim"]:
        raise ExportSchemaError(
            f"{CONFIG_FILE}: bottleneck.attributes reads {shape['in_features']} features but the "
            f"backbone gives {config['base_model']['feature_dim']} (base_model.feature_dim)."
        )
    return {k: shape[k] for k in keys}


def read_pairs(
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


def read_edits(entries: Any) -> list[dict[str, Any]]:
    """The optional provenance of human edits (retrofit.edit), one record per edit call."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ExportSchemaError("'edits' in the export config must be a list of objects.")
    return [dict(entry) for entry in entries]


def check_fields(value: Any, schema: Any, where: str, file: str) -> None:
    """Check `value` against a FIELDS-style schema: dicts of required keys, [item], or a check."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ExportSchemaError(f"{file}: {where!r} must be a JSON object.")
        for key, sub in schema.items():
            if key not in value:
                raise ExportSchemaError(f"{file}: required key {_join(where, key)!r} is missing.")
            check_fields(value[key], sub, _join(where, key), file)
    elif isinstance(schema, list):
        if not isinstance(value, list) or len(value) > MAX_COUNT:
            raise ExportSchemaError(f"{file}: {where!r} must be a JSON list.")
        for i, item in enumerate(value):
            check_fields(item, schema[0], f"{where}[{i}]", file)
    elif not schema(value):
        raise ExportSchemaError(
            f"{file}: {where!r} has a value of the wrong type or out of range: "
            f"{type(value).__name__} {value!r:.80}."
        )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_pooled_layers(config: dict[str, Any]) -> None:
    """base_model.layer.pooled_layers (FLINT's flint_layers): bounded distinct module names,
    only on a model whose FLINT attributes read them, and the same list as config.flint_layers."""
    from retrofit.extraction.pooled_layers import MAX_POOLED_LAYERS

    names = config["base_model"]["layer"].get("pooled_layers")
    stored = config["config"].get("flint_layers")
    if names is None:
        if stored:
            raise ExportSchemaError(
                f"{CONFIG_FILE}: config.flint_layers is {stored!r:.120} but base_model.layer has "
                "no pooled_layers; the export is inconsistent."
            )
        return
    module = text(1024, MODULE_NAME)
    if (
        not isinstance(names, list)
        or not 1 <= len(names) <= MAX_POOLED_LAYERS
        or not all(module(n) for n in names)
        or len(set(names)) != len(names)
    ):
        raise ExportSchemaError(
            f"{CONFIG_FILE}: base_model.layer.pooled_layers must be a list of 1 to "
            f"{MAX_POOLED_LAYERS} distinct module names, got {names!r:.120}."
        )
    if config["bottleneck"].get("attributes") is None:
        raise ExportSchemaError(
            f"{CONFIG_FILE}: base_model.layer.pooled_layers is set but the bottleneck has no "
            "FLINT attributes to read them."
        )
    if stored != names:
        raise ExportSchemaError(
            f"{CONFIG_FILE}: base_model.layer.pooled_layers {names!r:.120} differs from "
            f"config.flint_layers {stored!r:.120}."
        )
