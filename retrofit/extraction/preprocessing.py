"""How a converted model reads an image: a transform built from the preprocessing its export records.

An export records the base model's preprocessing (retrofit.io.specs.preprocessing_of): a torchvision
weights enum's transform values, timm's data config, an HF image processor's config or open_clip's
preprocess config, each tagged with its `source` family. The family's adapter turns it back into
the callable PIL image -> input tensor; without a record the image is resized to the size the
model was converted on and scaled to [0, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from retrofit.errors import ConfigError

if TYPE_CHECKING:
    from retrofit.model.interpretable import InterpretableModel

logger = logging.getLogger(__name__)


def preprocessing_of_model(imodel: InterpretableModel) -> dict[str, Any] | None:
    """The preprocessing a loaded model read from its export, or, for a model converted in this
    process, what its export would record."""
    if imodel.preprocessing is not None:
        return imodel.preprocessing
    from retrofit.io.specs import describe_model, preprocessing_of

    spec = describe_model(imodel.backbone, imodel.config.base_model)
    return preprocessing_of(imodel.backbone, spec)


def image_transform(
    preprocessing: Mapping[str, Any] | None, input_size: Sequence[int] | None = None
) -> Callable[[Any], Any]:
    """The callable PIL image -> (C, H, W) tensor the model expects.

    `preprocessing` is the record of an export (InterpretableModel.preprocessing); without one,
    `input_size` (H, W) is the resize target.
    """
    if not preprocessing:
        return _resize_only(input_size)
    from retrofit.adapters import available_adapters, get_adapter

    source = preprocessing.get("source")
    if source not in available_adapters() or get_adapter(source).image_transform is None:
        raise ConfigError(
            f"The recorded preprocessing comes from {source!r}, for which no model family "
            "builds a transform; build the transform yourself from imodel.preprocessing."
        )
    try:
        return get_adapter(source).image_transform(preprocessing)
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(
            f"The recorded {source} preprocessing is incomplete or invalid ({error!r}): "
            f"{dict(preprocessing)}."
        ) from error


def _resize_only(input_size: Sequence[int] | None) -> Callable[[Any], Any]:
    from torchvision import transforms

    if not input_size:
        raise ConfigError(
            "This model records neither its preprocessing nor its input size; build the "
            "transform that its base model expects yourself."
        )
    logger.warning(
        "No preprocessing is recorded for this model: images are only resized to %s and scaled "
        "to [0, 1], without the normalisation its base model may expect.",
        list(input_size),
    )
    return transforms.Compose(
        [transforms.Resize([int(s) for s in input_size]), transforms.ToTensor()]
    )
