"""A converted model where a PyTorch or transformers model goes: transformers pipelines, both
torch.onnx exporters (checked with onnxruntime), Captum, and load() without model= (issue 31).
All models are tiny, random and built locally."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
import transformers
from captum.attr import IntegratedGradients, LayerGradCam
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.errors import ExportError, RetrofitError, TransformersViewError
from retrofit.io.specs import ModelSpec, build_model
from tests.tiny import TINY_VIT, SmallCNN, colour_coded_images

C = 3


def _convert(model: torch.nn.Module, data, **settings) -> retrofit.InterpretableModel:
    kwargs = {"method": "qsenn", "n_features": 6, "per_class": 2, "epochs": 2, "rounds": 1}
    loader = DataLoader(TensorDataset(*data), batch_size=15)
    return retrofit.convert(model.eval(), loader, progress=False, **{**kwargs, **settings})


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return colour_coded_images(30, 32, C)


@pytest.fixture(scope="module")
def cnn(data) -> retrofit.InterpretableModel:
    torch.manual_seed(0)
    return _convert(SmallCNN(C), data)


# --- transformers pipeline --------------------------------------------------------------------


def test_pipeline_given_the_model_itself_fails_at_once_naming_the_view(data) -> None:
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**TINY_VIT, num_labels=C))
    imodel = _convert(model, data, class_names=["red", "green", "blue"])
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    with pytest.raises(TransformersViewError, match=r"to_transformers\(\)"):
        transformers.pipeline(
            "image-classification", model=imodel, image_processor=processor, device="cpu"
        )
    # the view runs, and the model itself keeps behaving as a plain nn.Module elsewhere
    classify = transformers.pipeline(
        "image-classification",
        model=imodel.to_transformers(),
        image_processor=processor,
        device="cpu",
    )
    picture = (data[0][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    answer = classify(Image.fromarray(picture), top_k=1)
    assert answer[0]["label"] in ("red", "green", "blue")
    assert getattr(imodel, "hf_device_map", None) is None and not hasattr(imodel, "hf_device_map")
    imodel.hf_device_map = {"": "cpu"}  # accelerate's dispatch_model sets it
    assert imodel.hf_device_map == {"": "cpu"}


# --- ONNX ---------------------------------------------------------------------------------------


def _onnx_logits(path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: images.numpy()})[0]


def test_the_torchscript_onnx_exporter_exports_the_model_itself(cnn, data, tmp_path) -> None:
    images = data[0][:4]
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        cnn,
        (images,),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    with torch.no_grad():
        expected = cnn(data[0][:7])
        traced = torch.jit.trace(cnn, (images,))  # the same tracer, for TorchScript
        assert torch.allclose(traced(data[0][:7]), expected, atol=1e-5)
    np.testing.assert_allclose(_onnx_logits(path, data[0][:7]), expected.numpy(), atol=1e-4)


def test_the_dynamo_onnx_exporter_exports_the_model_itself(cnn, data, tmp_path) -> None:
    images = data[0][:4]
    path = tmp_path / "model.onnx"
    program = torch.onnx.export(
        cnn,
        (images,),
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=64)}},
        dynamo=True,
        verbose=False,
    )
    program.save(str(path))
    with torch.no_grad():
        expected = cnn(data[0][:7])
    np.testing.assert_allclose(_onnx_logits(path, data[0][:7]), expected.numpy(), atol=1e-4)


# --- Captum -------------------------------------------------------------------------------------


def test_captum_runs_on_both_views(cnn, data) -> None:
    images = data[0][:2]
    layer = cnn.backbone.body[0]
    view = cnn.to_transformers()
    direct = IntegratedGradients(cnn).attribute(images, target=1, n_steps=8)
    through_view = IntegratedGradients(view.logits_only()).attribute(images, target=1, n_steps=8)
    assert direct.shape == images.shape and torch.allclose(direct, through_view, atol=1e-6)
    cams = [LayerGradCam(m, layer).attribute(images, target=1) for m in (cnn, view.logits_only())]
    assert cams[0].shape == (2, 1, 16, 16) and torch.allclose(cams[0], cams[1], atol=1e-6)
    # integrated gradients add up to the logit difference from the baseline (completeness)
    with torch.no_grad():
        gap = cnn(images)[:, 1] - cnn(torch.zeros_like(images))[:, 1]
    assert torch.allclose(direct.sum(dim=(1, 2, 3)), gap, rtol=0.05, atol=0.02)


# --- load() without model= ---------------------------------------------------------------------


def test_a_model_built_from_a_spec_loads_without_model(data, tmp_path) -> None:
    """retrofit:demo rebuilds with its shipped weights: no backbone file, no base_model=."""
    images = torch.nn.functional.interpolate(data[0], size=24)
    demo = build_model("retrofit:demo")
    imodel = _convert(demo, (images, data[1]))
    folder = imodel.save_pretrained(tmp_path / "demo")
    loaded = retrofit.load(folder)
    with torch.no_grad():
        assert torch.equal(loaded(images[:4]), imodel(images[:4]))


def test_a_random_torchvision_model_from_a_spec_saves_its_backbone_without_base_model(
    data, tmp_path
) -> None:
    torch.manual_seed(0)
    spec = ModelSpec("torchvision", "mobilenet_v3_small", kwargs={"num_classes": C})
    imodel = _convert(build_model(spec, pretrained=False), data)
    folder = imodel.save_pretrained(tmp_path / "with", include_backbone=True)
    with torch.no_grad():
        assert torch.allclose(retrofit.load(folder)(data[0][:4]), imodel(data[0][:4]), atol=1e-6)
    # random weights are not rebuilt by the spec: load says so at once, before building anything
    bare = imodel.save_pretrained(tmp_path / "without")
    with pytest.raises(ExportError, match=r"include_backbone=True") as error:
        retrofit.load(bare)
    assert "model=" in str(error.value)


def test_a_model_without_any_spec_says_how_to_make_the_folder_stand_alone(cnn, tmp_path) -> None:
    folder = cnn.save_pretrained(tmp_path / "cnn")
    with pytest.raises(RetrofitError, match=r"model=.*base_model=.*include_backbone=True"):
        retrofit.load(folder)
