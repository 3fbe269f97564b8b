"""HuggingFace AutoModelForImageClassification (ResNet, ViT, ConvNeXt, Swin, DeiT, ...)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from retrofit.adapters.base import ModelAdapter, ModelSpec, register_adapter
from retrofit.errors import ConfigError, ModelError

TWO_HEADS = ["cls_classifier", "distillation_classifier"]


def _is_hf(model: nn.Module) -> bool:
    if "transformers.modeling_utils" not in sys.modules:  # no PreTrainedModel can exist yet,
        return False  # and importing transformers costs seconds in every fresh (rank) process
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def _heads(model: nn.Module) -> list[str]:
    names = {name for name, _ in model.named_modules()}
    if all(h in names for h in TWO_HEADS):
        return TWO_HEADS
    return [n for n in ("classifier", "classifier.1", "head") if n in names]


def load_transformers(name_or_path: str, revision: str | None = None, **kwargs: Any) -> nn.Module:
    """AutoModelForImageClassification.from_pretrained(hub id or local folder)."""
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(
        name_or_path, revision=revision, **kwargs
    )


def image_processor(preprocessing: Mapping[str, Any]) -> Any:
    """The original image processor, rebuilt from its recorded preprocessor_config.json. Only a
    processor class of transformers itself is accepted (never code named by the export)."""
    import transformers

    settings = {k: v for k, v in preprocessing.items() if k != "source"}
    name = settings.get("image_processor_type")
    processor_class = getattr(transformers, name, None) if isinstance(name, str) else None
    if not (
        isinstance(processor_class, type)
        and issubclass(processor_class, transformers.ImageProcessingMixin)
    ):
        raise ConfigError(
            f"The recorded preprocessing names image processor {name!r}, which is not an image "
            "processor class of transformers; pass the model's own image processor instead."
        )
    return processor_class.from_dict(settings)


def transformers_transform(preprocessing: Mapping[str, Any]) -> Callable[[Any], Any]:
    """A PIL image to pixel_values (C, H, W) through the original image processor."""
    processor = image_processor(preprocessing)
    return lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0]


def parse_hf_spec(rest: str, text: str) -> ModelSpec:
    """hf:ORG/NAME[@REVISION], hf:/local/folder, or a bare local folder with a config.json."""
    if not Path(rest).is_dir() and "@" in rest:
        name, _, revision = rest.partition("@")
        return ModelSpec("transformers", name, revision=revision or None)
    return ModelSpec("transformers", rest)


def _is_model_folder(text: str) -> bool:
    return Path(text).is_dir() and (Path(text) / "config.json").is_file()


def format_hf_spec(spec: ModelSpec) -> str:
    return f"hf:{spec.name}" + (f"@{spec.revision}" if spec.revision else "")


def build_transformers(
    spec: ModelSpec, pretrained: bool, trust_remote_code: bool | None
) -> nn.Module:
    """From the hub or a local folder; pretrained=False with a stored config builds offline."""
    if pretrained or spec.arch_config is None:
        local = Path(spec.name)
        if not local.is_dir() and (local.is_absolute() or spec.name.startswith(".")):
            raise ModelError(
                f"The HF model folder {spec.name} does not exist (any more). Pass the model "
                "itself, or export with include_backbone=True so the folder stands alone."
            )
        trust = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}
        return load_transformers(spec.name, revision=spec.revision, **trust)
    from transformers import AutoConfig, AutoModelForImageClassification

    data = dict(spec.arch_config)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    return AutoModelForImageClassification.from_config(config)


def derive_hf_spec(model: nn.Module) -> ModelSpec | None:
    """hf:NAME_OR_PATH[@COMMIT] from config._name_or_path; None when it is empty."""
    config = model.config
    name = getattr(config, "_name_or_path", "") or ""
    if not name:
        return None
    revision = None if Path(name).is_dir() else getattr(config, "_commit_hash", None)
    if Path(name).is_dir():
        name = str(Path(name).resolve())
    return ModelSpec("transformers", name, revision=revision)


def describe_transformers(model: nn.Module, spec: ModelSpec) -> None:
    """The full config, so the architecture can be built offline without the hub."""
    spec.arch_config = json.loads(model.config.to_json_string(use_diff=False))


def hf_transform(model: nn.Module, spec: ModelSpec) -> Callable:
    """The model's own image processor, one PIL image to one pixel tensor."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(spec.name)
    return lambda image: processor(images=image.convert("RGB"), return_tensors="pt")[
        "pixel_values"
    ][0]


def hf_preprocessing(model: nn.Module, spec: ModelSpec | None) -> dict[str, Any] | None:
    """preprocessor_config.json from the model's local folder or the local Hub cache (never the
    network); None when neither has it."""
    name = getattr(model.config, "_name_or_path", "") or ""
    if not name:
        return None
    if Path(name).is_dir():
        file = Path(name) / "preprocessor_config.json"
        path = str(file) if file.is_file() else None
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "preprocessor_config.json")
        path = found if isinstance(found, str) else None
    if path is None:
        return None
    return {"source": "transformers", **json.loads(Path(path).read_text())}


def hf_class_names(model: nn.Module) -> list[str] | None:
    """config.id2label in class order, unless it holds only transformers' LABEL_i placeholders."""
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    names = [id2label.get(i, id2label.get(str(i))) for i in range(len(id2label))]
    if not names or any(not isinstance(n, str) for n in names):
        return None
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


TRANSFORMERS = register_adapter(
    ModelAdapter(
        name="transformers",
        matches=_is_hf,
        preferred_heads=_heads,
        load=load_transformers,
        priority=20,
        image_transform=transformers_transform,
        prefix="hf",
        spec_forms="hf:ORG/NAME[@REVISION] or hf:/local/folder",
        parse_spec=parse_hf_spec,
        format_spec=format_hf_spec,
        claims_spec=_is_model_folder,
        build=build_transformers,
        derive_spec=derive_hf_spec,
        describe=describe_transformers,
        classifier_width=lambda model: int(model.config.num_labels),
        data_transform=hf_transform,
        preprocessing=hf_preprocessing,
        class_names=hf_class_names,
    )
)
