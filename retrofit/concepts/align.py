"""Make each feature track its concept (Label-free CBM's cos³ objective) without losing accuracy.

The bottleneck is fine-tuned on cached features with the head fixed: cross-entropy keeps the
classifier's behaviour, the cos³ term pulls feature j towards its concept signal t_j
(image–concept similarity, or the concept's labels). cos³ centres both over the batch, cubes
them element-wise (emphasising the images where each is high) and compares their directions.
The epoch with the best mean correlation whose accuracy stays within `max_accuracy_drop` of the
start is kept; if none does, the bottleneck is restored and the report says so.

Correlation and cos³ are unchanged by a per-feature scale and shift, so only a bottleneck with a
learned linear mix (`convert(..., linear_mix=True)`) can move them.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from retrofit.errors import ConfigError, FeatureError, SolverError

logger = logging.getLogger(__name__)

_EVAL_ROWS = 8192


def cos3_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(F,) cos³ similarity of matching columns of (B, F) tensors, over the batch."""

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=0, keepdim=True)
        return F.normalize(x**3, dim=0, eps=1e-12)

    return (prepare(a.float()) * prepare(b.float())).sum(dim=0)


def column_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(F,) Pearson correlation of matching columns."""
    a = a.float() - a.float().mean(dim=0)
    b = b.float() - b.float().mean(dim=0)
    return (a * b).sum(dim=0) / (a.norm(dim=0) * b.norm(dim=0)).clamp_min(1e-12)


@dataclass
class AlignmentReport:
    """Per-feature correlation with its concept and the accuracy, before and after aligning."""

    correlation_before: torch.Tensor
    correlation_after: torch.Tensor
    accuracy_before: float
    accuracy_after: float
    max_accuracy_drop: float
    best_epoch: int | None
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "correlation_before": [round(float(v), 4) for v in self.correlation_before],
            "correlation_after": [round(float(v), 4) for v in self.correlation_after],
            "mean_correlation_before": float(self.correlation_before.mean()),
            "mean_correlation_after": float(self.correlation_after.mean()),
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "max_accuracy_drop": self.max_accuracy_drop,
            "best_epoch": self.best_epoch,
            "accepted": self.accepted,
        }


@torch.no_grad()
def _evaluate(
    imodel: Any, features: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor
) -> tuple[float, torch.Tensor]:
    z = torch.cat(
        [
            imodel.bottleneck(features[s : s + _EVAL_ROWS])
            for s in range(0, len(features), _EVAL_ROWS)
        ]
    )
    accuracy = float((imodel.head(z).argmax(dim=1) == labels).float().mean())
    return accuracy, column_correlation(z, targets).cpu()


def align_features(
    imodel: Any,
    features: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    *,
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    weight: float = 1.0,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
    max_accuracy_drop: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> AlignmentReport:
    """Fine-tune `imodel.bottleneck` so feature j tracks `targets[:, j]`, within an accuracy bound.

    `features` (N, D) are the backbone's pooled features, `targets` (N, F) each feature's concept
    signal (`NamingResult.signal`), `labels` (N,) the classes. Accuracy and correlation are
    measured on `val` = (features, targets, labels) when given, else on the training rows.
    """
    bottleneck, head = imodel.bottleneck, imodel.head
    if bottleneck.mix is None:
        raise ConfigError(
            "align=True needs a bottleneck with a learned linear mix (a per-feature scale and "
            "shift cannot change a correlation): convert with linear_mix=True."
        )
    n, n_f = features.shape[0], imodel.n_features
    if targets.shape != (n, n_f) or labels.shape != (n,):
        raise FeatureError(
            f"align_features needs targets ({n}, {n_f}) and labels ({n},) for {n} feature rows, "
            f"got {tuple(targets.shape)} and {tuple(labels.shape)}."
        )
    if not 0 <= max_accuracy_drop < 1:
        raise ConfigError(f"max_accuracy_drop must be in [0, 1), got {max_accuracy_drop!r}.")
    if batch_size < 2:
        raise ConfigError(
            f"batch_size must be >= 2 (cos³ compares over a batch), got {batch_size}."
        )
    device = bottleneck.mean.device
    features, targets, labels = features.to(device), targets.to(device).float(), labels.to(device)
    eval_set = (features, targets, labels) if val is None else tuple(t.to(device) for t in val)
    was_training = bottleneck.training
    bottleneck.eval()
    accuracy_before, corr_before = _evaluate(imodel, *eval_set)
    start_state = copy.deepcopy(bottleneck.state_dict())
    best_state, best_epoch, best_corr = None, None, -math.inf
    optimiser = torch.optim.Adam([p for p in bottleneck.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    epoch_iter: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc="concept alignment", leave=False)
    for epoch in epoch_iter:
        bottleneck.train()
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n - 1, batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:
                continue
            z = bottleneck(features[index])
            loss = (
                F.cross_entropy(head(z), labels[index])
                - weight * cos3_similarity(z, targets[index]).mean()
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        if not math.isfinite(loss.item()):
            bottleneck.load_state_dict(start_state)
            raise SolverError("concept alignment diverged (non-finite loss); lower lr.")
        bottleneck.eval()
        accuracy, corr = _evaluate(imodel, *eval_set)
        logger.debug(
            "align epoch %d: accuracy %.4f, correlation %.4f", epoch, accuracy, corr.mean()
        )
        if accuracy >= accuracy_before - max_accuracy_drop and float(corr.mean()) > best_corr:
            best_corr, best_epoch = float(corr.mean()), epoch
            best_state = copy.deepcopy(bottleneck.state_dict())
    accepted = best_state is not None and best_corr > float(corr_before.mean())
    bottleneck.load_state_dict(best_state if accepted else start_state)
    bottleneck.train(was_training)
    if not accepted:
        warnings.warn(
            f"Concept alignment found no epoch that raised the mean correlation while keeping "
            f"accuracy within {max_accuracy_drop} of {accuracy_before:.4f}; the bottleneck is "
            "unchanged. Try a larger max_accuracy_drop, a smaller weight or more epochs.",
            UserWarning,
            stacklevel=2,
        )
    accuracy_after, corr_after = _evaluate(imodel, *eval_set)
    return AlignmentReport(
        correlation_before=corr_before,
        correlation_after=corr_after,
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
        max_accuracy_drop=max_accuracy_drop,
        best_epoch=best_epoch if accepted else None,
        accepted=accepted,
    )
