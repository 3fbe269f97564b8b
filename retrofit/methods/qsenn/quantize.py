"""Q-SENN's ternary head: keep the largest weights, give them one shared magnitude, ramp the bias.

Follows ALGORITHMS §3 steps 2-4 and fixes the reference's faults: signs come from torch.sign
(a weight equal to −max gets −1), ties at the threshold are broken by position so the number of
kept weights is exact, and the bias ramp is guarded against a zero range.
"""

from __future__ import annotations

import logging

import torch

from retrofit.errors import ConfigError, InfeasibleSettingsError

logger = logging.getLogger(__name__)


def ternary_quantise(
    weight: torch.Tensor,
    per_class: int,
    balanced: bool = False,
    penalty: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Return (assignment int8 in {−1, 0, 1}, shared magnitude a) for a (C, F) weight.

    Keeps the per_class·C largest |w| overall (the reference's global threshold
    t = (v[g−1] + v[g]) / 2), or exactly the top per_class of each row when `balanced`.
    Equal magnitudes are ranked by row-major position, so the count is exact. Only non-zero
    weights can be kept; when there are fewer than the target a warning says so.
    a = mean of the kept |w| (0.0 when nothing is kept). `penalty` (C, F), the elastic net's
    L1 factors, ranks by |w| / factor instead: the weights the fit's prior favours are kept first.
    """
    if weight.ndim != 2:
        raise ConfigError(
            f"weight must be a 2-D (classes, features) tensor, got shape {tuple(weight.shape)}."
        )
    if not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"per_class must be an integer >= 1, got {per_class!r}.")
    c, f = weight.shape
    if per_class > f:
        raise InfeasibleSettingsError(
            f"per_class={per_class} exceeds the {f} features of the head; lower per_class or select more features."
        )
    w = weight.detach().float()
    if not bool(torch.isfinite(w).all()):
        raise ConfigError("weight contains NaN or infinite values; the fitted head is broken.")
    magnitude = w.abs()
    rank = magnitude if penalty is None else magnitude / penalty.to(w.device)
    keep = torch.zeros(c, f, dtype=torch.bool, device=w.device)
    if balanced:
        order = torch.argsort(-rank, dim=1, stable=True)[:, :per_class]
        keep.scatter_(1, order, True)
        keep &= magnitude > 0
        short = (keep.sum(dim=1) < per_class).nonzero().squeeze(1).tolist()
        if short:
            logger.warning(
                "Classes %s have fewer than %d non-zero weights; they keep only those.",
                short,
                per_class,
            )
    else:
        target = per_class * c
        flat = rank.reshape(-1)
        order = torch.argsort(-flat, stable=True)[:target]
        keep.view(-1)[order] = True
        keep &= magnitude > 0
        kept = int(keep.sum().item())
        if kept < target:
            logger.warning(
                "Only %d non-zero weights exist; fewer than the target %d are kept.", kept, target
            )
        empty = (~keep.any(dim=1)).nonzero().squeeze(1).tolist()
        if empty:
            logger.info(
                "Classes %s receive no weight; balanced=True gives every class per_class features.",
                empty,
            )
    assignment = (torch.sign(w) * keep).to(torch.int8)
    scale = float(magnitude[keep].mean().item()) if bool(keep.any()) else 0.0
    return assignment, scale


def bias_ramp(assignment: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Q-SENN's frozen bias: classes with more positive than negative weights get a lower bias.

    d_c = (#pos − #neg)_c − min_c'(#pos − #neg); D = max_c d_c; b_max = max|bias|;
    b_c = clamp(b_max − d_c·2·b_max/D, −b_max, b_max). When D = 0 every class is alike and a
    constant bias changes no prediction, so the result is all zeros.
    """
    if assignment.ndim != 2 or bias.shape != (assignment.shape[0],):
        raise ConfigError(
            f"bias must have one entry per row of the assignment {tuple(assignment.shape)}, got {tuple(bias.shape)}."
        )
    balance = (assignment > 0).sum(dim=1) - (assignment < 0).sum(dim=1)
    d = (balance - balance.min()).to(torch.float32)
    spread = float(d.max().item())
    b_max = float(bias.detach().abs().max().item())
    out = torch.zeros(assignment.shape[0], dtype=torch.float32, device=bias.device)
    if spread == 0 or b_max == 0:
        return out
    ramp = b_max - d.to(bias.device) * (2 * b_max / spread)
    return ramp.clamp(-b_max, b_max)


def quantise_head(
    weight: torch.Tensor,
    bias: torch.Tensor,
    per_class: int,
    balanced: bool = False,
    penalty: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Ternary assignment, shared magnitude and ramped bias of a fitted (C, F) head."""
    assignment, scale = ternary_quantise(weight, per_class, balanced, penalty)
    return assignment, scale, bias_ramp(assignment, bias)
