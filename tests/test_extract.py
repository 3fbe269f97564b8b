"""extract(): loader formats, outputs, the cache (reuse, invalidation, resume) and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import retrofit
from retrofit.extraction.features import PROBE_IMAGES
from tests.conftest import NUM_CLASSES


class CountingModel(nn.Module):
    """A small CNN that counts how many images it has seen (to prove cache hits)."""

    def __init__(self, width: int = 8, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(width, classes)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_features_match_the_head_input_and_logits(tiny_resnet, loader, image_data) -> None:
    fs = retrofit.extract(tiny_resnet, loader, with_maps=True, progress=False)
    images, labels = image_data
    assert fs.features.shape == (24, 512) and fs.features.dtype == torch.float32
    assert fs.maps.shape == (24, 512, 2, 2) and fs.maps.dtype == torch.float16
    assert torch.equal(fs.labels, labels)
    with torch.no_grad():
        torch.testing.assert_close(fs.logits, tiny_resnet(images), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tiny_resnet.fc(fs.features), fs.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fs.maps.float().mean(dim=(2, 3)), fs.features, rtol=1e-2, atol=1e-2)
    assert fs.layer == "fc:input" and fs.num_classes == NUM_CLASSES


def test_list_batches_and_hf_dict_batches(image_data) -> None:
    images, labels = image_data
    model = CountingModel()
    as_lists = [[images[i : i + 8], labels[i : i + 8]] for i in range(0, 24, 8)]
    as_dicts = [
        {"pixel_values": images[i : i + 8], "labels": labels[i : i + 8]} for i in range(0, 24, 8)
    ]
    a = retrofit.extract(model, as_lists, progress=False)
    b = retrofit.extract(model, as_dicts, progress=False)
    torch.testing.assert_close(a.features, b.features)
    assert torch.equal(a.labels, labels) and torch.equal(b.labels, labels)


class PILDataset(Dataset):
    def __init__(self, n: int = 10) -> None:
        rng = np.random.default_rng(0)
        self.images = [
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)
        ]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], index % NUM_CLASSES


def test_dataset_of_pil_images_with_a_transform() -> None:
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize(16), transforms.ToTensor()])
    fs = retrofit.extract(
        CountingModel(), PILDataset(), transform=transform, batch_size=4, progress=False
    )
    assert fs.features.shape == (10, 8)
    assert fs.labels.tolist() == [i % NUM_CLASSES for i in range(10)]


def test_class_names_are_kept_and_checked(loader, tiny_resnet) -> None:
    names = [f"c{i}" for i in range(NUM_CLASSES)]
    assert (
        retrofit.extract(tiny_resnet, loader, class_names=names, progress=False).class_names
        == names
    )
    with pytest.raises(retrofit.ConfigError, match="class_names has 2 entries"):
        retrofit.extract(tiny_resnet, loader, class_names=["a", "b"], progress=False)


def test_cache_is_reused_without_running_the_model(tmp_path: Path, loader) -> None:
    model = CountingModel()
    first = retrofit.extract(model, loader, with_maps=True, cache_dir=tmp_path, progress=False)
    seen = model.seen
    second = retrofit.extract(model, loader, with_maps=True, cache_dir=tmp_path, progress=False)
    assert model.seen == seen + PROBE_IMAGES, "a cache hit must not run the model on the data again"
    assert torch.equal(first.features, second.features) and torch.equal(first.maps, second.maps)
    assert first.fingerprint == second.fingerprint


def test_cache_is_never_reused_for_other_weights_or_data(tmp_path: Path, image_data) -> None:
    images, labels = image_data
    model = CountingModel()
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    first = retrofit.extract(model, loader, cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    changed_weights = retrofit.extract(model, loader, cache_dir=tmp_path, progress=False)
    assert changed_weights.fingerprint != first.fingerprint
    torch.testing.assert_close(changed_weights.logits, model.fc(changed_weights.features))
    tail_changed = images.clone()
    tail_changed[-1] += 0.5
    seen = model.seen
    other = retrofit.extract(
        model,
        DataLoader(TensorDataset(tail_changed, labels), batch_size=8),
        cache_dir=tmp_path,
        progress=False,
    )
    assert model.seen - seen == 8 + PROBE_IMAGES, (
        "only the batch whose pixels changed is recomputed"
    )
    with torch.no_grad():
        expected = model(tail_changed)
    torch.testing.assert_close(other.logits, expected)


class InterruptedLoader:
    """Yields the batches of `loader` but raises after `stop_after` of them (a crash)."""

    def __init__(self, loader: DataLoader, stop_after: int) -> None:
        self.loader, self.stop_after = loader, stop_after

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == self.stop_after:
                raise KeyboardInterrupt
            yield batch


def test_interrupted_extraction_resumes(tmp_path: Path, loader) -> None:
    model = CountingModel()
    with pytest.raises(KeyboardInterrupt):
        retrofit.extract(
            model, InterruptedLoader(loader, stop_after=2), cache_dir=tmp_path, progress=False
        )
    assert model.seen == 16 + PROBE_IMAGES
    key_dirs = list(tmp_path.iterdir())
    assert len(key_dirs) == 1 and not (key_dirs[0] / "store").exists()
    model.seen = 0
    resumed = retrofit.extract(model, loader, cache_dir=tmp_path, progress=False)
    assert model.seen == 8 + PROBE_IMAGES, "only the batch that was never extracted runs again"
    fresh = retrofit.extract(model, loader, progress=False)
    torch.testing.assert_close(resumed.features, fresh.features)


def test_corrupt_chunk_is_recomputed_not_trusted(tmp_path: Path, loader) -> None:
    model = CountingModel()
    with pytest.raises(KeyboardInterrupt):
        retrofit.extract(
            model, InterruptedLoader(loader, stop_after=2), cache_dir=tmp_path, progress=False
        )
    chunk = next(tmp_path.glob("*/chunks/chunk_000000.safetensors"))
    chunk.write_bytes(chunk.read_bytes()[:40])
    model.seen = 0
    retrofit.extract(model, loader, cache_dir=tmp_path, progress=False)
    assert model.seen == 16 + PROBE_IMAGES


def test_empty_loader() -> None:
    with pytest.raises(retrofit.DataError, match="no batches"):
        retrofit.extract(CountingModel(), [], progress=False)


def test_labels_outside_the_classes_leave_no_cache(tmp_path: Path, image_data) -> None:
    images, labels = image_data
    bad = labels.clone()
    bad[-1] = NUM_CLASSES
    with pytest.raises(retrofit.DataError, match=r"\[0, 5\)"):
        retrofit.extract(
            CountingModel(),
            DataLoader(TensorDataset(images, bad), batch_size=8),
            cache_dir=tmp_path,
            progress=False,
        )
    assert not list(tmp_path.glob("*/store"))


def test_output_width_disagrees_with_num_classes(loader) -> None:
    with pytest.raises(retrofit.ModelError, match="outputs 5 logits but num_classes=7"):
        retrofit.extract(CountingModel(), loader, num_classes=7, progress=False)


def test_feature_layer_that_does_not_exist(loader) -> None:
    with pytest.raises(retrofit.LayerNotFoundError, match="not a module"):
        retrofit.extract(CountingModel(), loader, feature_layer="nope", progress=False)


def test_non_finite_features_write_nothing(tmp_path: Path, loader) -> None:
    model = CountingModel()
    with torch.no_grad():
        model.body[0].bias.fill_(float("nan"))
    with pytest.raises(retrofit.FeatureError, match="NaN"):
        retrofit.extract(model, loader, cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.glob("*/chunks/*.safetensors")) and not list(tmp_path.glob("*/store"))


def test_image_batch_of_the_wrong_rank() -> None:
    batches = [(torch.rand(8, 16, 16), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(retrofit.DataError, match="4 dimensions"):
        retrofit.extract(CountingModel(), batches, progress=False)


def test_unwritable_cache_directory(tmp_path: Path, loader) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(retrofit.CacheError, match="Cannot write to the cache directory"):
        retrofit.extract(CountingModel(), loader, cache_dir=blocker / "cache", progress=False)


def test_store_without_meta_is_never_read(tmp_path: Path, loader) -> None:
    model = CountingModel()
    retrofit.extract(model, loader, cache_dir=tmp_path, progress=False)
    (next(tmp_path.glob("*/store")) / "meta.json").unlink()
    model.seen = 0
    retrofit.extract(model, loader, cache_dir=tmp_path, progress=False)
    assert model.seen == 24 + PROBE_IMAGES
