"""The data normalisation policy (retrofit/extraction/inputs.py): what is converted, what gets a DataError."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import retrofit
from retrofit.errors import DataError, ModelError
from tests.tiny import SmallCNN, colour_coded_images

C = 3


class Items(Dataset):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


@pytest.fixture
def model() -> nn.Module:
    return SmallCNN().eval()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return colour_coded_images(12, 16, C)


def _extract(model: nn.Module, loader, **kwargs) -> retrofit.FeatureSet:
    return retrofit.extract(model, loader, progress=False, **kwargs)


def test_uint8_and_grayscale_images_are_converted_with_a_log_line(
    model, data, caplog, monkeypatch
) -> None:
    monkeypatch.setattr("retrofit.extraction.inputs._LOGGED", set())  # logged once per process
    images, labels = data
    as_uint8 = (images * 255).round().to(torch.uint8)
    with caplog.at_level(logging.INFO, logger="retrofit.extraction.inputs"):
        converted = _extract(model, [(as_uint8, labels)])
    assert "divided by 255" in caplog.text
    expected = _extract(model, [(as_uint8.float() / 255, labels)])
    assert torch.equal(converted.features, expected.features)

    gray = images[:, :1]
    with caplog.at_level(logging.INFO, logger="retrofit.extraction.inputs"):
        from_gray = _extract(model, [(gray, labels)])
    assert "repeated to the model's 3 channels" in caplog.text
    assert torch.equal(
        from_gray.features, _extract(model, [(gray.repeat(1, 3, 1, 1), labels)]).features
    )

    with pytest.raises(DataError, match="float tensors"):
        _extract(model, [(images.to(torch.int32), labels)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_gets_its_inputs_cast(model, data, dtype) -> None:
    half = model.to(dtype)
    features = _extract(half, [data])
    assert features.features.dtype == torch.float32 and torch.isfinite(features.features).all()
    imodel = retrofit.convert(
        half, [data], method="dense", n_features=4, per_class=2, epochs=1, progress=False
    )
    assert imodel(data[0][:2]).shape == (2, C), "float32 images into a half-precision backbone"


def test_items_of_different_sizes_name_the_first_mismatch(model) -> None:
    items = [(torch.rand(3, 16, 16), 0), (torch.rand(3, 16, 16), 1), (torch.rand(3, 20, 16), 2)]
    with pytest.raises(DataError, match=r"Dataset item 2 has an image of shape \(3, 20, 16\)"):
        _extract(model, Items(items))


def test_batches_of_different_sizes_with_maps_are_refused(model, data) -> None:
    images, labels = data
    batches = [(images[:6], labels[:6]), (images[6:, :, :12, :12], labels[6:])]
    assert len(_extract(model, batches).labels) == 12, "pooled features take any size"
    with pytest.raises(DataError, match=r"batch 1 has \(12, 12\), the first had \(16, 16\)"):
        _extract(model, batches, with_maps=True)


@pytest.mark.parametrize(
    "loader",
    [
        lambda images: [(images[:3], ["cat", "dog", "cat"])],
        lambda images: [(images[:3], torch.tensor([0.0, 1.0, 1.0]))],
        lambda images: Items([(images[0], "cat"), (images[1], "dog")]),
        lambda images: Items([(images[0], 0.5), (images[1], 1)]),
    ],
)
def test_labels_must_be_integers(model, data, loader) -> None:
    with pytest.raises(DataError, match="integer class indices"):
        _extract(model, loader(data[0]))


@pytest.mark.parametrize("method", ["qsenn", "sparse"])
def test_one_class_is_a_clear_error(model, data, method) -> None:
    images, _ = data
    with pytest.raises(DataError, match="only one class"):
        retrofit.convert(
            model,
            [(images, torch.zeros(12, dtype=torch.long))],
            method=method,
            n_features=4,
            per_class=2,
            progress=False,
        )


def test_a_model_must_be_a_module(data) -> None:
    with pytest.raises(ModelError, match="model must be an nn.Module"):
        retrofit.convert(lambda x: x, DataLoader(TensorDataset(*data), batch_size=4))


def test_a_decompression_bomb_is_a_clear_error(model, tmp_path, monkeypatch) -> None:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    for c in range(2):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(tmp_path / "data" / f"class{c}" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: a "bomb"
    folder = ImageFolder(str(tmp_path / "data"), transform=ToTensor())
    with pytest.raises(DataError, match="item 0 is not a usable image"):
        _extract(model, folder)
    with pytest.raises(DataError, match="too large to decode safely"):
        _extract(model, DataLoader(folder, batch_size=2))


class HeadFirst(nn.Module):
    """A model whose first registered convolution is its head, not its input layer."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(8, C, 1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x))).mean(dim=(2, 3))


def test_channels_are_only_inferred_for_grayscale(data) -> None:
    features = _extract(HeadFirst().eval(), [data], feature_layer="head:input")
    assert features.features.shape == (12, 8)
