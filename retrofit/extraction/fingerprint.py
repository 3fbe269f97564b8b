"""Fingerprints that key caches and exports: model weights, data batches, settings."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn


def _digest() -> hashlib._Hash:
    return hashlib.blake2b(digest_size=16)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw bytes of a tensor in a stable layout (contiguous, CPU; bfloat16 viewed as int16)."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """Hash of every parameter and buffer (names, dtypes, shapes, values)."""
    digest = _digest()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def batch_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """Hash of one batch's pixels and labels: a different data order or transform changes it."""
    digest = _digest()
    digest.update(f"{tuple(images.shape)}|{images.dtype}|".encode())
    digest.update(tensor_bytes(images))
    digest.update(tensor_bytes(labels))
    return digest.hexdigest()


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """Hash of a JSON-serialisable settings dict (sorted keys)."""
    digest = _digest()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()
