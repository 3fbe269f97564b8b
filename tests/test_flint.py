"""FLINT: its losses, the 'flint' head end to end, attributes feeding other heads, export, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.check import check
from retrofit.errors import ConfigError, InfeasibleSettingsError
from retrofit.methods.flint.am_pi import AmPiSettings, am_pi, total_variation
from retrofit.methods.flint.attributes import FlintSettings, parse_flint
from retrofit.methods.flint.losses import conciseness_diversity, entropy, output_fidelity
from tests.test_report_browser import CHROMIUM, _chromium, _console
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


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A SmallCNN trained briefly on the colour-coded images, so its decisions mean something."""
    torch.manual_seed(0)
    net = SmallCNN()
    images, labels = colour_coded_images(96, 16, C, bright=3)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):
        loss = F.cross_entropy(net(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.zero_grad(set_to_none=True)
    return net.eval()


def _loader(data) -> DataLoader:
    return DataLoader(TensorDataset(*data), batch_size=32)


FAST = {"n_features": 6, "epochs": 40, "progress": False, "flint": {"hidden": 32, "lr": 1e-2}}


@pytest.fixture(scope="module")
def flint_model(model, data) -> retrofit.InterpretableModel:
    return retrofit.convert(model, _loader(data), method="flint", **FAST)


# ------------------------------------------------------------------------------ the losses


def test_entropy_is_zero_for_one_hot_and_log_j_for_uniform() -> None:
    j = 7
    assert entropy(F.one_hot(torch.tensor([3]), j).float()).item() == 0.0
    assert entropy(torch.full((1, j), 1 / j)).item() == pytest.approx(math.log(j), rel=1e-6)
    p = torch.softmax(torch.randn(5, j), dim=1)
    assert (entropy(p) > 0).all() and (entropy(p) < math.log(j)).all()


def test_output_fidelity_is_cross_entropy_for_one_hot_targets() -> None:
    student = torch.randn(6, 5)
    target = torch.tensor([0, 4, 2, 2, 1, 3])
    one_hot_teacher = 1e4 * F.one_hot(target, 5).float()  # softmax is exactly one-hot
    assert output_fidelity(student, one_hot_teacher).item() == pytest.approx(
        F.cross_entropy(student, target).item(), rel=1e-6
    )
    # a soft teacher is a different target: the loss is larger than for its own argmax
    soft = torch.randn(6, 5)
    assert output_fidelity(soft, soft).item() < output_fidelity(student, soft).item() + 1e-6 + (
        output_fidelity(soft, soft).item()
    )


def test_conciseness_diversity_prefers_few_attributes_per_image_and_all_over_the_batch() -> None:
    j = 6
    # each image one strong attribute, different ones across the batch: concise and diverse
    concise = 5.0 * torch.eye(j)
    # every image spreads over all attributes
    spread = torch.full((j, j), 5.0 / j)
    # every image uses the same single attribute: concise but not diverse
    collapsed = 5.0 * F.one_hot(torch.zeros(j, dtype=torch.long), j).float()
    value = {
        name: conciseness_diversity(phi, l1=0.0)[0].item()
        for name, phi in (("concise", concise), ("spread", spread), ("collapsed", collapsed))
    }
    assert value["concise"] < value["spread"] and value["concise"] < value["collapsed"]
    assert conciseness_diversity(concise, l1=0.5)[1].item() == pytest.approx(0.5 * 5.0)


# ------------------------------------------------------------------------- the flint head


def test_flint_converts_reproduces_the_model_and_reloads_exactly(
    flint_model, model, data, tmp_path
) -> None:
    imodel = flint_model
    images, _ = data
    with torch.no_grad():
        phi = imodel.concept_activations(images)
        logits = imodel(images)
        original = model(images)
    assert phi.shape == (len(images), 6) and (phi >= 0).all(), "attributes are non-negative"
    assert imodel.stats["train"]["agreement"] >= 0.9
    assert (logits.argmax(1) == original.argmax(1)).float().mean() >= 0.9
    assert imodel.feature_name(0) == "attribute_0"
    assert imodel.stats["head"]["history"]["n_attributes"] == 6
    # local relevance: the strongest contribution has r = 1; relevant() keeps r > 1/tau
    explanation = imodel.explain(images[:1])[0]
    r = [f.relevance for f in explanation.features]
    assert max(r) == pytest.approx(1.0) and all(-1 <= v <= 1 for v in r)
    assert {f.feature for f in explanation.relevant(2)} == {
        f.feature for f in explanation.features if f.relevance > 0.5
    }
    assert "relevance" in explanation.to_dict()["features"][0]
    # global relevance: flint lists only the relevant attributes (tau = 2), most relevant first
    table = imodel.global_explanation()
    assert imodel.class_relevance.shape == (C, 6)
    for c, entries in enumerate(table.values()):
        values = [e["relevance"] for e in entries]
        assert values == sorted(values, reverse=True) and all(v > 0.5 for v in values)
        assert len(entries) == int((imodel.class_relevance[c] > 0.5).sum())
    everything = imodel.global_explanation(tau=100)
    assert sum(map(len, everything.values())) >= sum(map(len, table.values()))
    folder = imodel.save_pretrained(tmp_path / "export")
    loaded = retrofit.load(folder, model=model)
    with torch.no_grad():
        assert torch.equal(loaded(images), logits)
    assert loaded.bottleneck.attributes is not None and loaded.feature_name(0) == "attribute_0"
    assert torch.equal(loaded.class_relevance, imodel.class_relevance)
    assert loaded.global_explanation() == table


def test_flint_is_seeded_and_its_settings_change_the_result(flint_model, model, data) -> None:
    a, b = flint_model, retrofit.convert(model, _loader(data), method="flint", **FAST)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    other = retrofit.convert(model, _loader(data), method="flint", **{**FAST, "seed": 1})
    assert not torch.equal(other.head.weight, a.head.weight)


@pytest.mark.parametrize("method", ["qpm", "qsenn"])
def test_flint_attributes_feed_other_heads(method, model, data, tmp_path) -> None:
    imodel = retrofit.convert(
        model,
        _loader(data),
        method=method,
        features="flint",
        per_class=2,
        time_limit=10,
        rounds=2,
        **{**FAST, "n_features": 4, "flint": {"attributes": 6, "hidden": 32, "lr": 1e-2}},
    )
    assert imodel.bottleneck.attributes.n_attributes == 6
    assert imodel.n_features == 4 and int(imodel.bottleneck.selected.max()) < 6
    assert not any(p.requires_grad for p in imodel.bottleneck.attributes.parameters())
    entries = [e for v in imodel.global_explanation().values() for e in v]
    assert len(entries) == int((imodel.head.weight != 0).sum()), "tau only when asked"
    assert all("relevance" in e for e in entries)
    imodel.class_relevance = None
    with pytest.raises(ConfigError, match="measure_relevance"):
        imodel.global_explanation(tau=2)
    images, _ = data
    with torch.no_grad():
        logits = imodel(images)
    assert (logits.argmax(1) == model(images).argmax(1)).float().mean() >= 0.8
    loaded = retrofit.load(imodel.save_pretrained(tmp_path / method), model=model)
    with torch.no_grad():
        assert torch.equal(loaded(images), logits)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("flint", "message"),
    [
        ({"attributes": 0}, "attributes must be an integer >= 1"),
        ({"entropy": -0.1}, "must be a finite number >= 0"),
        ({"l1": float("nan")}, "must be a finite number >= 0"),
        ({"output_fidelity": 0}, "output_fidelity must be > 0"),
        ({"warmup": 2}, "warmup"),
        ({"atributes": 5}, "Unknown flint settings"),
    ],
)
def test_bad_flint_settings_fail_on_construction(flint, message) -> None:
    with pytest.raises(ConfigError, match=message):
        retrofit.RetrofitConfig(method="flint", flint=flint)


def test_too_many_attributes_fail_before_training(model, data) -> None:
    with pytest.raises(InfeasibleSettingsError, match="at most 24"):
        retrofit.convert(
            model,
            _loader(data),
            method="flint",
            **{**FAST, "flint": {"attributes": 25, "hidden": 32, "lr": 1e-2}},
        )
    with pytest.raises(InfeasibleSettingsError, match="larger than the 6 FLINT attributes"):
        retrofit.convert(
            model,
            _loader(data),
            method="qpm",
            features="flint",
            **{**FAST, "n_features": 8, "flint": {"attributes": 6}},
        )
    with pytest.raises(ConfigError, match="epochs=0 would leave them random"):
        retrofit.convert(model, _loader(data), method="flint", **{**FAST, "epochs": 0})
    with pytest.raises(ConfigError, match="cannot re-mix FLINT attributes"):
        retrofit.RetrofitConfig(method="flint", concepts={"encoder": "tiny", "align": True})
    with pytest.raises(ConfigError, match="features='pixels' is not supported"):
        retrofit.RetrofitConfig(features="pixels")


def test_settings_parse_from_dicts() -> None:
    assert parse_flint(None) == FlintSettings()
    assert parse_flint({"attributes": 9}).attributes == 9


# ----------------------------------------------------------------------------- the report


def test_check_measures_flint_metrics_and_the_report_shows_mas(
    flint_model, model, data, tmp_path
) -> None:
    report = check(
        flint_model,
        _loader(data),
        reference=model,
        pixel_methods=(),
        max_pixel_images=0,
        top_images=1,
        max_explanations=0,
        mas_pairs=5,
        am_pi_pairs=1,
        progress=False,
    )
    fid = report.fidelity
    assert fid["fidelity@1"] == pytest.approx(fid["agreement"])
    assert fid["fidelity@1"] <= fid["fidelity@5"] == 1.0  # 4 classes: every top-5 has all
    metrics = report.metrics
    assert list(metrics["conciseness"]) == ["1.5", "2", "2.5", "3", "4", "5"]
    assert 0 <= metrics["dead_attributes"] <= 1
    assert 0 < metrics["attribute_entropy"] <= metrics["attribute_entropy_max"] == math.log(6)
    pairs = report.visuals["mas"]
    assert 0 < len(pairs) <= 5
    images, labels = data
    for pair in pairs:
        c = flint_model.class_names.index(pair["class"])
        assert pair["relevance"] > 0.5 and len(pair["images"]) == 3
        # the shown images are the class's images with the largest attribute, in order
        with torch.no_grad():
            phi = flint_model.concept_activations(images[labels == c])[:, pair["index"]]
        torch.testing.assert_close(
            torch.tensor(pair["activations"]), phi.sort(descending=True).values[:3]
        )
        assert any(torch.allclose(pair["images"][0], im.half().float()) for im in images)
    # AM+PI on the first pair only: it raised the attribute from the faded start
    assert all("am_pi" not in pair for pair in pairs[1:])
    values = pairs[0]["am_pi_values"]
    assert values["end"] > values["start"] and values["steps"] > 0
    assert pairs[0]["am_pi"].shape == images.shape[1:]
    assert float(pairs[0]["am_pi"].min()) >= 0 and float(pairs[0]["am_pi"].max()) <= 1
    left = [n for n, p in flint_model.named_parameters() if p.grad is not None]
    assert left == [], "AM+PI leaves no gradients on the model"
    path = report.to_html(tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert '<section id="mas">' in text and text.count("MAS of ") == len(pairs)
    assert text.count("last image: AM+PI") == 1
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); CI installs it")
    run = _chromium(tmp_path, path.as_uri(), "--dump-dom")
    assert _console(run.stderr) == []
    assert '<section id="mas">' in run.stdout


def test_am_pi_is_deterministic_and_bounded(flint_model, data) -> None:
    images, _ = data
    settings = AmPiSettings(rounds=2, steps=5)
    a = am_pi(flint_model.concept_activations, images[0], 0, settings)
    b = am_pi(flint_model.concept_activations, images[0], 0, settings)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[1]["steps"] == 10
    assert (
        am_pi(flint_model.concept_activations, images[0], 0, AmPiSettings(max_seconds=1e-9))[1][
            "steps"
        ]
        == 0
    )
    assert total_variation(torch.ones(1, 3, 4, 4)).item() == 0.0
    with pytest.raises(ConfigError, match="alpha"):
        AmPiSettings(alpha=0)


def test_flint_on_a_vision_transformer_and_a_torchvision_resnet(data, tmp_path) -> None:
    import torchvision
    import transformers

    from tests.tiny import TINY_VIT

    images, labels = data
    small = torch.nn.functional.interpolate(images[:48], size=32)
    loader = DataLoader(TensorDataset(small, labels[:48]), batch_size=24)
    vit = transformers.ViTForImageClassification(
        transformers.ViTConfig(**TINY_VIT, num_labels=C)
    ).eval()
    for backbone in (vit, torchvision.models.resnet18(num_classes=C).eval()):
        imodel = retrofit.convert(backbone, loader, method="flint", **{**FAST, "epochs": 3})
        with torch.no_grad():
            logits = imodel(small[:4])
        assert logits.shape == (4, C) and imodel.bottleneck.attributes.n_attributes == 6
        loaded = retrofit.load(
            imodel.save_pretrained(tmp_path / type(backbone).__name__), model=backbone
        )
        with torch.no_grad():
            assert torch.equal(loaded(small[:4]), logits)


# ------------------------------------------------------------------ defaults derived from the task


def test_default_dictionary_size_follows_the_class_count(model, data) -> None:
    """J defaults to n_features but at most ATTRIBUTES_PER_CLASS per class (a dictionary much
    larger than the decisions need loses attributes to the conciseness terms); an explicit
    flint.attributes wins, and features="flint" keeps n_features for the other head."""
    from retrofit.methods.flint.attributes import ATTRIBUTES_PER_CLASS, attribute_count

    cap = ATTRIBUTES_PER_CLASS * C
    many = cap + 4  # more features than C classes need; the SmallCNN has 24
    imodel = retrofit.convert(model, _loader(data), method="flint", **{**FAST, "n_features": many})
    j = imodel.bottleneck.attributes.n_attributes
    assert C <= j == cap < many
    few = retrofit.RetrofitConfig(method="flint", n_features=cap - 1)
    assert attribute_count(few, C) == cap - 1, "a smaller n_features is kept"
    fixed = retrofit.RetrofitConfig(method="flint", n_features=6, flint={"attributes": many})
    assert attribute_count(fixed, C) == many
    other = retrofit.RetrofitConfig(method="qpm", features="flint", n_features=many)
    assert attribute_count(other, C) == many


def test_head_is_refitted_on_the_final_attributes(flint_model) -> None:
    """After Φ is learned, h alone is refitted on Φ(x) for a share of the epochs; the reported
    training agreement is the final model's."""
    from retrofit.methods.flint.attributes import HEAD_REFIT_SHARE

    history = flint_model.stats["head"]["history"]
    assert history["head_refit_epochs"] == max(1, math.ceil(HEAD_REFIT_SHARE * history["epochs"]))
    assert flint_model.stats["head"]["train_agreement"] == history["final_agreement"]
    assert history["final_agreement"] >= 0.9
