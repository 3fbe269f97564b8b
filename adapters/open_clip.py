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

from retrofit.adapters.base import ModelAdapter, ModelSpec, plain, register_adapter
from retrofit.errors import ConfigError, ModelError
from retrofit.io.files import MAX_COUNT, MAX_FEATURE_DIM, flag, real, whole

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


def parse_open_clip_spec(rest: str, text: str) -> ModelSpec:
    arch, _, tag = rest.partition(":")
    if not arch:
        raise ConfigError(f"Expected open_clip:ARCH[:TAG], got {text!r}.")
    return ModelSpec("open_clip", arch, weights=tag or None)


def build_open_clip_classifier(
    spec: ModelSpec, pretrained: bool, trust_remote_code: bool | None
) -> nn.Module:
    """The visual tower (pretrained tag or architecture only) with a head of the stored shape."""
    missing = [k for k in ("num_classes", "embed_dim") if k not in spec.kwargs]
    if missing:
        raise ModelError(
            f"The open_clip spec {spec} lacks the classifier head's shape ({missing}); an "
            "open_clip classifier is rebuilt from an export, or pass the model itself."
        )
    clip = load_open_clip(spec.name, pretrained=spec.weights if pretrained else None)
    head = nn.Linear(
        spec.kwargs["embed_dim"], spec.kwargs["num_classes"], bias=spec.kwargs.get("head_bias")
    )
    return OpenCLIPClassifier(clip.visual, head, float(spec.kwargs.get("logit_scale", 100.0)))


def describe_open_clip(model: nn.Module, spec: ModelSpec) -> None:
    spec.kwargs.update(
        {
            "num_classes": model.head.out_features,
            "embed_dim": model.head.in_features,
            "head_bias": model.head.bias is not None,
            "logit_scale": float(model.logit_scale),
        }
    )


def open_clip_preprocessing(model: nn.Module, spec: ModelSpec | None) -> dict[str, Any] | None:
    """The visual tower's preprocess config, or its image size, mean and std."""
    visual = model.visual
    cfg = getattr(visual, "preprocess_cfg", None)
    if cfg:
        return {"source": "open_clip", **{k: plain(v) for k, v in cfg.items()}}
    mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
    if mean is None or std is None:
        return None
    size = getattr(visual, "image_size", None)
    return {"source": "open_clip", "size": plain(size), "mean": plain(mean), "std": plain(std)}


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
        preprocessing=open_clip_preprocessing,
        prefix="open_clip",
        spec_forms="open_clip:ARCH[:TAG]",
        parse_spec=parse_open_clip_spec,
        build=build_open_clip_classifier,
        describe=describe_open_clip,
        without_backbone=(
            "its head (e.g. zero-shot text embeddings) is not part of the pretrained tag."
        ),
    )
)
