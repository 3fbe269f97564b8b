"""Penultimate-layer detection on every model family, with tiny randomly initialised models."""

from __future__ import annotations

import open_clip
import pytest
import timm
import torch
import torchvision
import transformers
from torch import nn

import retrofit
from retrofit.adapters import adapter_for
from retrofit.adapters.open_clip import zero_shot_classifier
from retrofit.extraction.hooks import FeatureCapture, detect_layers
from tests.tiny import TINY_VIT

C = 4


def _capture(model: nn.Module, images: torch.Tensor, feature_layer: str | None = None):
    model.eval()
    spec, logits = detect_layers(
        model, images, feature_layer, adapter_for(model).preferred_heads(model)
    )
    capture = FeatureCapture(model, spec, with_maps=True)
    with capture.attached(), torch.no_grad():
        model(images)
    return spec, logits, capture.features(), capture.maps


TORCHVISION = {
    "resnet18": ("fc", "layer4", 64),
    "convnext_tiny": ("classifier.2", "features", 64),
    "efficientnet_b0": ("classifier.1", "features", 64),
    "mobilenet_v3_small": ("classifier.3", None, 64),
    "densenet121": ("classifier", "features", 64),
    "vgg11": ("classifier.6", None, 64),
    "swin_t": ("head", "permute", 64),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_head_input_reproduces_logits(name: str) -> None:
    head_name, maps_module, size = TORCHVISION[name]
    model = torchvision.models.get_model(name, num_classes=C)
    spec, logits, features, maps = _capture(model, torch.rand(2, 3, size, size))
    assert adapter_for(model).name == "torchvision"
    assert spec.heads == (head_name,)
    assert spec.maps_module == maps_module
    head = model.get_submodule(head_name)
    torch.testing.assert_close(head(features), logits, rtol=1e-4, atol=1e-4)
    if maps_module is not None:
        assert maps.shape[:2] == (2, features.shape[1])


def test_torchvision_vit_tokens_become_a_grid() -> None:
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=C,
    )
    spec, logits, features, maps = _capture(model, torch.rand(2, 3, 32, 32))
    assert spec.heads == ("heads.head",) and spec.maps_layout == "tokens"
    assert maps.shape == (2, 16, 4, 4)
    torch.testing.assert_close(model.heads.head(features), logits)


def test_squeezenet_conv_classifier_is_detected() -> None:
    model = torchvision.models.squeezenet1_1(num_classes=C)
    spec, _, features, maps = _capture(model, torch.rand(2, 3, 64, 64))
    assert spec.heads == ("classifier.1",) and spec.maps_layout == "head_input"
    assert features.shape == (2, 512)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), features)


def _deit_config() -> transformers.DeiTConfig:
    return transformers.DeiTConfig(**TINY_VIT, num_labels=C)


HF_MODELS = {
    "resnet": lambda: transformers.ResNetForImageClassification(
        transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=C
        )
    ),
    "vit": lambda: transformers.ViTForImageClassification(
        transformers.ViTConfig(**TINY_VIT, num_labels=C)
    ),
    "convnext": lambda: transformers.ConvNextForImageClassification(
        transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=C)
    ),
    "swin": lambda: transformers.SwinForImageClassification(
        transformers.SwinConfig(
            image_size=32,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1],
            num_heads=[1, 2],
            window_size=4,
            num_labels=C,
        )
    ),
    "deit": lambda: transformers.DeiTForImageClassification(_deit_config()),
}


@pytest.mark.parametrize("kind", sorted(HF_MODELS))
def test_transformers_models(kind: str) -> None:
    model = HF_MODELS[kind]()
    spec, logits, features, maps = _capture(model, torch.rand(2, 3, 32, 32))
    assert adapter_for(model).name == "transformers"
    head = model.get_submodule(spec.heads[0])
    torch.testing.assert_close(head(features), logits, rtol=1e-4, atol=1e-4)
    assert maps is not None and maps.shape[:2] == (2, features.shape[1])


