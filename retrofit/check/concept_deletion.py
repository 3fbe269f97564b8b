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

_CHUNK = 64  # images per block: each (block, n_f + 1, C) buffer is 13 MB at n_f 50, C 1,000
_PART = 4096  # images concept_deletion hands to removal_curves at a time (buffers made per part)


def contribution_order(scores: torch.Tensor) -> torch.Tensor:
    """(N, n_f) feature indices from the largest to the smallest score, ties in index order."""
    return torch.argsort(scores, dim=1, descending=True, stable=True)


def random_orders(n: int, n_features: int, seed: int | torch.Generator) -> torch.Tensor:
    """(n, n_features) seeded random permutations, one per image.

    Given a generator instead of a seed it continues its stream: successive calls on chunks give
    the same orders as one call on all of them.
    """
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
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
    columns, n_classes = weight.T.contiguous(), weight.shape[0]
    block = min(_CHUNK, n)
    # three (block, n_f (+ 1), C) buffers reused for every block: fresh ones per block would
    # fragment the C heap (memory growing with the images) and cost twice the time
    terms = torch.empty(block * n_f, n_classes, device=z.device)
    logits = torch.zeros(block, n_f + 1, n_classes, device=z.device)
    probs = torch.empty_like(logits)
    curves = []
    for start in range(0, n, _CHUNK):
        zc, oc, tc = (
            z[start : start + _CHUNK],
            order[start : start + _CHUNK],
            target[start : start + _CHUNK],
        )
        b = len(zc)
        steps = torch.index_select(columns, 0, oc.flatten(), out=terms[: b * n_f])
        steps = steps.view(b, n_f, n_classes).mul_(zc.gather(1, oc)[:, :, None]).cumsum_(dim=1)
        blogits, bprobs = logits[:b], probs[:b]
        blogits[:, 0].zero_()
        blogits[:, 1:].copy_(steps)
        if insertion:
            blogits.add_(bias)
        else:
            blogits.neg_().add_((zc @ weight.T)[:, None]).add_(bias)
        torch.ops.aten._softmax.out(blogits, 2, False, out=bprobs)  # F.softmax, into the buffer
        curves.append(bprobs.gather(2, tc[:, None, None].expand(-1, n_f + 1, 1))[:, :, 0])
    return torch.cat(curves) if curves else torch.zeros(0, n_f + 1)


def area(curves: torch.Tensor) -> torch.Tensor:
    """(N,) trapezoidal area under curves sampled evenly on [0, 1]."""
    if curves.shape[1] < 2:
        return curves[:, 0].clone()
    return ((curves[:, 1:] + curves[:, :-1]) / 2).mean(dim=1)


def deletion_rows(n: int, max_images: int | None, seed: int) -> torch.Tensor | None:
    """The rows concept deletion measures: all (None) when n <= max_images, else a seeded
    random subset of max_images rows in increasing order (its cost is O(rows · n_f · C))."""
    if max_images is None or n <= max_images:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:max_images].sort().values


def concept_deletion(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    explanation: torch.Tensor | None = None,
    seed: int = 0,
    max_images: int | None = None,
) -> dict[str, object]:
    """Deletion and insertion curves in concept space, explanation order vs a seeded random order.

    `explanation` (N, n_f) are the scores the explanation ranks features by; by default the
    exact contributions z_j · W_ĉj to the predicted class ĉ. Also measures the drop of the
    predicted class's logit and probability when the features assigned to it (non-zero weight)
    are removed, against removing the same number of random features. Runs over parts of
    images (memory O(chunk · n_f · C)); with more than `max_images` images it measures a seeded
    random subset of that many (`n_images` says how many, `n_total` of how many).
    """
    if z.ndim != 2 or weight.ndim != 2 or z.shape[1] != weight.shape[1]:
        raise ConfigError(
            f"z must be (N, n_f) and weight (C, n_f), got {tuple(z.shape)} and {tuple(weight.shape)}."
        )
    if explanation is not None and explanation.shape != z.shape:
        raise ConfigError(
            f"explanation must be (N, n_f) like z {tuple(z.shape)}, got {tuple(explanation.shape)}."
        )
    if max_images is not None and (isinstance(max_images, bool) or max_images < 1):
        raise ConfigError(f"max_images must be None or an integer >= 1, got {max_images!r}.")
    n_total = z.shape[0]
    rows = deletion_rows(n_total, max_images, seed)
    if rows is not None:
        z = z[rows]
        explanation = explanation[rows] if explanation is not None else None
    weight = weight.float().to(z.device)
    bias = bias.float().to(z.device)
    generator = torch.Generator().manual_seed(seed)
    tally = _Tally(z.shape[1])
    for start in range(0, z.shape[0], _PART):
        zc = z[start : start + _PART].float()
        scores = None if explanation is None else explanation[start : start + _PART]
        shuffled = random_orders(len(zc), z.shape[1], generator)
        tally.add(_chunk(zc, weight, bias, scores, shuffled))
    return {"n_images": int(z.shape[0]), "n_total": int(n_total), **tally.result()}


