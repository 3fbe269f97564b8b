"""The Hugging Face face of an InterpretableModel: HF-style outputs and a PreTrainedModel view.

`imodel(pixel_values=x, labels=y)` answers the way a transformers classifier does
(`ImageClassifierOutput` with the cross-entropy loss), while `imodel(images)` keeps returning
logits for the rest of retrofit. `as_hf_model(imodel)` (or `imodel.to_transformers()`) wraps the
same modules in a `PreTrainedModel` whose config carries id2label/label2id, so that
`pipeline("image-classification", model=..., image_processor=...)` runs the converted model
(given the InterpretableModel itself, a pipeline fails at once with a TransformersViewError).
Tools that need a tensor out (Captum) take `view.logits_only()`, or the InterpretableModel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

if TYPE_CHECKING:
    from retrofit.model.interpretable import InterpretableModel

MODEL_TYPE = "retrofit"


def classifier_output(
    logits: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None
) -> ImageClassifierOutput | tuple[torch.Tensor, ...]:
    """What a transformers image classifier returns: the logits, and the loss when labels are given
    (cross-entropy, as for HF's single-label classification); a tuple with return_dict=False."""
    loss = None
    if labels is not None:
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.to(logits.device).view(-1))
    if return_dict is False:
        return (logits,) if loss is None else (loss, logits)
    return ImageClassifierOutput(loss=loss, logits=logits)


class RetrofitHFConfig(PretrainedConfig):
    """The transformers config of a converted model: its classes and retrofit's settings."""

    model_type = MODEL_TYPE


class RetrofitForImageClassification(PreTrainedModel):
    """A converted model seen as a transformers image classifier; it shares every module (and so
    every weight, device move and edit) with the InterpretableModel it wraps."""

    config_class = RetrofitHFConfig
    base_model_prefix = "interpretable"
    main_input_name = "pixel_values"
    input_modalities = "image"

    def __init__(self, config: RetrofitHFConfig, interpretable: InterpretableModel) -> None:
        super().__init__(config)
        self.interpretable = interpretable
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing to initialise: every module is the converted model's own, already trained."""

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ImageClassifierOutput | tuple[torch.Tensor, ...]:
        return self.interpretable(pixel_values=pixel_values, labels=labels, return_dict=return_dict)

    def logits_only(self) -> torch.nn.Module:
        """This model returning the logits tensor instead of an ImageClassifierOutput, for
        tools that need a tensor: `IntegratedGradients(view.logits_only())`,
        `LayerGradCam(view.logits_only(), layer)` (Captum); it shares every module."""
        from retrofit.extraction.outputs import LogitsOnly

        return LogitsOnly(self)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        include_backbone: bool = False,
        base_model: str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the retrofit export (what retrofit.load and from_pretrained read), not a
        transformers checkpoint; a pipeline's save_pretrained adds its image processor to it."""
        return self.interpretable.save_pretrained(
            save_directory,
            include_backbone=include_backbone,
            base_model=base_model,
            overwrite=overwrite,
        )

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, **options: Any
    ) -> RetrofitForImageClassification:
        """An export folder or Hub repo id, loaded by retrofit.load(path, **options)."""
        from retrofit.model.interpretable import load

        return as_hf_model(load(path, **options))

    def push_to_hub(self, repo_id: str, **options: Any) -> Any:
        """Upload the retrofit export; see InterpretableModel.push_to_hub."""
        return self.interpretable.push_to_hub(repo_id, **options)


# the image-classification pipeline logs an error for a model class missing from this table
MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.setdefault(
    MODEL_TYPE, RetrofitForImageClassification.__name__
)


def hf_config(imodel: InterpretableModel) -> RetrofitHFConfig:
    names = list(imodel.class_names)
    return RetrofitHFConfig(
        id2label=dict(enumerate(names)),
        label2id={name: index for index, name in enumerate(names)},
        problem_type="single_label_classification",
        retrofit=imodel.config.to_dict(),
        base_model_class=type(imodel.backbone).__name__,
        n_features=imodel.n_features,
    )


def as_hf_model(imodel: InterpretableModel) -> RetrofitForImageClassification:
    """`imodel` as a transformers PreTrainedModel (sharing its modules), for pipelines and
    code written for transformers classifiers."""
    return RetrofitForImageClassification(hf_config(imodel), imodel).eval()


def image_processor(imodel: InterpretableModel) -> Any:
    """The base model's own image processor, rebuilt from the preprocessing the export records
    (a transformers base model whose preprocessor_config.json was known when it was saved)."""
    from retrofit.adapters.transformers import image_processor as rebuild
    from retrofit.errors import ConfigError
    from retrofit.extraction.preprocessing import preprocessing_of_model

    preprocessing = preprocessing_of_model(imodel)
    if not preprocessing or preprocessing.get("source") != "transformers":
        raise ConfigError(
            "This model records no transformers image processor (its base model is not a "
            "transformers model, or its preprocessor_config.json was not known when it was "
            "saved); pass the original processor, or use imodel.image_transform()."
        )
    return rebuild(preprocessing)
