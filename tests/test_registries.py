"""The extension points are open: a head, a concept encoder, a model family and a check metric
are each one new file (written here to tmp_path and imported), used end to end through the
public API, then unregistered. Also the config object: convert(config=...), save/load, and
every RetrofitConfig field round-tripping."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import textwrap
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.adapters import unregister_adapter
from retrofit.check import CheckConfig, unregister_metric
from retrofit.cli import build_parser
from retrofit.concepts import (
    ConceptsNotRestoredWarning,
    ConceptsSummary,
    load_tiny_clip,
    unregister_encoder,
)
from retrofit.config import CONFIG_NAME, RetrofitConfig
from retrofit.errors import ConfigError
from retrofit.methods.base import unregister_head
from tests.tiny import SmallCNN, colour_coded_images

FAST = {"finetune": "none", "progress": False, "n_features": 4, "per_class": 2}
CHECK_FAST = {"pixel_methods": (), "mas_pairs": 0, "top_images": 2, "progress": False}


@pytest.fixture(scope="module")
def loader() -> DataLoader:
    images, labels = colour_coded_images(48, 16, 3)
    return DataLoader(TensorDataset(images, labels), batch_size=16)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Import one new file, as a user's plugin module would be (gone from sys.modules after)."""

    def load(name: str, source: str) -> ModuleType:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load


# ------------------------------------------------------------------------------ head methods

HEAD = """
    import torch
    from retrofit.methods.base import HeadResult, register_head

    CALLS = []

    @register_head("centroid")
    def fit_centroid(features, labels, config, maps=None, logits=None):
        '''Nearest class centroid on the first n_features standardised features.'''
        CALLS.append(tuple(features.shape))
        x = features[:, : config.n_features].float()
        mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-6)
        z = (x - mean) / std
        n_classes = int(labels.max()) + 1
        weight = torch.stack([z[labels == c].mean(dim=0) for c in range(n_classes)])
        return HeadResult(
            selected=torch.arange(config.n_features, device=x.device),
            weight=weight,
            bias=torch.zeros(n_classes, device=x.device),
            mean=mean,
            std=std,
        )
"""


def test_a_registered_head_is_a_method_for_the_config_convert_and_the_cli(plugin, loader) -> None:
    convert_args = ["convert", "--model", "demo", "--train", "synthetic", "--out", "x"]
    with pytest.raises(ConfigError, match="centroid"):
        RetrofitConfig(method="centroid")
    module = plugin("centroid_head", HEAD)
    try:
        assert build_parser().parse_args([*convert_args, "--method", "centroid"]).method == (
            "centroid"
        )
        torch.manual_seed(0)
        imodel = retrofit.convert(SmallCNN(), loader, method="centroid", **FAST)
        assert imodel.config.method == "centroid"
        assert module.CALLS == [(48, 8)]  # the plugin fitted the head on the 8 cached features
        assert imodel.bottleneck.selected.tolist() == [0, 1, 2, 3]
        assert imodel(torch.rand(2, 3, 16, 16)).shape == (2, 3)
    finally:
        unregister_head("centroid")
    with pytest.raises(ConfigError, match="centroid"):
        RetrofitConfig(method="centroid")
    with pytest.raises(SystemExit):
        build_parser().parse_args([*convert_args, "--method", "centroid"])


# ------------------------------------------------------------------------------ concept encoders

ENCODER = """
    from retrofit.concepts import load_tiny_clip, register_encoder

    SPECS = []

    @register_encoder("local_clip")
    def local_clip(rest, device):
        '''A CLIP kept on this machine; here the bundled tiny one, whatever the version.'''
        SPECS.append(rest)
        return load_tiny_clip(device)
"""


