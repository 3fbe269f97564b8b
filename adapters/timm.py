"""timm models: the head is `get_classifier()` (plus `head_dist` for distilled models)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from retrofit.adapters.base import ModelAdapter, ModelSpec, module_name, plain, register_adapter
from retrofit.io.files import MAX_COUNT, MAX_IMAGE_SIDE, sizes, whole


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.") and hasattr(model, "get_classifier")


def _heads(model: nn.Module) -> list[str]:
    classifier = model.get_classifier()
    modules = list(classifier) if isinstance(classifier, tuple) else [classifier]
    head_dist = getattr(model, "head_dist", None)
    if isinstance(head_dist, nn.Module) and all(head_dist is not m for m in modules):
        modules.append(head_dist)
    names = [module_name(model, m) for m in modules]
    return [n for n in names if n]


def load_timm(
    name: str, pretrained: bool = False, checkpoint_path: str | None = None, **kwargs: Any
) -> nn.Module:
    """timm.create_model(name, pretrained=..., checkpoint_path=...)."""
    import timm

    return timm.create_model(
        name, pretrained=pretrained, checkpoint_path=checkpoint_path or "", **kwargs
    )


TIMM_TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def timm_transform(preprocessing: Mapping[str, Any]) -> Callable[[Any], Any]:
    """timm's own eval transform for the data config an export records."""
    from timm.data import create_transform

    settings = {k: preprocessing[k] for k in TIMM_TRANSFORM_KEYS if k in preprocessing}
    settings["input_size"] = tuple(settings["input_size"])
    return create_transform(**settings, is_training=False)


def build_timm(spec: ModelSpec, pretrained: bool, trust_remote_code: bool | None) -> nn.Module:
    return load_timm(spec.name, pretrained=pretrained, **spec.kwargs)


def derive_timm_spec(model: nn.Module) -> ModelSpec | None:
    """timm:ARCH[.TAG] from the model's pretrained_cfg; None when it has none."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        return None
    return ModelSpec("timm", f"{arch}.{cfg['tag']}" if cfg.get("tag") else arch)


def describe_timm(model: nn.Module, spec: ModelSpec) -> None:
    """The class count, and img_size where it differs from the pretrained config's."""
    spec.kwargs["num_classes"] = int(model.num_classes)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    default = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if img_size is not None and (default is None or tuple(default[1:]) != tuple(img_size)):
        spec.kwargs["img_size"] = list(img_size)


def timm_model_transform(model: nn.Module, spec: ModelSpec) -> Callable:
    """timm's eval transform from the model's resolved data config."""
    import timm

    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))


def timm_preprocessing(model: nn.Module, spec: ModelSpec | None) -> dict[str, Any]:
    """timm's resolved data config, at the image size the model was built for."""
    from timm.data import resolve_data_config

    data = resolve_data_config({}, model=model)
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        data["input_size"] = (data["input_size"][0], *img_size)
    return {"source": "timm", **{k: plain(v) for k, v in data.items()}}


TIMM = register_adapter(
    ModelAdapter(
        name="timm",
        matches=_is_timm,
        preferred_heads=_heads,
        load=load_timm,
        priority=10,
        build_kwargs={
            "num_classes": whole(0, MAX_COUNT),
            "img_size": lambda v: whole(1, MAX_IMAGE_SIDE)(v) or sizes(2, 2, MAX_IMAGE_SIDE)(v),
        },
        image_transform=timm_transform,
        prefix="timm",
        spec_forms="timm:NAME",
        build=build_timm,
        derive_spec=derive_timm_spec,
        describe=describe_timm,
        classifier_width=lambda model: int(model.num_classes),
        data_transform=timm_model_transform,
        preprocessing=timm_preprocessing,
    )
)
