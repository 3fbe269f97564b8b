"""open_clip visual towers: a CLIP image encoder plus a linear head is a classifier.

A bare CLIP model has no classes, so `OpenCLIPClassifier` pairs its visual tower with a head:
zero-shot (text embeddings of prompts per class) or any trained linear probe. The penultimate
features are the normalised image embeddings, i.e. the output of the visual projection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retrofit.adapters.base import ModelAdapter, register_adapter
from retrofit.safe_io import MAX_COUNT, MAX_FEATURE_DIM, flag, real, whole

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.")


class OpenCLIPClassifier(nn.Module):
    """An open_clip visual tower followed by a linear `head` on normalised embeddings."""

    def __init__(self, visual: nn.Module, head: nn.Linear, logit_scale: float = 100.0) -> None:
        super().__init__()
        self.visual = visual
        self.head = head
        self.logit_scale = logit_scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.visual(images)
        if isinstance(embedding, (tuple, list)):
            embedding = embedding[0]
        return self.logit_scale * self.head(F.normalize(embedding, dim=-1))


@torch.no_grad()
def zero_shot_classifier(
    clip_model: nn.Module,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> OpenCLIPClassifier:
    """A classifier whose head rows are the averaged, normalised prompt embeddings per class."""
    rows = []
    for name in class_names:
        tokens = tokenizer([t.format(name) for t in templates])
        text = F.normalize(clip_model.encode_text(tokens).float(), dim=-1).mean(dim=0)
        rows.append(F.normalize(text, dim=0))
    weight = torch.stack(rows)
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight.copy_(weight)
    return OpenCLIPClassifier(clip_model.visual, head)


def load_open_clip(arch: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """open_clip.create_model(arch, pretrained=tag or local checkpoint file)."""
    import open_clip

    return open_clip.create_model(arch, pretrained=pretrained, **kwargs)


def _is_open_clip(model: nn.Module) -> bool:
    return isinstance(model, OpenCLIPClassifier)


def open_clip_transform(preprocessing: Mapping[str, Any]) -> Callable[[Any], Any]:
    """open_clip's own eval transform for the preprocessing an export records."""
    import open_clip

    size = preprocessing["size"]
    return open_clip.image_transform(
        tuple(size) if isinstance(size, list) else size,
        is_train=False,
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
        resize_mode=preprocessing.get("resize_mode"),
        interpolation=preprocessing.get("interpolation"),
        fill_color=preprocessing.get("fill_color", 0),
    )


OPEN_CLIP = register_adapter(
    ModelAdapter(
        name="open_clip",
        matches=_is_open_clip,
        preferred_heads=lambda model: ["head"],
        load=load_open_clip,
        priority=30,
        build_kwargs={
            "num_classes": whole(1, MAX_COUNT),
            "embed_dim": whole(1, MAX_FEATURE_DIM),
            "head_bias": flag,
            "logit_scale": real(0.0, 1e6),
        },
        image_transform=open_clip_transform,
    )
)
