"""Model spec strings: parsing, building through the adapters, deriving them from a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from retrofit.errors import ConfigError, ModelError
from retrofit.io.specs import (
    ModelSpec,
    build_model,
    describe_model,
    parse_spec,
    preprocessing_of,
)


@pytest.mark.parametrize(
    ("text", "family", "name", "weights", "revision", "factory"),
    [
        ("torchvision:resnet18", "torchvision", "resnet18", None, None, None),
        (
            "torchvision:resnet50:IMAGENET1K_V2",
            "torchvision",
            "resnet50",
            "IMAGENET1K_V2",
            None,
            None,
        ),
        (
            "timm:vit_tiny_patch16_224.augreg_in21k",
            "timm",
            "vit_tiny_patch16_224.augreg_in21k",
            None,
            None,
            None,
        ),
        (
            "timm:hf-hub:timm/resnet18.a1_in1k",
            "timm",
            "hf-hub:timm/resnet18.a1_in1k",
            None,
            None,
            None,
        ),
        ("hf:microsoft/resnet-50", "transformers", "microsoft/resnet-50", None, None, None),
        (
            "hf:google/vit-base-patch16-224@main",
            "transformers",
            "google/vit-base-patch16-224",
            None,
            "main",
            None,
        ),
        (
            "open_clip:ViT-B-32:laion2b_s34b_b79k",
            "open_clip",
            "ViT-B-32",
            "laion2b_s34b_b79k",
            None,
            None,
        ),
        ("open_clip:RN50", "open_clip", "RN50", None, None, None),
        ("python:models/net.py:build", "generic", "models/net.py", None, None, "build"),
    ],
)
def test_parse_every_form_and_print_it_back(text, family, name, weights, revision, factory):
    spec = parse_spec(text)
    assert (spec.family, spec.name, spec.weights, spec.revision, spec.factory) == (
        family,
        name,
        weights,
        revision,
        factory,
    )
    assert str(spec) == text
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_a_local_hf_folder_is_a_spec(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    for text in (f"hf:{tmp_path}", str(tmp_path)):
        spec = parse_spec(text)
        assert (spec.family, spec.name, spec.revision) == ("transformers", str(tmp_path), None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "non-empty"),
        ("resnet18", "must start with one of"),
        ("keras:resnet", "must start with one of"),
        ("torchvision:", "nothing after"),
        ("torchvision:resnet18:A:B", "torchvision:NAME"),
        ("python:net.py", "python:path/file.py:factory"),
        ("python:net.txt:build", "python:path/file.py:factory"),
    ],
)
def test_bad_specs_say_what_forms_exist(text, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(text)


def test_build_torchvision_and_timm_architectures_without_downloads() -> None:
    spec = ModelSpec("torchvision", "resnet18", weights="IMAGENET1K_V1", kwargs={"num_classes": 4})
    model = build_model(spec, pretrained=False)
    assert model.fc.out_features == 4
    vit = build_model(
        ModelSpec("timm", "vit_tiny_patch16_224", kwargs={"num_classes": 2, "img_size": [32, 32]}),
        pretrained=False,
    )
    assert vit(torch.rand(1, 3, 32, 32)).shape == (1, 2)


def test_build_from_a_python_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("net.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Linear(3, 2)\n\n"
        "def not_a_model():\n    return 3\n"
    )
    assert isinstance(build_model("python:net.py:build"), nn.Linear)
    with pytest.raises(ModelError, match="has no function 'missing'"):
        build_model("python:net.py:missing")
    with pytest.raises(ModelError, match="returned int, not a torch nn.Module"):
        build_model("python:net.py:not_a_model")
    with pytest.raises(ModelError, match="does not exist"):
        build_model("python:other.py:build")


def test_loader_failures_name_the_spec() -> None:
    with pytest.raises(ModelError, match="torchvision:no_such_net"):
        build_model("torchvision:no_such_net", pretrained=False)
    with pytest.raises(ModelError, match="does not exist"):
        build_model("hf:/nonexistent/folder/of/a/model")


def test_describe_derives_hf_and_timm_specs(tmp_path) -> None:
    import timm
    import transformers

    hf = transformers.ResNetForImageClassification(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=3)
    )
    assert describe_model(hf) is None, "built from a config: nothing names it"
    hf.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path)
    spec = describe_model(loaded)
    assert (spec.family, spec.name) == ("transformers", str(tmp_path.resolve()))
    assert spec.arch_config["model_type"] == "resnet" and len(spec.arch_config["id2label"]) == 3
    rebuilt = build_model(spec, pretrained=False)
    assert type(rebuilt) is type(loaded)
    assert str(describe_model(loaded, "hf:org/name")) == "hf:org/name", "an explicit spec wins"

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5)
    spec = describe_model(vit)
    assert spec.family == "timm" and spec.name.startswith("vit_tiny_patch16_224.")
    assert spec.kwargs == {"num_classes": 5, "img_size": [32, 32]}
    assert preprocessing_of(vit, spec)["input_size"] == [3, 32, 32]


def test_describe_uses_the_given_spec_where_nothing_can_be_derived() -> None:
    import torchvision

    model = torchvision.models.resnet18(num_classes=7)
    assert describe_model(model) is None
    spec = describe_model(model, "torchvision:resnet18:IMAGENET1K_V1")
    assert spec.kwargs == {"num_classes": 7}
    pre = preprocessing_of(model, spec)
    assert pre["crop_size"] == [224] and pre["mean"] == [0.485, 0.456, 0.406]
    assert describe_model(nn.Linear(2, 2)) is None
    assert preprocessing_of(nn.Linear(2, 2), None) is None
