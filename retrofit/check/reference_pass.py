"""What check keeps of both models' logits: per-image results, never an (N, C) tensor.

The original model's logits exist only during the forward pass, so everything that needs them
(its top-1 class, fidelity@k) is computed there, one batch at a time. Registered metrics may
read the full reference logits, but only while they fit `CheckConfig.reference_logits_budget_mb`
(1,000 classes cost 4 KB per image: 5 GB on ImageNet's 1.28 M training images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from retrofit.check import attribute_metrics as AM
from retrofit.check.rows import GrowingRows
from retrofit.errors import ModelError

logger = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass
class ReferenceTally:
    """Per image: the reference's top-1 class and whether it is in the model's top k."""

    keep_logits: bool
    budget_bytes: float
    expected: int | None = None  # images, when the loader tells: the buffers' first size
    logits: list[torch.Tensor] = field(default_factory=list)
    kept_bytes: int = 0
    note: str | None = None

    def __post_init__(self) -> None:
        self.predicted = GrowingRows(self.expected)
        self.hits = {k: GrowingRows(self.expected) for k in AM.FIDELITY_KS}

    def add(self, logits: torch.Tensor, reference_logits: torch.Tensor) -> None:
        """One batch of (B, C) logits of both models (float, CPU)."""
        if reference_logits.shape != logits.shape:
            raise ModelError(
                f"The reference outputs {reference_logits.shape[1]} classes but the "
                f"interpretable model {logits.shape[1]}; pass the model it was converted from."
            )
        reference_predicted = reference_logits.argmax(dim=1)
        self.predicted.append(reference_predicted)
        for k in AM.FIDELITY_KS:
            self.hits[k].append(AM.top_k_hits(logits, reference_predicted, k))
        if self.keep_logits:
            self._keep(reference_logits)

    def _keep(self, reference_logits: torch.Tensor) -> None:
        size = reference_logits.numel() * reference_logits.element_size()
        if self.kept_bytes + size <= self.budget_bytes:
            self.logits.append(reference_logits)
            self.kept_bytes += size
            return
        self.keep_logits, self.logits = False, []
        self.note = (
            f"reference_logits not kept: the original's (N, C) logits exceed "
            f"reference_logits_budget_mb={self.budget_bytes / MB:g}; raise it to keep them "
            "(reference_predicted is always there)"
        )
        logger.info("registered check metrics get %s", self.note)

    def reference_predicted(self) -> torch.Tensor:
        return self.predicted.tensor()

    def fidelity_at_k(self) -> dict[str, float]:
        """FLINT's fidelity@k for every k in AM.FIDELITY_KS."""
        return {
            f"fidelity@{k}": float(hits.tensor().float().mean()) for k, hits in self.hits.items()
        }

    def kept_logits(self) -> torch.Tensor | None:
        return torch.cat(self.logits) if self.keep_logits and self.logits else None