def test_a_registered_encoder_prefix_names_features_and_an_unknown_one_is_refused(
    plugin, tmp_path, loader
) -> None:
    with pytest.raises(ConfigError, match="Unknown encoder spec 'xyz:clip'.*register_encoder"):
        RetrofitConfig(concepts="xyz:clip")
    with pytest.raises(ConfigError, match="local_clip"):
        RetrofitConfig(concepts={"encoder": "local_clip:v1"})
    module = plugin("local_clip_encoder", ENCODER)
    try:
        assert RetrofitConfig(concepts="local_clip:v1").concepts == "local_clip:v1"
        concepts = {
            "encoder": "local_clip:v1",
            "vocabulary": ["red", "green", "blue", "grey"],
            "top_k": 2,
        }
        imodel = retrofit.convert(
            SmallCNN(), loader, concepts=concepts, concept_features=False, **FAST
        )
        assert module.SPECS == ["v1"]
        names = {entry["concept"] for feature in imodel.concepts for entry in feature}
        assert names and names <= {"red", "green", "blue", "grey"}
        assert imodel.stats["concepts"]["naming"]["encoder"] == "open_clip:tiny"
        folder = imodel.save_pretrained(tmp_path / "export")
    finally:
        unregister_encoder("local_clip")
    with pytest.raises(ConfigError, match="Unknown encoder spec"):
        RetrofitConfig(concepts="local_clip:v1")
    # without the plugin the export still loads; its concept settings are kept as a summary
    with pytest.warns(ConceptsNotRestoredWarning, match="has not registered"):
        loaded = retrofit.load(folder, model=imodel.backbone)
    assert loaded.config.concepts.settings == concepts
    assert loaded.concepts == imodel.concepts
    stored = loaded.config.to_dict()  # written back unchanged: the plugin's session reads it
    plugin("local_clip_encoder", ENCODER)
    try:
        assert RetrofitConfig.from_dict(stored).concepts == concepts
    finally:
        unregister_encoder("local_clip")


# ------------------------------------------------------------------------------ model families

FAMILY = """
    import torch
    from torch import nn
    from torchvision import transforms

    from retrofit.adapters import ModelAdapter, register_adapter
    from retrofit.errors import ConfigError
    from retrofit.io.files import whole
    from retrofit.io.specs import ModelSpec


    class StripeNet(nn.Module):
        def __init__(self, width: int, n_classes: int = 3) -> None:
            super().__init__()
            self.width = width
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
            self.classify = nn.Linear(width, n_classes)

        def forward(self, x):
            return self.classify(self.stem(x).mean(dim=(2, 3)))


    def parse(rest, text):
        if not rest.isdigit():
            raise ConfigError(f"Expected stripe:WIDTH, got {text!r}.")
        return ModelSpec("stripe", rest)


    def describe(model, spec):
        spec.kwargs["n_classes"] = model.classify.out_features


    STRIPE = register_adapter(
        ModelAdapter(
            name="stripe",
            matches=lambda model: isinstance(model, StripeNet),
            preferred_heads=lambda model: ["classify"],
            priority=50,
            build_kwargs={"n_classes": whole(1, 1000)},
            prefix="stripe",
            spec_forms="stripe:WIDTH",
            parse_spec=parse,
            build=lambda spec, pretrained, trust: StripeNet(int(spec.name), **spec.kwargs),
            derive_spec=lambda model: ModelSpec("stripe", str(model.width)),
            describe=describe,
            data_transform=lambda model, spec: transforms.Compose(
                [transforms.Resize((16, 16)), transforms.ToTensor()]
            ),
        )
    )
"""


def test_a_registered_family_parses_builds_describes_exports_and_reloads(
    plugin, tmp_path, loader
) -> None:
    from retrofit.io.data_specs import model_transform
    from retrofit.io.specs import build_model, describe_model, parse_spec

    with pytest.raises(ConfigError, match="Cannot parse model spec 'stripe:8'"):
        parse_spec("stripe:8")
    module = plugin("stripe_family", FAMILY)
    try:
        spec = parse_spec("stripe:8")
        assert (spec.family, spec.name, str(spec)) == ("stripe", "8", "stripe:8")
        with pytest.raises(ConfigError, match="Expected stripe:WIDTH"):
            parse_spec("stripe:wide")
        torch.manual_seed(0)
        model = build_model("stripe:8")
        assert isinstance(model, module.StripeNet) and model.width == 8
        described = describe_model(model)
        assert described.to_dict()["spec"] == "stripe:8"
        assert described.kwargs == {"n_classes": 3}
        assert model_transform(model, described, None) is not None
        imodel = retrofit.convert(model, loader, **FAST)
        assert imodel.stats["family"] == "stripe"
        assert imodel.spec.heads == ("classify",)  # the family's preferred head
        folder = imodel.save_pretrained(tmp_path / "export", include_backbone=True)
        stored = json.loads((folder / "retrofit_config.json").read_text())
        assert stored["base_model"]["build"]["spec"] == "stripe:8"
        loaded = retrofit.load(folder)  # the backbone is rebuilt by the family's build
        assert isinstance(loaded.backbone, module.StripeNet)
        x = torch.rand(4, 3, 16, 16)
        torch.testing.assert_close(loaded(x), imodel(x))
    finally:
        unregister_adapter("stripe")
    with pytest.raises(ConfigError, match="Cannot parse model spec"):
        parse_spec("stripe:8")


