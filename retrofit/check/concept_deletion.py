"""Concept-level faithfulness: remove features in the order the explanation ranks them.

For a linear head the effect of removing a feature (zeroing its standardised activation, i.e.
setting it to its training mean) is exact, so these curves test the explanation itself and not
an approximation of it. A faithful explanation makes the predicted class's probability fall
faster under deletion (and rise faster under insertion) than a seeded random order does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retrofit.errors import ConfigError

_CHUNK = 256


def contribution_order(scores: torch.Tensor) -> torch.Tensor:
    """(N, n_f) feature indices from the largest to the smallest score, ties in index order."""
    return torch.argsort(scores, dim=1, descending=True, stable=True)


def random_orders(n: int, n_features: int, seed: int) -> torch.Tensor:
    """(n, n_features) seeded random permutations, one per image."""
    generator = torch.Generator().manual_seed(seed)
    return torch.argsort(torch.rand(n, n_features, generator=generator), dim=1)


def removal_curves(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    order: torch.Tensor,
    target: torch.Tensor,
    insertion: bool = False,
) -> torch.Tensor:
    """(N, n_f + 1) probability of `target` after removing (or inserting) 0..n_f features in `order`.

    Deletion starts from all features and zeroes them one by one; insertion starts from the
    bias alone and adds them back in the same order.
    """
    n, n_f = z.shape
    if order.shape != (n, n_f) or target.shape != (n,):
        raise ConfigError(
            f"order must be ({n}, {n_f}) and target ({n},), got {tuple(order.shape)} and "
            f"{tuple(target.shape)}."
        )
    z, weight, bias = z.float(), weight.float().to(z.device), bias.float().to(z.device)
    order, target = order.to(z.device), target.to(z.device)
    curves = []
    for start in range(0, n, _CHUNK):
        zc, oc, tc = (
            z[start : start + _CHUNK],
            order[start : start + _CHUNK],
            target[start : start + _CHUNK],
        )
        ordered = (zc.gather(1, oc)[:, :, None] * weight.T[oc]).cumsum(dim=1)  # (B, n_f, C)
        steps = torch.cat([torch.zeros_like(ordered[:, :1]), ordered], dim=1)
        logits = bias + (steps if insertion else (zc @ weight.T)[:, None] - steps)
        probs = F.softmax(logits, dim=2)
        curves.append(probs.gather(2, tc[:, None, None].expand(-1, n_f + 1, 1))[:, :, 0])
    return torch.cat(curves)


def area(curves: torch.Tensor) -> torch.Tensor:
    """(N,) trapezoidal area under curves sampled evenly on [0, 1]."""
    if curves.shape[1] < 2:
        return curves[:, 0].clone()
    return ((curves[:, 1:] + curves[:, :-1]) / 2).mean(dim=1)


def concept_deletion(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    explanation: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Deletion and insertion curves in concept space, explanation order vs a seeded random order.

    `explanation` (N, n_f) are the scores the explanation ranks features by; by default the
    exact contributions z_j · W_ĉj to the predicted class ĉ. Also measures the drop of the
    predicted class's logit and probability when the features assigned to it (non-zero weight)
    are removed, against removing the same number of random features.
    """
    if z.ndim != 2 or weight.ndim != 2 or z.shape[1] != weight.shape[1]:
        raise ConfigError(
            f"z must be (N, n_f) and weight (C, n_f), got {tuple(z.shape)} and {tuple(weight.shape)}."
        )
    z = z.float()
    weight = weight.float().to(z.device)
    bias = bias.float().to(z.device)
    logits = z @ weight.T + bias
    predicted = logits.argmax(dim=1)
    contribution = z * weight[predicted]
    scores = contribution if explanation is None else explanation.to(z.device)
    ordered = contribution_order(scores)
    shuffled = random_orders(z.shape[0], z.shape[1], seed).to(z.device)
    curves = {
        "deletion": removal_curves(z, weight, bias, ordered, predicted),
        "deletion_random": removal_curves(z, weight, bias, shuffled, predicted),
        "insertion": removal_curves(z, weight, bias, ordered, predicted, insertion=True),
        "insertion_random": removal_curves(z, weight, bias, shuffled, predicted, insertion=True),
    }
    areas = {name: float(area(c).mean()) for name, c in curves.items()}

    assigned = weight[predicted] != 0
    count = assigned.sum(dim=1, keepdim=True)
    rank = torch.empty_like(shuffled)
    rank.scatter_(1, shuffled, torch.arange(z.shape[1], device=z.device).expand_as(shuffled))
    random_set = rank < count
    probability = F.softmax(logits, dim=1).gather(1, predicted[:, None])[:, 0]

    def drops(removed: torch.Tensor) -> tuple[float, float]:
        kept = z * (~removed)
        after = kept @ weight.T + bias
        logit_drop = logits.gather(1, predicted[:, None]) - after.gather(1, predicted[:, None])
        prob_after = F.softmax(after, dim=1).gather(1, predicted[:, None])[:, 0]
        return float(logit_drop.mean()), float((probability - prob_after).mean())

    logit_assigned, prob_assigned = drops(assigned)
    logit_random, prob_random = drops(random_set)
    return {
        "n_images": int(z.shape[0]),
        "n_features": int(z.shape[1]),
        "deletion_auc": areas["deletion"],
        "deletion_auc_random": areas["deletion_random"],
        "deletion_auc_gain": areas["deletion_random"] - areas["deletion"],
        "insertion_auc": areas["insertion"],
        "insertion_auc_random": areas["insertion_random"],
        "insertion_auc_gain": areas["insertion"] - areas["insertion_random"],
        "mean_assigned_features": float(count.float().mean()),
        "logit_drop_assigned": logit_assigned,
        "logit_drop_random": logit_random,
        "probability_drop_assigned": prob_assigned,
        "probability_drop_random": prob_random,
        "curves": {name: c.mean(dim=0).tolist() for name, c in curves.items()},
    }
