"""save_pretrained / load: exact round trips for every model family, atomic saves, validation."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import retrofit
from retrofit.errors import (
    ExportCorruptedError,
    ExportNotFoundError,
    ExportSchemaError,
    ExportVersionError,
    FingerprintMismatchError,
)
from retrofit.extraction.fingerprint import model_fingerprint
from retrofit.model.interpretable import load
from tests.tiny import TINY_VIT, colour_coded_images

C = 3

FACTORY_SOURCE = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


def build():
    return Net()
"""


class SmallCNN(nn.Module):
    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(width, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return colour_coded_images(30, 32, C)


def _convert(model: nn.Module, data, **settings) -> retrofit.InterpretableModel:
    kwargs = {
        "method": "qsenn",
        "n_features": 6,
        "per_class": 2,
        "epochs": 2,
        "rounds": 1,
        "linear_mix": False,
    }
    return retrofit.convert(model.eval(), [data], progress=False, **{**kwargs, **settings})


def _assert_same_logits(a: nn.Module, b: nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        assert torch.equal(a(images), b(images))


@pytest.fixture(scope="module")
def cnn_export(data, tmp_path_factory) -> tuple[nn.Module, retrofit.InterpretableModel, Path]:
    torch.manual_seed(0)
    model = SmallCNN()
    imodel = _convert(model, data)
    imodel.concepts[0] = [{"concept": "red | things", "score": 0.75}]
    folder = imodel.save_pretrained(tmp_path_factory.mktemp("exports") / "cnn")
    return model, imodel, folder


@pytest.fixture
def export_copy(cnn_export, tmp_path) -> Path:
    return Path(shutil.copytree(cnn_export[2], tmp_path / "copy"))


def test_generic_round_trip_with_the_model_given(cnn_export, data) -> None:
    model, imodel, folder = cnn_export
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "model.safetensors",
        "retrofit_config.json",
    ]
    loaded = retrofit.InterpretableModel.from_pretrained(folder, model=model)
    _assert_same_logits(loaded, imodel, data[0])
    assert loaded.class_names == imodel.class_names
    assert loaded.concepts == imodel.concepts and loaded.feature_name(0) == "red | things"
    assert loaded.stats["train"] == imodel.stats["train"]
    assert loaded.config == imodel.config
    assert torch.equal(loaded.bottleneck.log_std, imodel.bottleneck.log_std)

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert handle.get_tensor("head.assignment").dtype == torch.int8
        assert set(handle.keys()) == {
            "bottleneck.selected",
            "bottleneck.mean",
            "bottleneck.log_std",
            "head.assignment",
            "head.scale",
            "head.bias",
        }
    config = json.loads((folder / "retrofit_config.json").read_text())
    assert config["schema_version"] == 2 and config["method"] == "qsenn"
    assert config["base_model"]["family"] == "generic" and config["base_model"]["build"] is None
    assert config["base_model"]["fingerprint"] == model_fingerprint(model)
    assert config["features"][0]["concepts"][0]["concept"] == "red | things"
    assert config["versions"]["torch"] and config["versions"]["safetensors"]
    assert config["metrics"]["train"]["accuracy"] == imodel.stats["train"]["accuracy"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: retrofit\n")
    assert "- interpretability\n- retrofit\n- qsenn\n---" in card
    assert "red \\| things" in card and "class_0" in card
    assert "each one channel of" in card and "where its mix started" not in card


def test_an_export_of_schema_version_1_still_loads(cnn_export, tmp_path) -> None:
    """Version 1 called the bottleneck "adapter" in the config and the tensor names."""
    model, imodel, folder = cnn_export
    old = tmp_path / "v1"
    shutil.copytree(folder, old)

    def rename(tensors: dict) -> None:
        for name in [n for n in tensors if n.startswith("bottleneck.")]:
            tensors["adapter." + name[len("bottleneck.") :]] = tensors.pop(name)

    _edit_tensors(old, rename)
    _edit_config(old, lambda c: c.update(schema_version=1, adapter=c.pop("bottleneck")))
    _assert_same_logits(retrofit.load(old, model=model), imodel, torch.rand(2, 3, 16, 16))


def test_export_files_keep_the_users_umask(data, tmp_path) -> None:
    """safetensors writes 0600; an export copied to a shared folder must stay readable."""
    model = SmallCNN()
    imodel = _convert(model, data)
    old = os.umask(0o022)
    try:
        folder = imodel.save_pretrained(tmp_path / "shared")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir() if p.is_file()}
    assert "model.safetensors" in modes
    assert set(modes.values()) == {0o644}, modes


def test_float_head_and_linear_mix_round_trip(data, tmp_path) -> None:
    model = SmallCNN()
    imodel = _convert(model, data, method="sparse", linear_mix=True, finetune="bottleneck")
    folder = imodel.save_pretrained(tmp_path / "sparse")
    card = (folder / "README.md").read_text()
    assert "learned linear mix of the channels" in card and "where its mix started" in card
    tensors = load_file(str(folder / "model.safetensors"))
    assert "head.weight" in tensors and "head.assignment" not in tensors
    assert tensors["bottleneck.mix"].shape == (imodel.n_features, 24)
    _assert_same_logits(load(folder, model=model), imodel, data[0])


def test_python_factory_spec_with_the_backbone_stands_alone(data, tmp_path, monkeypatch) -> None:
    from retrofit.io.specs import build_model

    monkeypatch.chdir(tmp_path)
    Path("net_factory.py").write_text(FACTORY_SOURCE)
    spec = "python:net_factory.py:build"
    imodel = _convert(build_model(spec), data)
    folder = imodel.save_pretrained("out", include_backbone=True, base_model=spec)
    assert (folder / "backbone.safetensors").is_file()
    mask = os.umask(0)
    os.umask(mask)
    assert (folder / "backbone.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(retrofit.UntrustedCodeError, match="trust_remote_code=True"):
        load(folder)
    _assert_same_logits(load(folder, trust_remote_code=True), imodel, data[0])


def test_torchvision_round_trip(data, tmp_path) -> None:
    import torchvision

    model = torchvision.models.resnet18(num_classes=C)
    imodel = _convert(model, data, base_model="torchvision:resnet18")
    folder = imodel.save_pretrained(tmp_path / "tv", include_backbone=True)
    build = json.loads((folder / "retrofit_config.json").read_text())["base_model"]["build"]
    assert build["spec"] == "torchvision:resnet18" and build["kwargs"] == {"num_classes": C}
    _assert_same_logits(load(folder), imodel, data[0][:8])
    _assert_same_logits(load(folder, model=model), imodel, data[0][:8])


def test_timm_round_trip(data, tmp_path) -> None:
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=C)
    imodel = _convert(model, data)
    folder = imodel.save_pretrained(tmp_path / "timm", include_backbone=True)
    config = json.loads((folder / "retrofit_config.json").read_text())
    assert config["base_model"]["build"]["kwargs"] == {"num_classes": C, "img_size": [32, 32]}
    assert 'base_model: "timm/vit_tiny_patch16_224.' in (folder / "README.md").read_text()
    _assert_same_logits(load(folder), imodel, data[0][:8])


def test_transformers_round_trips_from_a_local_folder_and_standalone(data, tmp_path) -> None:
    import transformers

    hf_dir = tmp_path / "hf_resnet"
    transformers.ResNetForImageClassification(
        transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=C
        )
    ).save_pretrained(hf_dir)
    model = transformers.AutoModelForImageClassification.from_pretrained(hf_dir)
    imodel = _convert(model, data)
    folder = imodel.save_pretrained(tmp_path / "from_spec")
    _assert_same_logits(load(folder), imodel, data[0][:8])  # plain weights run no code
    (hf_dir / "modeling_resnet.py").write_text("raise SystemExit\n")  # custom code does
    with pytest.raises(retrofit.UntrustedCodeError, match="local model folder"):
        load(folder)
    _assert_same_logits(load(folder, trust_remote_code=True), imodel, data[0][:8])

    vit_dir = tmp_path / "hf_vit"
    config = transformers.ViTConfig(**TINY_VIT, num_labels=C)
    transformers.ViTForImageClassification(config).save_pretrained(vit_dir)
    vit = transformers.AutoModelForImageClassification.from_pretrained(vit_dir)
    vit_imodel = _convert(vit, data)
    standalone = vit_imodel.save_pretrained(tmp_path / "standalone", include_backbone=True)
    shutil.rmtree(vit_dir)
    _assert_same_logits(load(standalone), vit_imodel, data[0][:8])


