"""convert() end to end on tiny real models: every method, finetune modes, determinism, errors."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.registry import HEADS
from tests.tiny import colour_coded_images

C = 4


class SmallCNN(nn.Module):
    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(12, width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(width, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return colour_coded_images(96, 16, C, bright=3)


def _loader(data, batch_size: int = 32) -> DataLoader:
    return DataLoader(TensorDataset(*data), batch_size=batch_size)


@pytest.mark.parametrize("method", HEADS.names())
def test_every_method_converts_and_runs_on_images(method: str, data) -> None:
    model = SmallCNN().eval()
    imodel = retrofit.convert(
        model,
        _loader(data),
        method=method,
        n_features=8,
        per_class=2,
        finetune="none",
        progress=False,
    )
    images, _ = data
    with torch.no_grad():
        from_images = imodel(images[:8])
        from_cache = imodel.forward_features(
            retrofit.extract(model, [data], progress=False).features[:8]
        )
    torch.testing.assert_close(from_images, from_cache, rtol=1e-5, atol=1e-5)
    assert from_images.shape == (8, C)
    n_features = 24 if method == "dense" else 8
    assert imodel.selected_features.shape == (n_features,)
    assert imodel.assignment.shape == (C, n_features) and imodel.assignment.dtype == torch.int8
    assert set(imodel.assignment.unique().tolist()) <= {-1, 0, 1}
    if method == "qpm":
        assert imodel.assignment.sum(dim=1).tolist() == [2] * C
        assert len({tuple(row.tolist()) for row in imodel.assignment}) == C
    table = imodel.global_explanation()
    assert list(table) == imodel.class_names and all(isinstance(v, list) for v in table.values())
    shown = repr(imodel)  # the interpretable parts, not the backbone's every layer
    assert len(shown.splitlines()) == 7 and f"method: {method}" in shown
    nonzero = int((imodel.head.weight != 0).sum())
    read = imodel.bottleneck.attributes  # FLINT's head reads its learned attributes
    source = "24 channels" if read is None else f"{imodel.bottleneck.in_features} attributes"
    assert f"{n_features} features from {source}" in shown and f"{nonzero} non-zero" in shown
    kind = {"qpm": "binary", "qsenn": "ternary"}.get(method)
    assert kind is None or f"{kind} weights" in shown


def test_same_seed_gives_the_same_model_and_distillation_reaches_qsenn(data) -> None:
    model = SmallCNN().eval()
    settings = {"method": "qsenn", "n_features": 8, "per_class": 2, "epochs": 2, "rounds": 2}
    runs = [
        retrofit.convert(model, _loader(data), progress=False, distill=distill, **settings)
        for distill in (0.0, 0.0, 1.0)
    ]
    a, b, distilled = (dict(r.state_dict()) for r in runs)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["bottleneck.mix"], distilled["bottleneck.mix"])


def test_bottleneck_finetuning_is_recorded_and_keeps_accuracy(data) -> None:
    model = SmallCNN().eval()
    kwargs = {"method": "qpm", "n_features": 8, "per_class": 2, "progress": False}
    frozen = retrofit.convert(model, _loader(data), finetune="none", **kwargs)
    tuned = retrofit.convert(model, _loader(data), finetune="bottleneck", epochs=30, **kwargs)
    history = tuned.stats["history"]["bottleneck"]
    assert len(history["loss"]) == 30
    assert tuned.stats["train"]["accuracy"] >= frozen.stats["train"]["accuracy"]
    assert torch.equal(tuned.head.weight, frozen.head.weight), "fine-tuning never changes the head"


def test_backbone_finetuning_trains_a_copy(data) -> None:
    model = SmallCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imodel = retrofit.convert(
        model,
        _loader(data),
        _loader(data),
        method="qpm",
        n_features=8,
        per_class=2,
        finetune="backbone",
        backbone_lr=0.005,
        backbone_epochs=2,
        progress=False,
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), (
        "the user's model is untouched"
    )
    changed = [k for k, v in imodel.backbone.state_dict().items() if not torch.equal(before[k], v)]
    assert changed and len(imodel.stats["history"]["backbone"]["loss"]) == 2
    assert set(imodel.stats["val"]) == {"accuracy", "original_accuracy", "agreement"}


def test_tiny_torchvision_and_hf_models_convert(data) -> None:
    import torchvision

    images, labels = data
    loader = _loader((torch.nn.functional.interpolate(images, size=32), labels))
    for model in (
        torchvision.models.resnet18(num_classes=C),
        transformers.ResNetForImageClassification(
            transformers.ResNetConfig(
                embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=C
            )
        ),
    ):
        imodel = retrofit.convert(
            model.eval(), loader, method="qpm", n_features=6, per_class=2, epochs=2, progress=False
        )
        assert imodel(torch.rand(2, 3, 32, 32)).shape == (2, C)
        assert imodel.assignment.sum().item() == 2 * C


def test_impossible_settings_fail_before_any_fit(data) -> None:
    with pytest.raises(
        retrofit.InfeasibleSettingsError, match="n_features=30 is larger than the 24"
    ):
        retrofit.convert(SmallCNN(), _loader(data), n_features=30, progress=False)
    with pytest.raises(retrofit.ConfigError, match="per_class=9 is larger than n_features=8"):
        retrofit.convert(SmallCNN(), _loader(data), n_features=8, per_class=9, progress=False)
    with pytest.raises(retrofit.ConfigError, match="n_featrues"):
        retrofit.convert(SmallCNN(), _loader(data), n_featrues=8, progress=False)
    with pytest.raises(retrofit.ConfigError, match="method='lasso'"):
        retrofit.convert(SmallCNN(), _loader(data), method="lasso", progress=False)
