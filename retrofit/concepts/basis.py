"""Concept features: candidate features that each track one concept, for the head to choose from.

Backbone channels are polysemantic, so a head built only from them explains classes with
features that mean several things at once. Before the head is fitted, every concept of the
vocabulary (or every labelled concept) gets a linear probe on the standardised penultimate
features, trained to predict the concept's presence (from concept labels, or from CLIP
similarity thresholded per concept). Probes that really detect their concept on held-out images
(held-out AUC above chance, under FDR control) join the backbone channels as candidates: the head (qpm, qsenn, sparse, ...)
then selects and assigns among channels and concept features alike, and a class whose
concepts the backbone encodes is explained by features that mean one thing each.

A word the images never show still gets a pseudo-presence: the Otsu split of its similarity
noise. Such words are left out before any probe is fitted, by whether their similarity splits
the images more clearly than concept-free prompts do (`retrofit.concepts.pairs.shown_concepts`,
against the encoder's own null). A probe can
still pass the AUC bar for a word that slips through: CLIP's pseudo-presence of such
a word ("horn", "ceramic") is noise correlated with a real concept ("dark background"), and the
probe learns the real one. Such a probe is a second copy of another concept's feature under a
wrong name. So probes are accepted in order of held-out AUC, and a probe that separates an
already accepted concept's presence at least as well as its own is dropped (`proxies`).

The extension is linear, so a head fitted on the extended features folds back exactly into an
bottleneck with a linear mix over the D backbone features (`fold_bottleneck`): nothing changes
downstream — export, explain and check see an ordinary bottleneck.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from retrofit.concepts.evidence import (
    DEFAULT_Q,
    auc_p_values,
    check_embeddings,
    check_q,
    fdr_accept,
    null_prompts,
)
from retrofit.concepts.pairs import auc_matrix, shown_concepts
from retrofit.errors import DataError
from retrofit.solvers.stats import MIN_STD

logger = logging.getLogger(__name__)

PROBE_STEPS = 300
PROBE_LR = 0.05
PROBE_WEIGHT_DECAY = 1e-3
HELD_OUT = 0.2


@dataclass
class ConceptBasis:
    """Linear concept probes on the raw pooled features: u = x @ weight.T + bias."""

    weight: torch.Tensor  # (V, D)
    bias: torch.Tensor  # (V,)
    names: list[str]
    auc: torch.Tensor  # (V,) held-out AUC of each kept probe
    proxies: dict[str, str] = field(default_factory=dict)  # dropped probe -> concept it detects

    @property
    def size(self) -> int:
        return int(self.weight.shape[0])

    def extend(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D + V): the backbone channels followed by the concept features."""
        weight, bias = self.weight.to(features.device), self.bias.to(features.device)
        return torch.cat([features, features.float() @ weight.T + bias], dim=1)

    def extend_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, D + V, H, W) through the same linear map (bias added)."""
        weight = self.weight.to(maps.device, maps.dtype)
        extra = torch.einsum("vd,bdhw->bvhw", weight, maps) + self.bias.to(maps.device)[
            None, :, None, None
        ].to(maps.dtype)
        return torch.cat([maps, extra], dim=1)

    def summary(self) -> dict[str, Any]:
        return {
            "concepts": list(self.names),
            "held_out_auc": [round(float(a), 4) for a in self.auc],
            "proxies": dict(self.proxies),
        }


def fit_concept_basis(
    features: torch.Tensor,
    presence: torch.Tensor,
    names: Sequence[str],
    *,
    q: float = DEFAULT_Q,
    seed: int = 0,
) -> ConceptBasis:
    """Fit one logistic probe per concept; keep those whose held-out AUC is above chance under
    FDR control at `q` (a probe that does not detect its concept on fresh images is no
    concept feature, whatever the encoder)."""
    n, d = features.shape
    if presence.shape != (n, len(names)):
        raise DataError(
            f"concept presence must be ({n} images, {len(names)} concepts), got shape "
            f"{tuple(presence.shape)}."
        )
    check_q(q)
    device = features.device
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).to(device)
    n_held = max(1, int(n * HELD_OUT))
    held, fit = order[:n_held], order[n_held:]
    x = features.float()
    mean = x[fit].mean(dim=0)
    std = x[fit].std(dim=0, unbiased=False).clamp_min(MIN_STD)
    z = (x - mean) / std
    y = presence.to(device).float()
    weight = torch.zeros(len(names), d, device=device, requires_grad=True)
    bias = torch.zeros(len(names), device=device, requires_grad=True)
    positives = y[fit].mean(dim=0).clamp(1e-3, 1 - 1e-3)
    pos_weight = (1 - positives) / positives  # balance rare concepts
    optimiser = torch.optim.Adam([weight, bias], lr=PROBE_LR)
    with torch.enable_grad():
        for _ in range(PROBE_STEPS):
            logits = z[fit] @ weight.T + bias
            loss = (
                F.binary_cross_entropy_with_logits(logits, y[fit], pos_weight=pos_weight)
                + PROBE_WEIGHT_DECAY * weight.pow(2).sum(dim=1).mean()
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        held_logits = (z[held] @ weight.T + bias).cpu()
        separation = torch.nan_to_num(
            auc_matrix(held_logits, presence[held.cpu()].bool()), nan=0.0
        )  # (V probes, V concepts)
        auc = torch.diagonal(separation)
        n_pos = presence[held.cpu()].bool().sum(dim=0)
        accepted, _ = fdr_accept(auc_p_values(auc, n_pos, len(held) - n_pos), q)
        detectable = torch.nonzero(accepted).flatten()
        keep, proxies = _drop_proxies(separation, detectable, names)
        # back to raw features: u = ((x - mean) / std) @ w.T + b
        raw_weight = (weight / std[None]).detach()[keep]
        raw_bias = (bias - (weight * (mean / std)[None]).sum(dim=1)).detach()[keep]
    kept = [names[int(k)] for k in keep]
    logger.info(
        "concept basis: %d of %d concepts detected on held-out images (q = %g), %d of them "
        "proxies of another",
        len(detectable),
        len(names),
        q,
        len(proxies),
    )
    return ConceptBasis(raw_weight.cpu(), raw_bias.cpu(), kept, auc[keep].cpu(), proxies)


def _drop_proxies(
    separation: torch.Tensor,
    detectable: torch.Tensor,
    names: Sequence[str],
) -> tuple[torch.Tensor, dict[str, str]]:
    """Probes kept, best first, unless one separates an accepted concept's presence at least as
    well as its own (`separation[v, u]`: held-out AUC of probe v against concept u's presence):
    then it is a copy of that concept's feature."""
    auc = torch.diagonal(separation)
    order = detectable[torch.argsort(auc[detectable], descending=True, stable=True)]
    accepted: list[int] = []
    proxies: dict[str, str] = {}
    for v in order.tolist():
        if accepted:
            scores = separation[v, accepted]
            best = int(scores.argmax())
            if float(scores[best]) >= float(auc[v]):
                proxies[names[v]] = names[accepted[best]]
                continue
        accepted.append(v)
    return torch.tensor(sorted(accepted), dtype=torch.long), proxies


def fold_bottleneck(bottleneck: Any, basis: ConceptBasis, in_features: int) -> Any:
    """An bottleneck over the D backbone features equal to `bottleneck` over the extended D + V
    ones (retrofit.concepts.coverage.widen_bottleneck puts a head fitted on some of them there)."""
    from retrofit.fitting.bottleneck import Bottleneck

    d = in_features
    device = bottleneck.mean.device
    with torch.no_grad():
        if bottleneck.mix is not None:
            mix_ext = bottleneck.mix.detach()
        else:
            mix_ext = torch.zeros(len(bottleneck.selected), bottleneck.in_features, device=device)
            mix_ext[torch.arange(len(bottleneck.selected)), bottleneck.selected] = 1.0
        weight, bias = basis.weight.to(device), basis.bias.to(device)
        mix = mix_ext[:, :d] + mix_ext[:, d:] @ weight
        mean = bottleneck.mean.detach() - mix_ext[:, d:] @ bias
        selected = bottleneck.selected.clone()
        is_concept = selected >= d
        if bool(is_concept.any()):
            # where a concept feature "starts": its probe's strongest backbone channel
            selected[is_concept] = weight[selected[is_concept] - d].abs().argmax(dim=1)
        folded = Bottleneck(selected, mean, bottleneck.std.detach(), d, linear_mix=True)
        folded.mix.copy_(mix)
    return folded.to(device)


def concept_presence(
    settings: Any,
    loader: Any,
    labels: torch.Tensor,
    *,
    cache_dir: str | os.PathLike | None,
    batch_size: int,
    progress: bool,
) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
    """(concept names, (N, V) presence, image embeddings or None) of the training images:
    the labels when given, else CLIP similarity thresholded per concept, for the words the
    images detectably show (against the encoder's own null, FDR `settings.q`: `shown_concepts`)."""
    from retrofit.concepts.encoders import embed_concepts, embed_images, load_encoder
    from retrofit.concepts.guard import resolve_encoder
    from retrofit.concepts.vocabulary import load_vocabulary

    q = settings.q
    if settings.labels is not None:
        names = list(
            settings.label_names or [f"concept_{k}" for k in range(settings.labels.shape[1])]
        )
        return names, torch.as_tensor(settings.labels).bool(), None
    encoder = load_encoder(resolve_encoder(settings.encoder, loader))
    vocab = load_vocabulary(settings.vocabulary)
    embeddings, image_labels = embed_images(
        encoder,
        loader,
        input_mean=settings.input_mean,
        input_std=settings.input_std,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
    )
    check_embeddings(embeddings, encoder.spec)
    if image_labels is not None and not torch.equal(image_labels.cpu(), labels.cpu()):
        raise DataError(
            "The loader's order changed between passes (shuffle=True?); concept features need "
            "the same images in the same order. Pass a loader with shuffle=False."
        )
    text = embed_concepts(encoder, vocab.concepts, vocab.templates, cache_dir=cache_dir)
    null = embed_concepts(
        encoder, null_prompts(vocab.concepts), vocab.templates, cache_dir=cache_dir
    )
    similarity = embeddings.float() @ text.T
    shown, test, presence = shown_concepts(similarity, embeddings.float() @ null.T, q)
    logger.info(
        "concept basis: %d of %d words shown on the images (against the encoder's null, q = %g)",
        len(shown),
        len(vocab.concepts),
        q,
    )
    if not len(shown):
        logger.warning(
            "no word of the vocabulary is detectably shown on these images: the head falls back "
            "to backbone channels, and naming will leave every feature unexplained"
        )
    return [vocab.concepts[int(k)] for k in shown], presence[:, shown], embeddings
