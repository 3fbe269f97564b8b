"""Consent before code: what an export's base model spec may make load run or read.

Loading rebuilds the backbone from the spec in the export's config. Anything that would run
code or read files the export names is refused unless the user passes trust_remote_code=True:
  - `python:file.py:factory` specs (they execute a Python file);
  - local folders (timm/open_clip `local-dir:`) and open_clip tags that are file paths (they
    read files outside the export);
  - local HF folders (`hf:/path`) unless they are plain: a config.json (and any
    preprocessor_config.json) without `auto_map`, safetensors weights, and no Python file or
    pickle (.bin, .pt, ...) that loading could run; reading plain weights runs no code;
  - HF configs with custom code (`auto_map`);
  - build kwargs outside the family's allow-list (`build_kwargs` of its bottleneck, e.g. timm's
    `checkpoint_path` or `pretrained_cfg_overlay` would read a checkpoint of the export's choice).
Allow-listed kwargs are checked for type and range even when trusted.
"""

from __future__ import annotations

import re
from itertools import islice
from pathlib import Path
from typing import Any

from retrofit.adapters import available_adapters, get_adapter
from retrofit.adapters.bundled import BUNDLED
from retrofit.errors import ExportSchemaError, RetrofitError, UntrustedCodeError
from retrofit.io.specs import ModelSpec

HOW = "Pass trust_remote_code=True (CLI: --trust-remote-code) only if you trust where this export came from."
_LOCAL_PREFIXES = ("local-dir:", "file:")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_CODE_SUFFIXES = {".py", ".pyc", ".so", ".pyd"}
_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}
_MAX_FOLDER_FILES = 10_000
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")


def check_spec(spec: ModelSpec, trust_remote_code: bool, pretrained: bool, where: str) -> None:
    """Raise unless rebuilding `spec` from an export is allowed (see the module docstring).

    pretrained=False means only the architecture is built (weights come from the export), so
    names that say where weights are read from do not matter.
    """
    _check_kwargs(spec, trust_remote_code, where)
    reasons = _untrusted(spec, pretrained)
    if reasons and not trust_remote_code:
        raise UntrustedCodeError(f"{where}: refusing to {reasons}. {HOW}")


def _untrusted(spec: ModelSpec, pretrained: bool) -> str | None:
    """Why building `spec` runs code or reads files named by the export; None when it does not."""
    if spec.family == "generic":
        return f"run the Python file {spec.name!r} that the export names ({spec})"
    if spec.family == "bundled":
        if spec.name not in BUNDLED:
            raise ExportSchemaError(f"retrofit ships no model {spec.name!r} ({sorted(BUNDLED)}).")
        return None
    if spec.name.startswith(_LOCAL_PREFIXES):
        return f"read the local folder the export names ({spec.name!r})"
    if spec.family == "transformers":
        config = spec.arch_config or {}
        if "auto_map" in config:
            return "build a transformers model with custom code (auto_map in its config)"
        if (pretrained or spec.arch_config is None) and not _hub_id(spec.name):
            why = _not_plain_hf_folder(Path(spec.name))
            if why:
                return f"read the local model folder {spec.name!r} that the export names ({why})"
    if (
        spec.family == "open_clip"
        and pretrained
        and spec.weights
        and (not _NAME.fullmatch(spec.weights) or Path(spec.weights).exists())
    ):
        return f"read the open_clip checkpoint file {spec.weights!r} that the export names"
    if spec.family in ("torchvision", "timm", "open_clip") and not _model_name(spec.name):
        raise ExportSchemaError(f"base_model.build.name {spec.name!r:.100} is not a model name.")
    if spec.family == "torchvision" and spec.weights and not _NAME.fullmatch(spec.weights):
        raise ExportSchemaError(
            f"base_model.build.weights {spec.weights!r:.100} is not a weights tag."
        )
    return None


def _not_plain_hf_folder(folder: Path) -> str | None:
    """Why loading the transformers folder could run code (or is no model folder); None when it
    holds only JSON configs without custom code and safetensors weights."""
    from retrofit.io.files import read_json

    if not folder.is_dir():
        return "not an existing folder"
    if not (folder / "config.json").is_file():
        return "it has no config.json"
    files = [path for path in islice(folder.rglob("*"), _MAX_FOLDER_FILES + 1) if path.is_file()]
    if len(files) > _MAX_FOLDER_FILES:
        return f"it holds more than {_MAX_FOLDER_FILES} files to check"
    code = [p.name for p in files if p.suffix in _CODE_SUFFIXES]
    if code:
        return f"it holds the Python file {code[0]!r}, custom model code"
    pickles = [p.name for p in files if p.suffix in _PICKLE_SUFFIXES]
    if pickles:
        return f"it holds the pickle {pickles[0]!r}, which loading could run as code"
    if not any(p.suffix == ".safetensors" for p in files):
        return "it holds no safetensors weights"
    for name in ("config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            continue
        try:
            config = read_json(folder / name)
        except (RetrofitError, OSError, ValueError):
            return f"its {name} cannot be read"
        if not isinstance(config, dict) or "auto_map" in config:
            return f"its {name} names custom code (auto_map)"
    return None


def _hub_id(name: str) -> bool:
    """A Hub id that transformers will not mistake for a local folder."""
    return _model_name(name) and not Path(name).exists()


def _model_name(name: str) -> bool:
    """A registry name or Hub id (timm `hf-hub:` prefix allowed), never a path."""
    bare = name.split(":", 1)[1] if name.startswith(("hf-hub:", "hf_hub:")) else name
    return bool(_HUB_ID.fullmatch(bare)) and ".." not in bare


def _check_kwargs(spec: ModelSpec, trust_remote_code: bool, where: str) -> None:
    allowed: dict[str, Any] = (
        dict(get_adapter(spec.family).build_kwargs) if spec.family in available_adapters() else {}
    )
    outside = sorted(set(spec.kwargs) - set(allowed))
    if outside and not trust_remote_code:
        raise UntrustedCodeError(
            f"{where}: refusing to pass build arguments {outside} to the {spec.family} loader; "
            f"exports may set only {sorted(allowed) or 'none'} for this family, as others can "
            f"read files or run code. {HOW}"
        )
    for name, check in allowed.items():
        if name in spec.kwargs and not check(spec.kwargs[name]):
            raise ExportSchemaError(
                f"{where}: build argument {name}={spec.kwargs[name]!r:.80} has the wrong type "
                "or is out of range."
            )
