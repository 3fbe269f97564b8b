"""Consent before code: what an export's base model spec may make load run or read.

Loading rebuilds the backbone from the spec in the export's config. Anything that would run
code or read files the export names is refused unless the user passes trust_remote_code=True:
  - `python:file.py:factory` specs (they execute a Python file);
  - local folders (HF `hf:/path`, timm/open_clip `local-dir:`) and open_clip tags that are
    file paths (they read files outside the export);
  - HF configs with custom code (`auto_map`);
  - build kwargs outside the family's allow-list (`build_kwargs` of its bottleneck, e.g. timm's
    `checkpoint_path` or `pretrained_cfg_overlay` would read a checkpoint of the export's choice).
Allow-listed kwargs are checked for type and range even when trusted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from retrofit.adapters import available_adapters, get_adapter
from retrofit.adapters.bundled import BUNDLED
from retrofit.errors import ExportSchemaError, UntrustedCodeError
from retrofit.specs import ModelSpec

HOW = "Pass trust_remote_code=True (CLI: --trust-remote-code) only if you trust where this export came from."
_LOCAL_PREFIXES = ("local-dir:", "file:")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
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
            return f"read the local model folder {spec.name!r} that the export names"
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