def _chunk(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    explanation: torch.Tensor | None,
    shuffled: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per image of one chunk: the four curves, the assigned count and the four drops."""
    logits = z @ weight.T + bias
    predicted = logits.argmax(dim=1)
    contribution = z * weight[predicted]
    ordered = contribution_order(contribution if explanation is None else explanation.to(z.device))
    shuffled = shuffled.to(z.device)
    out = {
        "deletion": removal_curves(z, weight, bias, ordered, predicted),
        "deletion_random": removal_curves(z, weight, bias, shuffled, predicted),
        "insertion": removal_curves(z, weight, bias, ordered, predicted, insertion=True),
        "insertion_random": removal_curves(z, weight, bias, shuffled, predicted, insertion=True),
    }
    assigned = weight[predicted] != 0
    count = assigned.sum(dim=1, keepdim=True)
    rank = torch.empty_like(shuffled)
    rank.scatter_(1, shuffled, torch.arange(z.shape[1], device=z.device).expand_as(shuffled))
    probability = F.softmax(logits, dim=1).gather(1, predicted[:, None])[:, 0]
    out["count"] = count[:, 0].float()
    for name, removed in (("assigned", assigned), ("random", rank < count)):
        after = (z * (~removed)) @ weight.T + bias
        out[f"logit_drop_{name}"] = (
            logits.gather(1, predicted[:, None]) - after.gather(1, predicted[:, None])
        )[:, 0]
        out[f"probability_drop_{name}"] = (
            probability - F.softmax(after, dim=1).gather(1, predicted[:, None])[:, 0]
        )
    return out


class _Tally:
    """Per-image scalars (areas, drops) kept; curves summed (float64) so memory is O(N), not
    O(N · n_f)."""

    CURVES = ("deletion", "deletion_random", "insertion", "insertion_random")
    SCALARS = (
        "count",
        "logit_drop_assigned",
        "logit_drop_random",
        "probability_drop_assigned",
        "probability_drop_random",
    )

    def __init__(self, n_features: int) -> None:
        self.sums = {name: torch.zeros(n_features + 1, dtype=torch.float64) for name in self.CURVES}
        self.per_image: dict[str, list[torch.Tensor]] = {
            name: [] for name in (*self.CURVES, *self.SCALARS)
        }
        self.n = 0

    def add(self, chunk: dict[str, torch.Tensor]) -> None:
        for name in self.CURVES:
            self.sums[name] += chunk[name].double().sum(dim=0).cpu()
            self.per_image[name].append(area(chunk[name]).cpu())
        for name in self.SCALARS:
            self.per_image[name].append(chunk[name].cpu())
        self.n += len(chunk["count"])

    def result(self) -> dict[str, object]:
        mean = {name: float(torch.cat(parts).mean()) for name, parts in self.per_image.items()}
        return {
            "n_features": int(self.sums["deletion"].numel() - 1),
            "deletion_auc": mean["deletion"],
            "deletion_auc_random": mean["deletion_random"],
            "deletion_auc_gain": mean["deletion_random"] - mean["deletion"],
            "insertion_auc": mean["insertion"],
            "insertion_auc_random": mean["insertion_random"],
            "insertion_auc_gain": mean["insertion"] - mean["insertion_random"],
            "mean_assigned_features": mean["count"],
            "logit_drop_assigned": mean["logit_drop_assigned"],
            "logit_drop_random": mean["logit_drop_random"],
            "probability_drop_assigned": mean["probability_drop_assigned"],
            "probability_drop_random": mean["probability_drop_random"],
            "curves": {name: (s / max(self.n, 1)).tolist() for name, s in self.sums.items()},
        }