def test_open_clip_round_trip(data, tmp_path) -> None:
    import open_clip

    from retrofit.adapters.open_clip import OpenCLIPClassifier

    clip_config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "retrofit-test-tiny-clip.json").write_text(json.dumps(clip_config))
    open_clip.add_model_config(tmp_path)
    clip = open_clip.CLIP(**clip_config)
    model = OpenCLIPClassifier(clip.visual, nn.Linear(16, C))
    imodel = _convert(model, data, base_model="open_clip:retrofit-test-tiny-clip")
    without = imodel.save_pretrained(tmp_path / "without")
    _assert_same_logits(load(without, model=model), imodel, data[0][:8])
    with pytest.raises(retrofit.ExportError, match="open_clip classifier without its backbone"):
        load(without)
    standalone = imodel.save_pretrained(tmp_path / "with", include_backbone=True)
    _assert_same_logits(load(standalone), imodel, data[0][:8])


def test_a_different_backbone_is_refused_unless_not_strict(cnn_export, data) -> None:
    _, imodel, folder = cnn_export
    torch.manual_seed(1)  # other weights than the exported model's
    other = SmallCNN()
    with pytest.raises(FingerprintMismatchError, match="strict=False"):
        load(folder, model=other)
    with pytest.warns(UserWarning, match="not the one this export was made from"):
        loaded = load(folder, model=other, strict=False)
    assert loaded(data[0][:2]).shape == (2, C)


