"""What the head may choose from once concept features exist, and which class each one serves.

Two facts about the concept basis shape a head that explains every class by distinct concepts:

- A backbone channel that already responds to a basis concept (AUC ≥ MIN_AUC against its
  presence) is a polysemantic copy of a feature the basis offers in a pure form. Offered beside
  it, the head gives a class both ("+pink, +pink"). Such *covered* channels are not offered;
  channels that no basis concept explains stay, since they carry what the concepts miss.
- A concept feature serves a class that shows its concept. The class–concept prior (F, C) is +1
  where the class shows the feature's concept (present in most of its images, clearly more
  often than elsewhere: `class_concepts`), −1 where it does not, 0 for channels; heads that
  assign features to classes (qpm) add it, weighted, to their class–feature objective, so a
  shape that several classes share is assigned where it is shown instead of a second colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from retrofit.concepts.pairs import MIN_AUC, PairSettings, auc_matrix, class_concepts

# channels are tested for coverage on at most this many evenly spaced rows (an AUC estimate)
COVERAGE_ROWS = 20_000
COVERAGE_BLOCK = 256  # channels ranked at a time


@dataclass
class HeadCandidates:
    """The head's input columns (indices into [channels | concept features]) and their prior."""

    columns: torch.Tensor  # (F,) long, increasing
    prior: torch.Tensor  # (F, C) float in {-1, 0, 1}: 0 for channels no concept covers
    covered: int  # channels left out because a concept feature covers them


def coverage(features: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """(D,) how well each channel detects its best-detected concept: the largest AUC of its
    activation against a concept's presence (estimated on evenly spaced rows, channels in
    blocks so the ranks stay small at ImageNet width)."""
    rows = torch.linspace(0, len(features) - 1, min(len(features), COVERAGE_ROWS)).long()
    sample, present = features[rows.to(features.device)].float().cpu(), presence[rows].cpu()
    best = [
        torch.nan_to_num(auc_matrix(sample[:, block], present), nan=0.0).max(dim=1).values
        for block in torch.arange(sample.shape[1]).split(COVERAGE_BLOCK)
    ]
    return torch.cat(best)


def class_prior(presence: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(V, C): +1 where class c shows concept v, −1 where it does not."""
    shown, _ = class_concepts(
        presence.bool().cpu(), labels.long().cpu(), num_classes, PairSettings()
    )
    return shown.T.float() * 2 - 1


def head_candidates(
    features: torch.Tensor,
    presence: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    channels: bool,
    n_features: int,
) -> HeadCandidates:
    """Columns of [features | concept features] to offer the head, and their class prior.
    `presence` (N, V) is the concept basis's presence in the order of its features. Covered
    channels are left out only while `n_features` candidates remain (the least covered return
    first)."""
    dim, n_concepts = int(features.shape[1]), int(presence.shape[1])
    concepts = torch.arange(dim, dim + n_concepts)
    prior = class_prior(presence, labels, num_classes)
    if not channels:
        return HeadCandidates(concepts, prior, 0)
    best = coverage(features, presence)
    order = torch.argsort(best, stable=True)
    n_kept = max(int((best < MIN_AUC).sum()), min(dim, n_features - n_concepts))
    kept = order[:n_kept].sort().values
    # covered channels kept only to reach n_features are the last choice for every class
    channel_prior = -(best[kept] >= MIN_AUC).float()[:, None].expand(-1, num_classes)
    return HeadCandidates(
        torch.cat([kept, concepts]), torch.cat([channel_prior, prior]), dim - n_kept
    )


def widen_bottleneck(bottleneck: Any, columns: torch.Tensor, width: int) -> Any:
    """The same bottleneck over all `width` columns, from one fitted over `columns` of them
    (its selection re-indexed, its mix's columns put back in place; the others weigh 0)."""
    from retrofit.fitting.bottleneck import Bottleneck

    columns = columns.to(bottleneck.selected.device)
    wide = Bottleneck(
        columns[bottleneck.selected],
        bottleneck.mean.detach(),
        bottleneck.std.detach(),
        width,
        linear_mix=bottleneck.mix is not None,
    )
    if bottleneck.mix is not None:
        with torch.no_grad():
            wide.mix.zero_()
            wide.mix[:, columns] = bottleneck.mix.detach()
    return wide.to(bottleneck.mean.device)
