"""The ecosystem: a converted transformers model in HF pipelines, loading from a real offline Hub
cache, and the preprocessing each family's export carries (all models tiny and random)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from transformers.modeling_outputs import ImageClassifierOutput

import retrofit
from retrofit.errors import ConfigError, ExportNotFoundError
from retrofit.model.hf import RetrofitForImageClassification, image_processor
from tests.tiny import TINY_VIT, SmallCNN, colour_coded_images

C = 3
CLASSES = ["red", "green", "blue"]
REPO = "someone/tiny-vit-retrofit"


def _convert(model: torch.nn.Module, data, **settings) -> retrofit.InterpretableModel:
    kwargs = {"method": "qsenn", "n_features": 6, "per_class": 2, "epochs": 2, "rounds": 1}
    loader = DataLoader(TensorDataset(*data), batch_size=15)
    return retrofit.convert(model.eval(), loader, progress=False, **{**kwargs, **settings})


def _pictures(n: int, seed: int = 0) -> list[Image.Image]:
    """Small RGB pictures of other sizes than the model's input, as a user would pass them."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return colour_coded_images(30, 32, C)


@pytest.fixture(scope="module")
def vit(data, tmp_path_factory):
    """A random ViT saved with its image processor, converted, and exported with its backbone."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "vit"
    config = transformers.ViTConfig(**TINY_VIT, num_labels=C)
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    model = transformers.AutoModelForImageClassification.from_pretrained(folder)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    imodel = _convert(model, data, class_names=CLASSES)
    export = imodel.save_pretrained(
        tmp_path_factory.mktemp("exports") / "vit", include_backbone=True
    )
    return imodel, processor, export


# --- the transformers way ---------------------------------------------------------------------


def test_a_converted_model_answers_the_transformers_way(vit, data) -> None:
    imodel, _, _ = vit
    images, labels = data[0][:6], data[1][:6]
    with torch.no_grad():
        logits = imodel(images)
        output = imodel(pixel_values=images, labels=labels)
        as_tuple = imodel(pixel_values=images, labels=labels, return_dict=False)
    assert isinstance(logits, torch.Tensor)  # the plain call keeps returning logits
    assert isinstance(output, ImageClassifierOutput)
    assert torch.equal(output.logits, logits) and torch.equal(output["logits"], logits)
    assert torch.allclose(output.loss, F.cross_entropy(logits, labels))
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], logits)
    assert imodel(pixel_values=images).loss is None
    assert imodel.device == torch.device("cpu") and imodel.dtype == torch.float32
    with pytest.raises(ConfigError, match="pixel_values"):
        imodel(images, labels=labels)
    with pytest.raises(ConfigError, match="once"):
        imodel(images, pixel_values=images)


def test_every_family_has_a_device_and_keeps_plain_logits(data) -> None:
    torch.manual_seed(0)
    imodel = _convert(SmallCNN(C), data)
    assert imodel.device == torch.device("cpu") and imodel.dtype == torch.float32
    assert isinstance(imodel(data[0][:2]), torch.Tensor)
    assert imodel(pixel_values=data[0][:2]).logits.shape == (2, C)


def test_a_transformers_models_own_labels_become_the_class_names(data) -> None:
    torch.manual_seed(0)
    labelled = transformers.ViTConfig(**TINY_VIT, id2label=dict(enumerate(CLASSES)))
    model = transformers.ViTForImageClassification(labelled).eval()
    assert _convert(model, data).class_names == CLASSES
    assert _convert(model, data, class_names=["a", "b", "c"]).class_names == ["a", "b", "c"]
    placeholders = transformers.ViTForImageClassification(
        transformers.ViTConfig(**TINY_VIT, num_labels=C)
    ).eval()  # LABEL_0, LABEL_1, ... name nothing
    assert _convert(placeholders, data).class_names == [f"class_{c}" for c in range(C)]


def test_pipeline_gives_the_converted_models_top_classes(vit, capfd, tmp_path) -> None:
    imodel, processor, _ = vit
    with torch.no_grad():
        before = imodel(processor(images=_pictures(1), return_tensors="pt")["pixel_values"])
    hf_model = imodel.to_transformers()
    assert isinstance(hf_model, transformers.PreTrainedModel)
    assert hf_model.interpretable is imodel and imodel.config.method == "qsenn"
    assert hf_model.config.id2label == dict(enumerate(CLASSES))
    assert hf_model.config.label2id == {name: i for i, name in enumerate(CLASSES)}
    assert hf_model.device == imodel.device and hf_model.can_generate() is False

    classify = transformers.pipeline(
        "image-classification", model=hf_model, image_processor=processor, device="cpu"
    )
    assert "not supported" not in capfd.readouterr().err
    pictures = _pictures(2)
    answers = classify(pictures, top_k=2)
    with torch.no_grad():  # wrapping re-initialised nothing: the logits are the converted model's
        pixels = processor(images=pictures, return_tensors="pt")["pixel_values"]
        probabilities = imodel(pixels).softmax(dim=1)
    assert torch.equal(imodel(pixels[:1]), before)
    for answer, row in zip(answers, probabilities):
        top = row.argsort(descending=True)[:2]
        assert [a["label"] for a in answer] == [CLASSES[int(c)] for c in top]
        assert [a["score"] for a in answer] == pytest.approx(row[top].tolist(), rel=1e-5)

    # a saved pipeline is a retrofit export plus the image processor, and loads back as one
    folder = tmp_path / "pipeline"
    classify.save_pretrained(folder, include_backbone=True)
    assert (folder / "retrofit_config.json").is_file()
    again = transformers.pipeline(
        "image-classification",
        model=RetrofitForImageClassification.from_pretrained(folder),
        image_processor=transformers.AutoImageProcessor.from_pretrained(folder),
        device="cpu",
    )
    assert again(pictures, top_k=2) == answers


# --- the Hub, offline ----------------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache that huggingface_hub uses, with all network access turned off."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _put_in_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """Lay out `files` as huggingface_hub caches a download: blobs named by content hash,
    snapshots/<commit>/ linking to them, refs/main naming the commit. Returns the commit."""
    from huggingface_hub.file_download import repo_folder_name

    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def _export_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_hub_repo_id_loads_from_the_offline_cache(vit, offline_hub, tmp_path) -> None:
    from huggingface_hub import scan_cache_dir

    imodel, processor, export = vit
    marker = tmp_path / "code-ran"
    planted = {  # a repo may hold code; loading an export never runs it
        "modeling_evil.py": f"open({str(marker)!r}, 'w').write('ran')\n".encode(),
        "config.json": json.dumps({"auto_map": {"AutoModel": "modeling_evil.Evil"}}).encode(),
    }
    commit = _put_in_hub_cache(offline_hub, REPO, {**_export_files(export), **planted})
    assert [r.repo_id for r in scan_cache_dir(offline_hub).repos] == [REPO]  # a real cache

    pixels = processor(images=_pictures(3), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = imodel(pixels)
        for loaded in (
            retrofit.load(REPO),
            retrofit.InterpretableModel.from_pretrained(REPO, revision=commit),
        ):
            assert torch.equal(loaded(pixels), expected)
            assert loaded.class_names == CLASSES
    assert not marker.exists()

    # the export carries the original image processor: the loaded model reads images alone
    rebuilt = image_processor(loaded)
    assert type(rebuilt) is type(processor)
    assert torch.equal(rebuilt(images=_pictures(3), return_tensors="pt")["pixel_values"], pixels)
    classify = transformers.pipeline(
        "image-classification",
        model=loaded.to_transformers(),
        image_processor=rebuilt,
        device="cpu",
    )
    assert classify(_pictures(1), top_k=1)[0][0]["label"] == CLASSES[int(expected[0].argmax())]


def test_a_repo_id_missing_from_the_offline_cache_is_a_clear_error(offline_hub) -> None:
    with pytest.raises(ExportNotFoundError, match="not in the local Hub cache while offline"):
        retrofit.load("someone/never-downloaded")
    with pytest.raises(ExportNotFoundError, match="not in the local Hub cache"):
        retrofit.InterpretableModel.from_pretrained("someone/never-downloaded", revision="v2")


def test_a_hub_repo_that_is_no_export_says_so(offline_hub, tmp_path) -> None:
    plain = tmp_path / "plain"
    transformers.ViTForImageClassification(transformers.ViTConfig(**TINY_VIT)).save_pretrained(
        plain
    )
    _put_in_hub_cache(offline_hub, "someone/plain-vit", _export_files(plain))
    with pytest.raises(ExportNotFoundError, match="holds no retrofit export.*retrofit.convert"):
        retrofit.load("someone/plain-vit")


def test_a_local_folder_named_like_a_repo_id_wins(vit, data, offline_hub, tmp_path, monkeypatch):
    _put_in_hub_cache(offline_hub, REPO, _export_files(vit[2]))  # the ViT export on the "Hub"
    torch.manual_seed(0)
    cnn = SmallCNN(C)
    local = _convert(cnn, data)
    local.save_pretrained(tmp_path / REPO)
    monkeypatch.chdir(tmp_path)
    loaded = retrofit.load(REPO, model=cnn)  # the ViT's export would refuse this backbone
    with torch.no_grad():
        assert torch.equal(loaded(data[0][:4]), local(data[0][:4]))


def test_a_hub_download_fetches_only_export_files() -> None:
    from huggingface_hub.utils import filter_repo_objects

    from retrofit.export.hub import HUB_DOWNLOAD_FILES

    repo_files = [
        "README.md",
        "retrofit_config.json",
        "model.safetensors",
        "backbone.safetensors",
        "modeling_evil.py",
        "pytorch_model.bin",
        "config.json",
        "sub/model.safetensors",
        "report.html",
    ]
    fetched = list(filter_repo_objects(repo_files, allow_patterns=list(HUB_DOWNLOAD_FILES)))
    assert sorted(fetched) == [
        "README.md",
        "backbone.safetensors",
        "model.safetensors",
        "retrofit_config.json",
    ]


# --- preprocessing -------------------------------------------------------------------------------


def test_a_timm_export_carries_its_data_config(data, tmp_path) -> None:
    import timm
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=C, img_size=32)
    imodel = _convert(model, data)
    loaded = retrofit.load(imodel.save_pretrained(tmp_path / "timm", include_backbone=True))
    assert loaded.preprocessing["source"] == "timm"
    assert loaded.preprocessing["input_size"] == [3, 32, 32]
    timm_own = create_transform(
        **{**resolve_data_config({}, model=model), "input_size": (3, 32, 32)}
    )
    picture = _pictures(1)[0]
    pixels = loaded.image_transform()(picture)
    assert pixels.shape == (3, 32, 32)
    assert torch.equal(pixels, timm_own(picture))
    assert torch.equal(imodel.image_transform()(picture), pixels)  # before saving, the same
    with torch.no_grad():
        assert torch.equal(loaded(pixels[None]), imodel(pixels[None]))


def test_a_torchvision_export_carries_its_weights_transforms(data, tmp_path, caplog) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=C)  # random weights
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    imodel = _convert(model, data, base_model=f"torchvision:mobilenet_v3_small:{weights.name}")
    loaded = retrofit.load(imodel.save_pretrained(tmp_path / "tv", include_backbone=True))
    assert loaded.preprocessing["source"] == "torchvision"
    picture = _pictures(1)[0].resize((300, 260))
    pixels = loaded.image_transform()(picture)
    assert pixels.shape == (3, 224, 224)
    assert torch.allclose(pixels, weights.transforms()(picture), atol=1e-6)

    # without a weights tag nothing is recorded: the image is resized to the converted size
    plain = _convert(model, data)
    assert plain.image_transform()(picture).shape == (3, 32, 32)
    assert "No preprocessing is recorded" in caplog.text


def test_preprocessing_that_names_foreign_code_is_refused() -> None:
    from retrofit.extraction.preprocessing import image_transform

    with pytest.raises(ConfigError, match="not an image processor class of transformers"):
        image_transform({"source": "transformers", "image_processor_type": "PreTrainedModel"})
    with pytest.raises(ConfigError, match="no model family builds a transform"):
        image_transform({"source": "somewhere"})
    with pytest.raises(ConfigError, match="incomplete or invalid"):
        image_transform({"source": "torchvision", "mean": [0.5]})
    with pytest.raises(ConfigError, match="neither its preprocessing nor its input size"):
        image_transform(None)


def test_a_model_without_a_transformers_processor_says_so(data) -> None:
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="no transformers image processor"):
        image_processor(_convert(SmallCNN(C), data))
    assert RetrofitForImageClassification.main_input_name == "pixel_values"


def test_open_clip_preprocessing_is_open_clips_own(tmp_path) -> None:
    import open_clip

    from retrofit.adapters.open_clip import OpenCLIPClassifier
    from retrofit.extraction.preprocessing import image_transform
    from retrofit.io.specs import preprocessing_of

    tiny = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 48,
            "layers": 1,
            "width": 32,
            "patch_size": 8,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "retrofit-hf-tiny-clip.json").write_text(json.dumps(tiny))
    open_clip.add_model_config(tmp_path)
    clip, _, open_clips_own = open_clip.create_model_and_transforms("retrofit-hf-tiny-clip")
    classifier = OpenCLIPClassifier(clip.visual, torch.nn.Linear(16, C))
    record = preprocessing_of(classifier, None)
    assert record["source"] == "open_clip"
    picture = _pictures(1)[0]
    pixels = image_transform(json.loads(json.dumps(record)))(picture)  # as stored in an export
    assert pixels.shape == (3, 48, 48)
    assert torch.equal(pixels, open_clips_own(picture))