def test_a_backbone_without_a_spec_must_be_given(cnn_export, data) -> None:
    _, imodel, folder = cnn_export
    with pytest.raises(retrofit.ExportError, match="model=") as error:
        load(folder)
    assert "does not say how to rebuild its SmallCNN" in str(error.value)
    with pytest.raises(retrofit.ExportError, match="base_model="):
        imodel.save_pretrained(folder.parent / "nope", include_backbone=True)


def test_an_interrupted_save_keeps_the_previous_export(cnn_export, data, tmp_path, monkeypatch):
    model, imodel, _ = cnn_export
    folder = imodel.save_pretrained(tmp_path / "atomic")
    torch.manual_seed(1)
    other_model = SmallCNN()
    other = _convert(other_model, data, method="dense")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing README.md")

    monkeypatch.setattr("retrofit.export.write.render_model_card", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        other.save_pretrained(folder)
    _assert_same_logits(load(folder, model=model), imodel, data[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic"], "no temporary folders left"

    monkeypatch.undo()
    other.save_pretrained(folder)
    _assert_same_logits(load(folder, model=other_model), other, data[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic"]


def test_saving_never_replaces_a_folder_with_other_files(cnn_export, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(retrofit.ExportError, match="notes.txt"):
        cnn_export[1].save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def _edit_config(folder: Path, edit) -> None:
    path = folder / "retrofit_config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _edit_tensors(folder: Path, edit) -> None:
    """Rewrite model.safetensors and record its new size and checksum, as a careless tool would."""
    from retrofit.export.write import file_info

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    info = file_info(folder / "model.safetensors")
    _edit_config(folder, lambda c: c["files"].update({"model.safetensors": info}))


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-40])


def _flip_last_byte(folder: Path) -> None:
    path = folder / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def _truncate_and_record(folder: Path) -> None:
    from retrofit.export.write import file_info

    _truncate(folder)
    info = file_info(folder / "model.safetensors")
    _edit_config(folder, lambda c: c["files"].update({"model.safetensors": info}))


def _shift_selected(folder: Path) -> None:
    def edit(config):
        config["base_model"]["feature_dim"] = 64
        config["features"][0]["backbone_index"] = 40

    def bump(tensors):
        tensors["bottleneck.selected"][0] = 40

    _edit_tensors(folder, bump)
    _edit_config(folder, edit)


CORRUPTIONS = {
    "folder missing": (lambda f: shutil.rmtree(f), ExportNotFoundError, "No export folder"),
    "tensors missing": (
        lambda f: (f / "model.safetensors").unlink(),
        ExportNotFoundError,
        "model.safetensors is missing",
    ),
    "config missing": (
        lambda f: (f / "retrofit_config.json").unlink(),
        ExportNotFoundError,
        "retrofit_config.json is missing",
    ),
    "truncated tensors": (_truncate, ExportCorruptedError, "truncated"),
    "corrupted tensors": (_flip_last_byte, ExportCorruptedError, "checksum"),
    "unreadable tensors": (_truncate_and_record, ExportCorruptedError, "cannot be read"),
    "config not json": (
        lambda f: (f / "retrofit_config.json").write_text("{not json"),
        ExportCorruptedError,
        "not valid JSON",
    ),
    "future schema": (
        lambda f: _edit_config(f, lambda c: c.update(schema_version=99)),
        ExportVersionError,
        "Upgrade retrofit",
    ),
    "missing key": (
        lambda f: _edit_config(f, lambda c: c.pop("n_features")),
        ExportSchemaError,
        "required key 'n_features'",
    ),
    "wrong type": (
        lambda f: _edit_config(f, lambda c: c.update(class_names="cat")),
        ExportSchemaError,
        "'class_names' must be a JSON list",
    ),
    "wrong nested type": (
        lambda f: _edit_config(f, lambda c: c["features"][1].update(backbone_index="3")),
        ExportSchemaError,
        r"'features\[1\].backbone_index' must be int",
    ),
    "bad retrofit config": (
        lambda f: _edit_config(f, lambda c: c["config"].update(n_featrues=3)),
        ExportSchemaError,
        "n_featrues",
    ),
    "class count": (
        lambda f: _edit_config(
            f, lambda c: c.update(num_classes=C + 1, class_names=[*c["class_names"], "extra"])
        ),
        ExportSchemaError,
        r"head.bias is \(3,\).*num_classes=4",
    ),
    "feature count": (
        lambda f: _edit_config(f, lambda c: c.update(n_features=5, features=c["features"][:5])),
        ExportSchemaError,
        "n_features=5",
    ),
    "index out of range": (
        lambda f: _edit_config(f, lambda c: c["features"][0].update(backbone_index=999)),
        ExportSchemaError,
        "backbone_index=999 is out of range",
    ),
    "index beyond the backbone": (
        _shift_selected,
        ExportSchemaError,
        "feature 40, out of range for this backbone's 24 features",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_broken_exports_fail_with_a_clear_error(case, export_copy, cnn_export) -> None:
    damage, error, message = CORRUPTIONS[case]
    damage(export_copy)
    with pytest.raises(error, match=message):
        load(export_copy, model=cnn_export[0])


def test_push_to_hub_uploads_the_export_folder(cnn_export, monkeypatch) -> None:
    import huggingface_hub

    calls = []

    def fake_upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        calls.append({**kwargs, "files": sorted(p.name for p in folder.iterdir())})
        calls[-1]["config"] = json.loads((folder / "retrofit_config.json").read_text())
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = cnn_export[1].push_to_hub("someone/tiny-retrofit", token="hf_fake")
    assert result == "commit-info" and len(calls) == 1
    call = calls[0]
    assert call["repo_id"] == "someone/tiny-retrofit" and call["repo_type"] == "model"
    assert call["files"] == ["README.md", "model.safetensors", "retrofit_config.json"]
    assert call["config"]["n_features"] == cnn_export[1].n_features
