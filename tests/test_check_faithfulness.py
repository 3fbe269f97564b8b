"""check() end to end: faithfulness by construction, Captum on every layout, localisation, errors."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.check import CheckFailedError, Report, check
from retrofit.check.explainers import gradcam
from retrofit.config import RetrofitConfig
from retrofit.datasets import SyntheticConceptDataset
from retrofit.errors import ConfigError
from retrofit.extraction.hooks import FeatureCapture, detect_layers
from retrofit.fitting.bottleneck import Bottleneck, FixedHead
from retrofit.model.interpretable import InterpretableModel

C = 3
SIZE = 16
PATCH = 5
FAST = {"ig_steps": 8, "curve_steps": 8, "perturb_samples": 2, "progress": False}


class ColourNet(nn.Module):
    """1x1 detectors of saturated red, green and blue (+ overall brightness), pooled, then fc.

    Pixels of a pure colour fire its detector; the dark noisy background fires none, so the
    evidence for a class sits exactly on the coloured patch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.fc = nn.Linear(4, C)
        with torch.no_grad():
            self.body[0].weight.copy_(
                torch.tensor(
                    [[1.0, -1.5, -1.5], [-1.5, 1.0, -1.5], [-1.5, -1.5, 1.0], [0.3, 0.3, 0.3]]
                )[:, :, None, None]
            )
            self.body[0].bias.copy_(torch.tensor([-0.2, -0.2, -0.2, 0.0]))
            self.fc.weight.copy_(torch.cat([torch.eye(C) * 20, torch.zeros(C, 1)], dim=1))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


def patch_data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dark noise with one pure-colour square per image; the class is the colour. Also the masks."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % C
    images = torch.rand(n, 3, SIZE, SIZE, generator=generator) * 0.3
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    corners = torch.randint(0, SIZE - PATCH, (n, 2), generator=generator)
    for i, (y, x) in enumerate(corners.tolist()):
        images[i, :, y : y + PATCH, x : x + PATCH] = 0.0
        images[i, int(labels[i]), y : y + PATCH, x : x + PATCH] = 1.0
        masks[i, y : y + PATCH, x : x + PATCH] = True
    return images, labels, masks


def build_imodel(
    model: nn.Module,
    images: torch.Tensor,
    weight: torch.Tensor,
    selected: list[int] | None = None,
) -> InterpretableModel:
    """An InterpretableModel with a hand-set head on the given features (no fitting)."""
    model.eval()
    spec, _ = detect_layers(model, images[:2])
    capture = FeatureCapture(model, spec)
    with torch.no_grad(), capture.attached():
        model(images)
    features = capture.features()
    index = torch.tensor(selected if selected is not None else list(range(features.shape[1])))
    bottleneck = Bottleneck(
        index,
        features[:, index].mean(dim=0),
        features[:, index].std(dim=0, unbiased=False).clamp_min(1e-3),
        features.shape[1],
    )
    head = FixedHead(weight, torch.zeros(weight.shape[0]))
    return InterpretableModel(model, spec, bottleneck, head, RetrofitConfig()).eval()


@pytest.fixture(scope="module")
def colour() -> tuple[nn.Module, InterpretableModel, DataLoader, torch.Tensor]:
    images, labels, masks = patch_data()
    model = ColourNet()
    imodel = build_imodel(model, images, torch.eye(C) * 1.5, selected=[0, 1, 2])
    return model, imodel, DataLoader(TensorDataset(images, labels), batch_size=8), masks


@pytest.fixture(scope="module")
def colour_report(colour) -> Report:
    model, imodel, loader, masks = colour
    return check(imodel, loader, reference=model, masks=masks, max_pixel_images=12, **FAST)


