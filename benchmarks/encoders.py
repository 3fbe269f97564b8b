"""Concept encoders for the benchmarks' encoder-quality axis: the shipped tiny CLIP with its
image embeddings degraded by seeded noise, from "barely hurts" (sigma 0.5) to "nearly blind" (4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retrofit.concepts.encoders import ConceptEncoder


class NoisyEncoder(ConceptEncoder):
    """`inner` with image embeddings e' = normalize(normalize(e) + sigma · n / sqrt(E)), n a
    standard normal vector seeded by (seed, the image's pixels): the same image gets the same
    noise in whatever batch or pass it comes. Text embeddings are the inner encoder's."""

    backend = "noisy"

    def __init__(self, inner: ConceptEncoder, sigma: float, seed: int = 0) -> None:
        super().__init__(inner.preprocess, inner.device, inner.batch_size)
        self.inner, self.sigma, self.seed = inner, float(sigma), int(seed)

    @property
    def spec(self) -> str:
        return f"noisy({self.inner.spec},sigma={self.sigma:g},seed={self.seed})"

    def _module(self) -> nn.Module:
        return self.inner._module()

    def _tokenizer_id(self) -> dict[str, Any]:
        return {**self.inner._tokenizer_id(), "noise": [self.sigma, self.seed]}

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.inner._image_features(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        return self.inner._text_features(texts)

    @torch.no_grad()
    def encode_images(
        self,
        images: torch.Tensor,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> torch.Tensor:
        clean = self.inner.encode_images(images, input_mean, input_std)
        if self.sigma == 0:
            return clean
        dim = clean.shape[1]
        noise = torch.stack([self._noise(image, dim) for image in images])
        return F.normalize(clean + self.sigma * noise / dim**0.5, dim=-1)

    def _noise(self, image: torch.Tensor, dim: int) -> torch.Tensor:
        digest = hashlib.sha256(image.detach().cpu().contiguous().numpy().tobytes()).digest()
        seed = int.from_bytes(digest[:8], "little") ^ self.seed
        return torch.randn(dim, generator=torch.Generator().manual_seed(seed))
