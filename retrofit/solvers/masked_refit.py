"""Constrained refit of a sparse or ternary head after human edits (qsenn, sparse, dense).

The support (which class uses which feature) is edited locally: forbidden and dropped links
leave, pinned links join, and a class that is then short of (or over) its count gains (loses)
the allowed links with the largest weight in a multinomial logistic regression restricted to
the allowed links. The weights are then refitted on that support only, so every zero stays
exactly zero; a ternary head keeps its scale and takes the refitted signs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REFIT_STEPS = 100
L2 = 1e-4


def fit_masked(
    z: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    train_weight: bool = True,
    steps: int = REFIT_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy + L2 fit of (weight * mask, bias) by L-BFGS from the given start."""
    w = (weight.detach().float() * mask).clone().requires_grad_(train_weight)
    b = bias.detach().float().clone().requires_grad_(True)
    params = [b] + ([w] if train_weight else [])
    optimiser = torch.optim.LBFGS(params, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(F.linear(z, w * mask, b), labels) + L2 * (w * mask).pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return (w * mask).detach(), b.detach()


def edited_support(
    weight: torch.Tensor,
    continuous: torch.Tensor,
    allowed: torch.Tensor,
    pinned: torch.Tensor,
    counts: list[int],
) -> torch.Tensor:
    """(C, n_f) bool: per class, pins, then its current allowed links, filled or trimmed to k_c
    by |continuous| among the allowed, non-pinned links."""
    support = torch.zeros_like(allowed)
    for c, k in enumerate(counts):
        keep = pinned[c].clone()
        current = (weight[c] != 0) & allowed[c] & ~keep
        score = continuous[c].abs()
        room = k - int(keep.sum())
        ranked_current = torch.argsort(-score.masked_fill(~current, -1.0), stable=True)
        n_current = min(room, int(current.sum()))
        keep[ranked_current[:n_current]] = True
        room -= n_current
        others = allowed[c] & ~keep
        ranked = torch.argsort(-score.masked_fill(~others, -1.0), stable=True)
        keep[ranked[: min(room, int(others.sum()))]] = True
        support[c] = keep
    return support


def refit_head(
    z: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    allowed: torch.Tensor,
    pinned: torch.Tensor,
    counts: list[int],
    ternary_scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The edited (weight, bias): supported on the edited links, ternary when a scale is given."""
    mask = allowed.float()
    continuous, _ = fit_masked(z, labels, mask, weight, bias)
    support = edited_support(weight, continuous, allowed, pinned, counts)
    refit, new_bias = fit_masked(z, labels, support.float(), continuous, bias)
    if ternary_scale is None:
        # a pinned link whose refitted weight is exactly zero keeps a tiny weight of the
        # continuous fit's sign, so the link the person asked for exists
        tiny = torch.where(continuous < 0, -1e-6, 1e-6)
        refit = torch.where(support & (refit == 0), tiny, refit)
        return refit, new_bias
    sign = torch.sign(refit)
    sign = torch.where(support & (sign == 0), torch.ones_like(sign), sign) * support
    ternary = ternary_scale * sign
    _, new_bias = fit_masked(z, labels, support.float(), ternary, bias, train_weight=False)
    return ternary, new_bias
