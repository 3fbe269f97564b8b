"""Load shipped safetensors weights into a model only when they match it key for key."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from retrofit.errors import ModelError


def load_matching_state(model: nn.Module, path: Path, mismatch: str) -> nn.Module:
    """Copy the tensors of `path` into `model` (cast to its dtypes); raise ModelError(mismatch)
    when the names or shapes differ, so stale weights fail clearly instead of half-loading."""
    state = load_file(str(path))
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ModelError(mismatch)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model
