"""Models shipped with retrofit, named `retrofit:NAME` (`demo`: the bundled demo CNN).

Not a family of models to recognise (a bundled model is a plain nn.Module, matched by the
generic rule) but a family of specs: the name is rebuilt from retrofit's own files, so a
spec that names one is portable to any machine with retrofit installed.
"""

from __future__ import annotations

import importlib

from torch import nn

from retrofit.adapters.base import ModelAdapter, ModelSpec, register_adapter
from retrofit.errors import ModelError

# retrofit:NAME -> (module, factory) of a model shipped with retrofit
BUNDLED = {"demo": ("retrofit.datasets.demo", "load_demo_classifier")}


def build_bundled(spec: ModelSpec, pretrained: bool, trust_remote_code: bool | None) -> nn.Module:
    if spec.name not in BUNDLED:
        raise ModelError(f"retrofit ships no model {spec.name!r}; it ships {sorted(BUNDLED)}.")
    module, factory = BUNDLED[spec.name]
    return getattr(importlib.import_module(module), factory)()


BUNDLED_MODELS = register_adapter(
    ModelAdapter(
        name="bundled",
        matches=lambda model: False,
        priority=-1000,
        prefix="retrofit",
        spec_forms="retrofit:demo",
        build=build_bundled,
    )
)