def test_distilled_deit_concatenates_both_heads() -> None:
    model = transformers.DeiTForImageClassificationWithTeacher(_deit_config())
    spec, logits, features, _ = _capture(model, torch.rand(2, 3, 32, 32))
    assert spec.heads == ("cls_classifier", "distillation_classifier")
    half = features.shape[1] // 2
    recombined = (
        model.cls_classifier(features[:, :half]) + model.distillation_classifier(features[:, half:])
    ) / 2
    torch.testing.assert_close(recombined, logits)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("resnet18", {}),
        ("vit_tiny_patch16_224", {"img_size": 32}),
        ("deit_tiny_distilled_patch16_224", {"img_size": 32}),
    ],
)
def test_timm_models(name: str, kwargs: dict) -> None:
    model = timm.create_model(name, num_classes=C, pretrained=False, **kwargs)
    spec, logits, features, _ = _capture(model, torch.rand(2, 3, 32, 32))
    assert adapter_for(model).name == "timm"
    with torch.no_grad():
        pre_logits = model.forward_head(
            model.forward_features(torch.rand(0, 3, 32, 32)), pre_logits=True
        )
    assert features.shape[1] == (
        pre_logits.shape[-1] * len(spec.heads) if len(spec.heads) > 1 else pre_logits.shape[-1]
    )
    if len(spec.heads) == 1:
        torch.testing.assert_close(
            model.get_submodule(spec.heads[0])(features), logits, rtol=1e-4, atol=1e-4
        )
    else:
        assert spec.heads == ("head", "head_dist")


def test_open_clip_visual_tower_with_zero_shot_head() -> None:
    clip = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        text_cfg={"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    )
    tokenizer = lambda texts: torch.arange(len(texts) * 16).reshape(len(texts), 16) % 100  # noqa: E731
    model = zero_shot_classifier(clip, tokenizer, ["cat", "dog", "bird"])
    spec, logits, features, _ = _capture(model, torch.rand(2, 3, 32, 32))
    assert adapter_for(model).name == "open_clip" and spec.heads == ("head",)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(model.logit_scale * model.head(features), logits)


class TupleNet(nn.Module):
    """A plain module returning (logits, extra) from a small conv body."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(width, C)

    def forward(self, x: torch.Tensor):
        pooled = self.pool(self.body(x)).flatten(1)
        return self.out(pooled), pooled


class DictNet(TupleNet):
    def forward(self, x: torch.Tensor):
        logits, pooled = super().forward(x)
        return {"embedding": pooled, "logits": logits}


@pytest.mark.parametrize("cls", [TupleNet, DictNet])
def test_generic_models_with_tuple_and_dict_outputs(cls: type) -> None:
    model = cls()
    spec, logits, features, maps = _capture(model, torch.rand(2, 3, 16, 16))
    assert adapter_for(model).name == "generic"
    assert spec.heads == ("out",) and spec.maps_module == "body"
    torch.testing.assert_close(model.out(features), logits)
    assert maps.shape == (2, 6, 16, 16)


def test_feature_layer_override_and_input_suffix() -> None:
    model = TupleNet()
    spec, _, features, maps = _capture(model, torch.rand(2, 3, 16, 16), feature_layer="body")
    assert spec.module == "body" and features.shape == (2, 6) and maps.shape == (2, 6, 16, 16)
    spec, _, features, _ = _capture(model, torch.rand(2, 3, 16, 16), feature_layer="out:input")
    assert spec.use_input and features.shape == (2, 6)


def test_missing_feature_layer_lists_candidates() -> None:
    with pytest.raises(
        retrofit.LayerNotFoundError, match=r"Did you mean \['body'.*out \(Linear 6->4\)"
    ):
        _capture(TupleNet(), torch.rand(1, 3, 16, 16), feature_layer="bdy")


def test_model_without_a_matching_head_is_explained() -> None:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 6), nn.Unflatten(1, (2, 3)), nn.Conv1d(2, 1, 1), nn.Flatten()
    )
    with pytest.raises(retrofit.LayerNotFoundError, match=r"Candidates: 1 \(Linear 12->6\)"):
        _capture(model, torch.rand(2, 3, 2, 2))
