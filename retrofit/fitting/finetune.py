"""finetune="backbone": train the backbone and bottleneck from images with the head fixed.

Inside an initialised torch.distributed group of several ranks (unless distributed=False)
the model trains as DistributedDataParallel, each rank on its shard of the batches (reading
only those when retrofit.extraction.rank_batches can split the loader); see retrofit.extraction.data_parallel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from retrofit.errors import FeatureError
from retrofit.extraction import data_parallel
from retrofit.extraction.distributed import Shard, agree, current_shard
from retrofit.extraction.loaders import iterate
from retrofit.extraction.rank_batches import RankBatches, plan
from retrofit.model.interpretable import InterpretableModel

logger = logging.getLogger(__name__)


def finetune_backbone(
    imodel: InterpretableModel,
    batches: Iterable,
    device: torch.device,
    sample_weights: torch.Tensor | None = None,
) -> dict[str, list[float]]:
    """SGD with momentum 0.95 and weight decay 5e-4 (the references' setting) on backbone + bottleneck.

    `sample_weights` weight each image's loss, in the order `batches` yields them (the
    loader must not shuffle); images beyond the weights get weight 1. Each step minimises the
    mean weighted loss of one batch, or under DDP of one round of world-size batches.
    """
    config = imodel.config
    shard = current_shard(config.distributed)
    torch.manual_seed(config.seed)
    imodel.to(device).train()
    params = [p for p in imodel.backbone.parameters() if p.requires_grad]
    params += list(imodel.bottleneck.parameters())
    if shard is not None:
        agree(
            shard,
            {
                "backbone_lr": config.backbone_lr,
                "backbone_epochs": config.backbone_epochs,
                "seed": config.seed,
                "trainable parameters": [tuple(p.shape) for p in params],
            },
        )
    rank_batches = plan(batches, shard) if shard is not None else None
    trainer = imodel if shard is None else data_parallel.wrap(imodel, device)
    optimiser = torch.optim.SGD(params, lr=config.backbone_lr, momentum=0.95, weight_decay=5e-4)
    history: dict[str, list[float]] = {"loss": []}
    show = config.progress and (shard is None or shard.rank == 0)
    try:
        for _ in tqdm(range(config.backbone_epochs), desc="backbone fine-tuning", disable=not show):
            history["loss"].append(
                _epoch(
                    trainer,
                    optimiser,
                    batches,
                    device,
                    rank_batches,
                    sample_weights,
                    config.backbone_lr,
                )
            )
            logger.info("backbone epoch loss %.4f", history["loss"][-1])
        if shard is not None:
            data_parallel.broadcast_buffers(imodel)
    finally:
        del trainer  # not kept alive (with its gradient hooks) by a propagating traceback
    imodel.eval()
    return history


def _epoch(
    trainer: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    batches: Iterable,
    device: torch.device,
    rank_batches: RankBatches | None,
    sample_weights: torch.Tensor | None,
    lr: float,
) -> float:
    """One pass; returns the mean weighted loss over every image (of every rank).

    Under DDP the ranks meet twice per step before the backward: once after reading the round
    (so that all of them enter DDP's forward, which may hold collectives of its own) and once
    after computing the loss; a failure in either phase on any rank raises on every rank.
    """
    shard = None if rank_batches is None else rank_batches.shard
    world = 1 if shard is None else shard.world
    total, count = 0.0, 0
    if rank_batches is not None and rank_batches.split:
        steps = data_parallel.split_rounds(rank_batches)
    else:
        steps = data_parallel.rounds(iterate(batches), world)
    while True:
        step, inputs, signature = None, None, []
        try:
            step = next(steps, None)
            if step is not None:
                signature = step.signature()
                inputs = _inputs(step, shard, device, sample_weights)
        except Exception as failure:
            _fail_together(shard, failure, signature, device)
        _fail_together(shard, None, signature, device)
        if step is None:
            break
        try:
            loss, own_total = _loss(trainer, *inputs, world / step.size, lr)
        except Exception as failure:
            _fail_together(shard, failure, signature, device)
        _fail_together(shard, None, signature, device)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += own_total
        count += step.size
    if shard is not None:
        total = data_parallel.sum_across(total, device)
    return total / max(count, 1)


def _fail_together(
    shard: Shard | None, error: BaseException | None, signature: list[int], device: torch.device
) -> None:
    """Alone: re-raise `error`. Under DDP: the step check every rank joins (see check_step)."""
    if shard is None:
        if error is not None:
            raise error
        return
    data_parallel.check_step(shard, error, signature, device)


def _inputs(
    step: data_parallel.Round,
    shard: Shard | None,
    device: torch.device,
    sample_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """This rank's images, labels and per-image weights on `device`; own=False: weight zero."""
    images, labels, offset, own = step.part(shard)
    images, labels = images.to(device), labels.to(device)
    weights = torch.ones(len(labels), device=device)
    if sample_weights is not None:
        known = sample_weights[offset : offset + len(labels)].to(device)
        weights[: len(known)] = known
    if not own:
        weights.zero_()
    return images, labels, weights, own


def _loss(
    trainer: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    own: bool,
    scale: float,
    lr: float,
) -> tuple[torch.Tensor, float]:
    """The summed weighted loss times `scale` (world / images in the round, so that DDP's
    gradient average is the round's mean-loss gradient), and the summed loss itself."""
    losses = F.cross_entropy(trainer(images), labels, reduction="none")
    weighted = (weights * losses).sum()
    if own and not torch.isfinite(weighted):
        raise FeatureError(
            f"Backbone fine-tuning diverged (loss {float(weighted.detach())}); lower "
            f"backbone_lr (now {lr})."
        )
    return weighted * scale, float(weighted.detach())