def test_a_faithful_model_beats_random_orders_everywhere(colour_report: Report) -> None:
    fid = colour_report.fidelity
    assert fid["accuracy"] == 1.0 and fid["agreement"] == 1.0 and fid["reference_accuracy"] == 1.0
    concept = colour_report.concept_deletion
    assert concept["deletion_auc"] < concept["deletion_auc_random"]
    assert concept["insertion_auc"] > concept["insertion_auc_random"]
    assert concept["logit_drop_assigned"] > concept["logit_drop_random"]
    pixel = colour_report.pixel
    assert set(pixel["class"]) == {"random", "gradcam", "ig"}
    assert set(pixel["feature"]) == {"random", "gradcam", "neuron_ig"}
    for level in ("class", "feature"):
        for method, entry in pixel[level].items():
            if method == "random":
                continue
            assert entry["deletion_auc_gain"] > 0.1, (level, method)
            assert entry["insertion_auc_gain"] > 0.1, (level, method)
            assert entry["infidelity"] >= 0 and entry["sensitivity"] >= 0
            assert len(entry["curves"]["deletion"]) == FAST["curve_steps"] + 1


def test_attributions_land_on_the_object(colour_report: Report) -> None:
    localisation = colour_report.metrics["localisation"]
    area = localisation["object_area"]
    assert area == pytest.approx(PATCH * PATCH / SIZE**2)
    for key in (
        "object_class_gradcam",
        "object_class_ig",
        "object_feature_gradcam",
        "object_feature_neuron_ig",
    ):
        assert localisation[key] > 0.9, key


def test_report_metrics_of_the_one_feature_per_class_model(colour_report: Report) -> None:
    metrics = colour_report.metrics
    assert metrics["features_used"] == C and metrics["features_per_class"] == 1.0
    assert metrics["dependence"] == pytest.approx(1.0)  # one feature decides each class
    assert metrics["diversity@5"] is not None and metrics["diversity_images"] == 0
    assert metrics["contrastiveness"] > 0.5
    assert metrics["class_independence"] < 0.2  # each detector fires on its own class only
    assert set(metrics["conciseness"]) == {"1.5", "2", "2.5", "3", "4", "5"}
    meta = colour_report.meta
    assert meta["n_images"] == 24 and meta["n_pixel_images"] == 12
    assert {"forward", "concept_deletion", "pixel.gradcam", "pixel.ig", "metrics"} <= set(
        meta["timings"]
    )


def test_check_is_deterministic_and_silent_without_progress(colour, capsys) -> None:
    model, imodel, loader, _ = colour
    runs = [
        check(imodel, loader, reference=model, max_pixel_images=4, **FAST).to_dict()
        for _ in range(2)
    ]
    for run in runs:
        run["meta"].pop("timings")
    assert runs[0] == runs[1]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_thresholds_and_raise_on_failure(colour) -> None:
    model, imodel, loader, _ = colour
    settings = {"max_pixel_images": 0, **FAST}
    ok = check(imodel, loader, reference=model, min_fidelity=0.99, min_accuracy=0.9, **settings)
    assert ok.passed and len(ok.thresholds) == 2
    with pytest.raises(CheckFailedError, match="max_dependence"):
        check(
            imodel, loader, reference=model, max_dependence=0.5, raise_on_failure=True, **settings
        )
    with pytest.raises(ConfigError, match="reference="):
        check(imodel, loader, min_fidelity=0.9, **settings)
    with pytest.raises(ConfigError, match="lime"):
        check(imodel, loader, pixel_methods=("gradcam", "lime"), **settings)
    with pytest.raises(ConfigError, match="InterpretableModel"):
        check(model, loader, **settings)


