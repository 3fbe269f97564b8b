"""The model surface: what `convert` returns and `load` rebuilds.

`interpretable` holds `InterpretableModel` and `load`; `explanation` the local explanations;
`hf` its transformers face (pipelines, `PreTrainedModel`). The names below are read lazily, so
importing a leaf such as `retrofit.model.explanation` does not import the whole model.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"InterpretableModel", "load"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from retrofit.model import interpretable

        return getattr(interpretable, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