# ------------------------------------------------------------------------------ check metrics

METRIC = """
    from retrofit.check import register_metric

    @register_metric(
        "margin",
        title="Logit margin",
        thresholds={"min_margin": ("mean", ">=")},
        meanings={"mean": "top-1 minus top-2 logit, averaged over the images"},
    )
    def margin(inputs):
        top2 = inputs.logits.topk(2, dim=1).values
        gap = top2[:, 0] - top2[:, 1]
        return {"mean": float(gap.mean()), "min": float(gap.min())}
"""


def test_a_registered_metric_is_measured_thresholded_and_reported(plugin, tmp_path, loader) -> None:
    torch.manual_seed(0)
    imodel = retrofit.convert(SmallCNN(), loader, **FAST)
    with pytest.raises(ConfigError, match="Unknown thresholds"):
        CheckConfig(thresholds={"min_margin": 0.0})
    plugin("margin_metric", METRIC)
    try:
        config = CheckConfig(thresholds={"min_margin": 0.0}, **CHECK_FAST)
        report = retrofit.check(imodel, loader, config=config)
        with torch.no_grad():
            top2 = imodel(torch.cat([x for x, _ in loader])).topk(2, dim=1).values
        assert report["margin"]["mean"] == pytest.approx(float((top2[:, 0] - top2[:, 1]).mean()))
        assert report.passed and report.thresholds[0].metric == "margin.mean"
        failing = retrofit.check(imodel, loader, config=config, thresholds={"min_margin": 1e6})
        assert not failing.passed and failing.failures[0].name == "min_margin"
        page = report.to_html(tmp_path / "report.html").read_text()
        assert 'id="metric-margin"' in page and "Logit margin" in page
        assert 'href="#metric-margin"' in page and "averaged over the images" in page
        assert "margin" in json.loads(report.to_json(tmp_path / "report.json").read_text())
        skipped = retrofit.check(imodel, loader, config=CheckConfig(metrics=[], **CHECK_FAST))
        assert "margin" not in skipped.results
    finally:
        unregister_metric("margin")
    assert "margin" not in retrofit.check(imodel, loader, **CHECK_FAST).results


def test_check_options_are_a_config_object_that_keywords_override(loader) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    imodel = retrofit.convert(model, loader, **FAST)
    strict = CheckConfig(min_accuracy=1.01, **CHECK_FAST)
    assert not retrofit.check(imodel, loader, config=strict).passed
    assert retrofit.check(imodel, loader, config=strict, min_accuracy=0.0).passed
    with pytest.raises(ConfigError, match="unknown options \\['min_fidelty'\\]"):
        retrofit.check(imodel, loader, config=strict, min_fidelty=0.9)
    with pytest.raises(ConfigError, match="max_pixel_images"):
        CheckConfig(max_pixel_images=-1)
    with pytest.raises(ConfigError, match="CheckConfig"):
        retrofit.check(imodel, loader, config={"min_accuracy": 0.5})


# ------------------------------------------------------------------------------ config object