class HFStyle(nn.Module):
    """The colour model returning a transformers ModelOutput, as HF classifiers do."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> transformers.modeling_outputs.ImageClassifierOutput:
        return transformers.modeling_outputs.ImageClassifierOutput(logits=self.inner(x))


def test_a_model_output_reference_and_backbone_are_unwrapped(colour) -> None:
    model, imodel, loader, _ = colour
    same = check(imodel, loader, reference=model, max_pixel_images=0, **FAST)
    wrapped = check(imodel, loader, reference=HFStyle(model), max_pixel_images=0, **FAST)
    assert wrapped.fidelity == same.fidelity
    images = next(iter(loader))[0]
    hf_imodel = build_imodel(HFStyle(ColourNet()), images, torch.eye(C) * 1.5, [0, 1, 2])
    report = check(hf_imodel, loader, reference=hf_imodel.backbone, max_pixel_images=4, **FAST)
    assert report.fidelity["agreement"] == 1.0
    assert report.pixel["class"]["gradcam"]["deletion_auc_gain"] > 0


class TokenNet(nn.Module):
    """Toys whose maps come in each layout: NHWC, ViT-like tokens with a prefix, head input."""

    def __init__(self, layout: str, dim: int = 6) -> None:
        super().__init__()
        self.layout = layout
        self.embed = nn.Conv2d(3, dim, 1)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, C)
        self.head = nn.Conv2d(dim, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.embed(x)
        if self.layout == "head_input":  # SqueezeNet-style: a 1x1 conv head, pooled after
            return self.head(grid).mean(dim=(2, 3))
        if self.layout == "nhwc":
            return self.fc(self.norm(grid.permute(0, 2, 3, 1)).mean(dim=(1, 2)))
        tokens = grid.flatten(2).transpose(1, 2)
        tokens = self.norm(torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1))
        return self.fc(tokens[:, 1:].mean(dim=1))


@pytest.mark.parametrize("layout", ["nhwc", "tokens", "head_input"])
def test_gradcam_works_on_every_maps_layout(layout: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    model = TokenNet(layout)
    weight = torch.tensor([[1.0, -2.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0, 0], [0, 0, 0, 0, 1.0, 1.0]])
    imodel = build_imodel(model, images, weight)
    assert imodel.spec.maps_layout == layout
    targets = torch.tensor([0, 1, 2, 0])
    cam = gradcam(imodel, images, targets)
    # For a mean-pooled linear head, Grad-CAM is Σ_j W_cj / (σ_j · HW) · A_j exactly.
    capture = FeatureCapture(model, imodel.spec, with_maps=True)
    with torch.no_grad(), capture.attached():
        model(images)
    maps = capture.maps  # (N, D, 8, 8)
    alpha = weight[targets] / imodel.bottleneck.std / 64
    expected = torch.einsum("nd,ndhw->nhw", alpha, maps)
    torch.testing.assert_close(cam, expected, rtol=1e-4, atol=1e-6)


def test_concept_localisation_on_the_synthetic_world() -> None:
    dataset = SyntheticConceptDataset(32, n_classes=10, image_size=32, split="test", seed=0)
    loader = DataLoader(dataset, batch_size=16)
    model = ColourNet()
    images = torch.stack([dataset[i][0] for i in range(8)])
    weight = torch.ones(10, 2)
    imodel = build_imodel(model, images, weight, selected=[0, 3])
    imodel.concepts[0] = [{"concept": "red", "score": 1.0}]
    report = check(imodel, loader, masks=dataset.masks, max_pixel_images=32, **FAST)
    localisation = report.metrics["localisation"]
    assert localisation["concept_pairs"] >= 3  # images with a red object
    assert localisation["concept_gradcam"] > 0.8
    assert localisation["concept_area"] < 0.3
    assert report.visuals["cards"][0]["name"] == "red"


def test_convert_then_check_on_a_learned_model() -> None:
    generator = torch.Generator().manual_seed(3)
    labels = torch.arange(64) % 4
    images = torch.rand(64, 3, 12, 12, generator=generator) * 0.5
    for c in range(3):
        images[labels == c, c] += 0.5
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()
    loader = DataLoader(TensorDataset(images, labels), batch_size=32)
    imodel = retrofit.convert(
        model, loader, method="sparse", n_features=6, per_class=2, finetune="none", progress=False
    )
    report = check(imodel, loader, reference=model, max_pixel_images=6, top_images=3, **FAST)
    assert report.meta["n_features"] == 6 and report.meta["maps_module"] is not None
    assert report.concept_deletion["deletion_auc_gain"] > 0
    assert len(report.visuals["cards"]) == 6
    assert all(len(card["images"]) == 3 for card in report.visuals["cards"])
    assert len(report.visuals["explanations"]) == 6
