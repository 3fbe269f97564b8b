"""The shipped demo classifier loads from safetensors and classifies its world well."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retrofit.datasets import (
    DemoCNN,
    SyntheticConceptDataset,
    demo_world_settings,
    load_demo_classifier,
)
from retrofit.errors import ConfigError


@pytest.fixture(scope="module")
def settings() -> dict:
    return demo_world_settings()


def test_settings_describe_the_world_and_how_to_regenerate(settings: dict) -> None:
    assert settings["n_classes"] == 50 and settings["image_size"] == 64
    assert isinstance(settings["seed"], int)
    assert 0.0 < settings["test_accuracy"] <= 1.0
    assert "scripts/train_demo_classifier.py" in settings["command"]


def test_model_loads_in_eval_mode_with_fc_head(settings: dict) -> None:
    model = load_demo_classifier()
    assert isinstance(model, DemoCNN) and not model.training
    assert isinstance(model.fc, nn.Linear)
    assert model.fc.out_features == settings["n_classes"]
    assert 128 <= model.fc.in_features <= 256
    assert model.fc.weight.shape == (settings["n_classes"], model.fc.in_features)
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert last == "fc"


def test_accuracy_on_fresh_test_images_is_high(settings: dict) -> None:
    model = load_demo_classifier()
    data = SyntheticConceptDataset(
        300,
        n_classes=settings["n_classes"],
        image_size=settings["image_size"],
        seed=settings["seed"],
        split="test",
    )
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        predictions = model(images).argmax(1)
    accuracy = float((predictions == data.labels).float().mean())
    assert accuracy > 0.8, f"demo accuracy {accuracy:.3f} (chance is 0.02)"


def test_bad_architecture_arguments() -> None:
    with pytest.raises(ConfigError, match="feature_dim"):
        DemoCNN(feature_dim=0)