# a value other than the default for every field; a new field fails the test until it has one
SAMPLES = {
    "method": "sparse",
    "n_features": 7,
    "per_class": 3,
    "feature_layer": "body.0",
    "base_model": "torchvision:resnet18",
    "maps": True,
    "finetune": "none",
    "solver": "highs",
    "time_limit": 12.5,
    "mip_gap": 0.05,
    "threads": 2,
    "balanced": True,
    "rounds": 2,
    "linear_mix": False,
    "distill": 0.5,
    "epochs": 3,
    "backbone_epochs": 2,
    "backbone_lr": 1e-3,
    "lr": 0.05,
    "batch_size": 16,
    "seed": 7,
    "cache_dir": "/tmp/retrofit-cache",
    "device": "cpu",
    "progress": False,
    "solver_log": True,
    "class_names": ["cat", "dog", "cow"],
    "concepts": {"encoder": "tiny", "vocabulary": ["red", "striped"], "top_k": 2},
    "concept_features": "mix",
    "qpm": {"candidates": 40, "formulation": "assignment"},
    "head": {"concept_prior": 0.25},
    "dense": {"l2": 0.001},
    "bottleneck": {"diversity_beta": 0.5, "class_diversity": 0.1},
    "flint": {"attributes": 8},
    "features": "flint",
    "flint_layers": ["features.2", "features.5"],
    "reweight": "consistency",
    "reweight_rounds": 3,
    "reweight_images": 64,
    "reweight_copies": 3,
    "reweight_clip": 4.0,
    "reweight_temperature": 0.5,
    "reweight_consistency": {"steps": 4},
    "cache_dtype": "float16",
    "distributed": False,
}


def test_every_config_field_round_trips_through_dict_and_folder(tmp_path) -> None:
    fields = {f.name: f for f in dataclasses.fields(RetrofitConfig)}
    assert set(SAMPLES) == set(fields), "give the new RetrofitConfig field a sample value"
    config = RetrofitConfig(**SAMPLES)
    default = RetrofitConfig()
    path = config.save_pretrained(tmp_path / "settings")
    assert path.name == CONFIG_NAME
    assert json.loads(path.read_text())["concepts"] == SAMPLES["concepts"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # plain data round-trips without a warning
        again = RetrofitConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        loaded = RetrofitConfig.from_pretrained(tmp_path / "settings")
    for name in fields:
        assert getattr(config, name) != getattr(default, name), name
        assert getattr(again, name) == getattr(config, name), name
        assert getattr(loaded, name) == getattr(config, name), name
    assert again == config and loaded == config
    with pytest.raises(ConfigError, match="convert_config.json"):
        RetrofitConfig.from_pretrained(tmp_path / "elsewhere")


def test_concepts_json_cannot_hold_are_a_marked_summary_not_dropped(tmp_path, loader) -> None:
    labels = torch.zeros(48, 2, dtype=torch.bool)
    for concepts, reason in (
        ((labels, ["red", "round"]), "a concept-label tensor"),
        ({"encoder": load_tiny_clip(), "vocabulary": "curated"}, "an encoder object"),
    ):
        stored = RetrofitConfig(concepts=concepts).to_dict()["concepts"]
        assert stored["summary_only"].startswith(reason)
        with pytest.warns(ConceptsNotRestoredWarning, match=reason):
            config = RetrofitConfig.from_dict(json.loads(json.dumps({"concepts": stored})))
        assert isinstance(config.concepts, ConceptsSummary)
        assert config.to_dict()["concepts"] == stored  # the summary survives another save
        with pytest.raises(ConfigError, match="concepts=..."):
            retrofit.convert(SmallCNN(), loader, config=config)
    assert stored["settings"]["vocabulary"] == "curated"
    assert stored["settings"]["encoder"] == "open_clip:tiny"


def test_convert_takes_a_config_object_and_keywords_override_it(tmp_path, loader) -> None:
    base = RetrofitConfig(method="dense", n_features=4, per_class=2, seed=3, progress=False)
    torch.manual_seed(0)
    model = SmallCNN()
    imodel = retrofit.convert(model, loader, config=base, method="sparse", finetune="none")
    assert (imodel.config.method, imodel.config.finetune, imodel.config.seed) == (
        "sparse",
        "none",
        3,
    )
    assert base.method == "dense"  # the caller's config is not changed
    with pytest.raises(ConfigError, match="per_class=5 is larger than n_features=4"):
        retrofit.convert(model, loader, config=base, per_class=5)
    with pytest.raises(ConfigError, match="RetrofitConfig"):
        retrofit.convert(model, loader, config={"method": "dense"})
    with pytest.raises(ConfigError, match="mthod"):
        retrofit.convert(model, loader, config=base, mthod="qpm")
    folder = imodel.save_pretrained(tmp_path / "export")
    assert RetrofitConfig.from_pretrained(folder) == imodel.config  # an export folder too
