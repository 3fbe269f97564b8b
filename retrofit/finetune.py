"""finetune="backbone": train the backbone and bottleneck from images with the head fixed."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from retrofit.errors import FeatureError
from retrofit.loaders import iterate
from retrofit.model import InterpretableModel

logger = logging.getLogger(__name__)


def finetune_backbone(
    imodel: InterpretableModel,
    batches: Iterable,
    device: torch.device,
    sample_weights: torch.Tensor | None = None,
) -> dict[str, list[float]]:
    """SGD with momentum 0.95 and weight decay 5e-4 (the references' setting) on backbone + bottleneck.

    `sample_weights` weight each image's loss, in the order `batches` yields them (the
    loader must not shuffle); images beyond the weights get weight 1.
    """
    config = imodel.config
    torch.manual_seed(config.seed)
    imodel.to(device).train()
    params = [p for p in imodel.backbone.parameters() if p.requires_grad]
    params += list(imodel.bottleneck.parameters())
    optimiser = torch.optim.SGD(params, lr=config.backbone_lr, momentum=0.95, weight_decay=5e-4)
    history: dict[str, list[float]] = {"loss": []}
    for _ in tqdm(
        range(config.backbone_epochs), desc="backbone fine-tuning", disable=not config.progress
    ):
        total, count = 0.0, 0
        for images, labels in iterate(batches):
            images, labels = images.to(device), labels.to(device)
            if sample_weights is None:
                loss = F.cross_entropy(imodel(images), labels)
            else:
                weights = torch.ones(len(labels), device=device)
                known = sample_weights[count : count + len(labels)].to(device)
                weights[: len(known)] = known
                losses = F.cross_entropy(imodel(images), labels, reduction="none")
                loss = (weights * losses).mean()
            if not torch.isfinite(loss):
                raise FeatureError(
                    f"Backbone fine-tuning diverged (loss {float(loss)}); lower backbone_lr "
                    f"(now {config.backbone_lr})."
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(labels)
            count += len(labels)
        history["loss"].append(total / max(count, 1))
        logger.info("backbone epoch loss %.4f", history["loss"][-1])
    imodel.eval()
    return history
