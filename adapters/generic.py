"""Any nn.Module: the classification head is found from the execution trace alone.

Its spec is `python:path/file.py:factory`: factory() from a Python file on this machine (path
relative to the working directory); loading one from an export needs trust_remote_code=True.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from torch import nn

from retrofit.adapters.base import ModelAdapter, ModelSpec, register_adapter
from retrofit.errors import ConfigError, ModelError


def parse_python_spec(rest: str, text: str) -> ModelSpec:
    path, sep, factory = rest.rpartition(":")
    if not sep or not path.endswith(".py") or not factory.isidentifier():
        raise ConfigError(
            f"Expected python:path/file.py:factory (a function name after the last ':'), "
            f"got {text!r}."
        )
    return ModelSpec("generic", path, factory=factory)


def build_from_python_file(
    spec: ModelSpec, pretrained: bool, trust_remote_code: bool | None
) -> nn.Module:
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


GENERIC = register_adapter(
    ModelAdapter(
        name="generic",
        matches=lambda model: True,
        priority=-100,
        prefix="python",
        spec_forms="python:path/file.py:factory",
        parse_spec=parse_python_spec,
        format_spec=lambda spec: f"python:{spec.name}:{spec.factory}",
        build=build_from_python_file,
    )
)
