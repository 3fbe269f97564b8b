"""One explainer protocol for the pixel and consistency checks: every registered method answers
(images, target=...) with attributions of the promised shape, and Grad-CAM of a plain model
through `Spatial` is the same map as Grad-CAM of the interpretable model on the same layer."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.check.explainers import PIXEL_EXPLAINERS, GradCam, Spatial, gradcam
from retrofit.check.pixel import PIXEL_METHODS
from retrofit.extraction.hooks import detect_layers
from tests.tiny import SmallCNN, colour_coded_images

C = 3


@pytest.fixture(scope="module")
def converted() -> tuple[torch.nn.Module, retrofit.InterpretableModel, torch.Tensor]:
    torch.manual_seed(0)
    images, labels = colour_coded_images(48, 16, C, bright=3)
    model = SmallCNN(C).eval()
    imodel = retrofit.convert(
        model,
        DataLoader(TensorDataset(images, labels), batch_size=16),
        method="qsenn",
        n_features=6,
        per_class=2,
        finetune="none",
        progress=False,
    )
    return model, imodel.eval(), images[:6]


def test_the_pixel_methods_are_the_registered_explainers() -> None:
    assert tuple(PIXEL_EXPLAINERS) == PIXEL_METHODS
    for build, entries in PIXEL_EXPLAINERS.values():
        assert (
            callable(build)
            and entries
            and all(level in ("class", "feature") for level, _ in entries)
        )


@pytest.mark.parametrize("method", PIXEL_METHODS)
def test_every_explainer_answers_with_image_shaped_attributions(method: str, converted) -> None:
    _, imodel, images = converted
    build, entries = PIXEL_EXPLAINERS[method]
    for level, name in entries:
        explain = build(imodel, level, 4, 16)
        assert explain.name == name
        target = torch.zeros(len(images), dtype=torch.long)
        attributions = explain(images, target=target)
        assert attributions.shape == images.shape
        assert torch.isfinite(attributions).all() and (attributions != 0).any()


def test_gradcam_of_a_plain_model_through_spatial_matches_the_interpretable_path(converted) -> None:
    model, imodel, images = converted
    spec, _ = detect_layers(model, images[:2])
    assert spec.maps_module == imodel.spec.maps_module
    classes = imodel(images).argmax(dim=1)
    plain = GradCam(imodel, Spatial(imodel.backbone, imodel.spec))(images, classes)
    torch.testing.assert_close(plain, gradcam(imodel, images, classes, "class"))
    assert plain.shape == (len(images), *images.shape[2:])
    of_original = GradCam(model, Spatial(model, spec))(images, classes)
    assert of_original.shape == plain.shape and torch.isfinite(of_original).all()
