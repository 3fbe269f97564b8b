"""Turn whatever a classifier returns (tensor, tuple, dict, HF ModelOutput) into logits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from retrofit.errors import ModelError


def logits_of(output: Any) -> torch.Tensor:
    """The class scores in a model's output: the tensor itself, `.logits`, or the first entry."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if "logits" in output:
            return logits_of(output["logits"])
        values = [v for v in output.values() if isinstance(v, torch.Tensor)]
        if values:
            return values[0]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    raise ModelError(
        f"Cannot find logits in the model output of type {type(output).__name__}. Return a tensor, "
        "a tuple whose first item is the logits, a dict with 'logits', or an HF ModelOutput."
    )


class LogitsOnly(torch.nn.Module):
    """`model` returning only its logits tensor (see logits_of), for tools that need a tensor
    out: Captum's attribution methods, torch.onnx.export, torch.jit.trace. It shares `model`'s
    modules, so Captum's layer methods take its layers (e.g. LayerGradCam(wrapper, layer))."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(pixel_values))
