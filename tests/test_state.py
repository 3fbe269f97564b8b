"""Shipped weights load only into the model they were saved from."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from retrofit.errors import ModelError
from retrofit.io.weights import load_matching_state


def test_matching_weights_load_and_take_the_models_dtype(tmp_path) -> None:
    source = nn.Linear(3, 2)
    path = tmp_path / "w.safetensors"
    save_file({k: v.half() for k, v in source.state_dict().items()}, str(path))
    target = load_matching_state(nn.Linear(3, 2), path, "stale")
    assert target.weight.dtype == torch.float32
    assert torch.allclose(target.weight, source.weight.half().float())


@pytest.mark.parametrize("other", [nn.Linear(4, 2), nn.Sequential(nn.Linear(3, 2))])
def test_other_shapes_or_names_fail_without_touching_the_model(tmp_path, other) -> None:
    path = tmp_path / "w.safetensors"
    save_file(other.state_dict(), str(path))
    target = nn.Linear(3, 2)
    before = target.weight.detach().clone()
    with pytest.raises(ModelError, match="regenerate them"):
        load_matching_state(target, path, "stale weights: regenerate them")
    assert torch.equal(target.weight, before)
