"""flint_layers: FLINT attributes that also read earlier layers' pooled outputs, end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.errors import ConfigError, ExportSchemaError, LayerNotFoundError
from retrofit.extraction.hooks import FeatureCapture
from tests.test_flint import FAST, SmallCNN
from tests.tiny import TINY_VIT, colour_coded_images

C = 4
EARLY = "body.1"  # the ReLU(inplace=False) after SmallCNN's first convolution: 12 channels


class TappedCNN(SmallCNN):
    """SmallCNN with extra modules: one whose output cannot be pooled, one never called, one
    called twice (as torchvision's ResNet blocks reuse their ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten(start_dim=0)  # (N, C, H, W) -> one vector for the whole batch
        self.unused = nn.Conv2d(3, 3, 1)
        self.shared = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.body(x)
        self.flat(maps)
        self.shared(self.shared(maps))
        return self.fc(maps.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return colour_coded_images(64, 16, C, bright=3)


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TappedCNN().eval()


def _loader(data, size: int | None = None) -> DataLoader:
    images, labels = data
    if size is not None:
        images = nn.functional.interpolate(images, size=size)
    return DataLoader(TensorDataset(images, labels), batch_size=32)


SETTINGS = {**FAST, "epochs": 8}


def test_a_cnn_with_flint_layers_reads_them_and_reloads_exactly(cnn, data, tmp_path) -> None:
    images, _ = data
    imodel = retrofit.convert(
        cnn, _loader(data), method="flint", flint_layers=[EARLY], maps=True, **SETTINGS
    )
    assert imodel.spec.pooled_layers == (EARLY,)
    assert imodel.bottleneck.in_features == 24 + 12 == imodel.bottleneck.attributes.in_features
    with torch.no_grad():
        features = imodel.backbone_features(images[:8])
        early = cnn.body[1](cnn.body[0](images[:8])).mean(dim=(2, 3))
        logits = imodel(images[:8])
    torch.testing.assert_close(features[:, 24:], early)  # the early layer, pooled, follows
    # Φ reads the early channels: changing them changes the attributes
    with torch.no_grad():
        changed = features.clone()
        changed[:, 24:] += 1.0
        assert not torch.equal(imodel.bottleneck(changed), imodel.bottleneck(features))
    # the maps carry the early layer as constant channels, so they average to the features
    capture = FeatureCapture(cnn, imodel.spec, with_maps=True)
    with torch.no_grad(), capture.attached():
        cnn(images[:8])
        maps = capture.maps
    assert maps.shape[1] == 36
    torch.testing.assert_close(maps[:, 24:].mean(dim=(2, 3)), capture.features()[:, 24:])
    assert torch.equal(maps[:, 24:, 0, 0], capture.features()[:, 24:])
    folder = imodel.save_pretrained(tmp_path / "cnn")
    stored = json.loads((folder / "retrofit_config.json").read_text())
    assert stored["base_model"]["layer"]["pooled_layers"] == [EARLY]
    assert stored["base_model"]["feature_dim"] == 36
    loaded = retrofit.load(folder, model=cnn)
    assert loaded.spec.pooled_layers == (EARLY,)
    with torch.no_grad():
        assert torch.equal(loaded(images[:8]), logits)


def test_a_vision_transformer_pools_tokens_and_maps_and_feeds_another_head(data, tmp_path) -> None:
    import transformers

    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(
        transformers.ViTConfig(**TINY_VIT, num_labels=C)
    ).eval()
    layers = ["vit.embeddings", "vit.embeddings.patch_embeddings.projection"]
    imodel = retrofit.convert(
        vit,
        _loader(data, size=32),
        method="sparse",
        features="flint",
        flint_layers=layers,
        **{**SETTINGS, "n_features": 4, "per_class": 2, "flint": {"attributes": 6, "hidden": 32}},
    )
    small = nn.functional.interpolate(data[0][:4], size=32)
    with torch.no_grad():
        features = imodel.backbone_features(small)
        tokens = vit.vit.embeddings(small)
        patches = vit.vit.embeddings.patch_embeddings.projection(small)
        logits = imodel(small)
    assert features.shape == (4, 16 + 16 + 16)
    torch.testing.assert_close(features[:, 16:32], tokens.mean(dim=1))  # (N, T, D): over tokens
    torch.testing.assert_close(features[:, 32:], patches.mean(dim=(2, 3)))  # (N, C, H, W)
    assert imodel.bottleneck.attributes.in_features == 48
    loaded = retrofit.load(imodel.save_pretrained(tmp_path / "vit"), model=vit)
    with torch.no_grad():
        assert torch.equal(loaded(small), logits)


def test_the_cache_is_keyed_by_the_layer_set(cnn, data, tmp_path) -> None:
    calls = []
    handle = cnn.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:

        def run(layers):
            calls.clear()
            features = retrofit.extract(
                cnn, _loader(data), cache_dir=tmp_path, pooled_layers=layers, progress=False
            )
            return features, sum(calls)

        plain, _ = run(None)
        one, seen = run([EARLY])
        assert seen > len(plain) and one.fingerprint != plain.fingerprint, "re-extracted"
        assert one.dim == plain.dim + 12
        assert torch.equal(one.features[:, :24], plain.features)
        again, seen = run([EARLY])
        assert again.fingerprint == one.fingerprint and seen <= 2, "reused: only the probe ran"
        assert torch.equal(again.features, one.features)
        two, _ = run([EARLY, "body.0"])
        swapped, _ = run(["body.0", EARLY])
        assert len({two.fingerprint, swapped.fingerprint, one.fingerprint}) == 3
        torch.testing.assert_close(two.features[:, 24:36], swapped.features[:, 36:])
        plain_again, seen = run([])
        assert plain_again.fingerprint == plain.fingerprint and seen <= 2
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("layers", "error", "message"),
    [
        (["body1"], LayerNotFoundError, r"not a module of TappedCNN\. Did you mean \['body\.1'"),
        (["nothing.here"], LayerNotFoundError, r"named_modules\(\)"),
        (["flat"], LayerNotFoundError, r"cannot be pooled per image"),
        (["unused"], LayerNotFoundError, "was not called in the forward pass"),
        (["shared"], LayerNotFoundError, "runs 2 times in one forward pass"),
    ],
)
def test_bad_layers_fail_before_training(cnn, data, layers, error, message) -> None:
    with pytest.raises(error, match=message):
        retrofit.convert(cnn, _loader(data), method="flint", flint_layers=layers, **SETTINGS)


def test_bad_flint_layers_settings_fail_on_construction(cnn, data) -> None:
    with pytest.raises(ConfigError, match="uses none"):
        retrofit.RetrofitConfig(method="qpm", flint_layers=[EARLY])
    with pytest.raises(ConfigError, match="more than once"):
        retrofit.RetrofitConfig(method="flint", flint_layers=[EARLY, "body.0", EARLY])
    with pytest.raises(ConfigError, match="must be a list"):
        retrofit.RetrofitConfig(method="flint", flint_layers=EARLY)
    with pytest.raises(ConfigError, match="non-empty"):
        retrofit.RetrofitConfig(method="flint", flint_layers=[""])
    with pytest.raises(ConfigError, match="feature_layer"):
        retrofit.RetrofitConfig(method="flint", feature_layer="body", flint_layers=["body"])
    assert retrofit.RetrofitConfig(method="qpm", features="flint", flint_layers=[EARLY])


def test_a_tampered_export_is_refused(cnn, data, tmp_path) -> None:
    imodel = retrofit.convert(cnn, _loader(data), method="flint", flint_layers=[EARLY], **SETTINGS)
    folder = imodel.save_pretrained(tmp_path / "export")
    path = folder / "retrofit_config.json"
    original = json.loads(path.read_text())

    def refused(edit, message) -> None:
        config = json.loads(json.dumps(original))
        edit(config)
        path.write_text(json.dumps(config))
        with pytest.raises(ExportSchemaError, match=message):
            retrofit.load(folder, model=cnn)

    refused(lambda c: c["base_model"]["layer"].update(pooled_layers=[EARLY, EARLY]), "distinct")
    refused(lambda c: c["base_model"]["layer"].update(pooled_layers=[""]), "distinct")
    refused(lambda c: c["base_model"]["layer"].pop("pooled_layers"), "inconsistent")
    refused(lambda c: c["config"].update(flint_layers=["body.0"]), "differs from")
    refused(
        lambda c: (
            c["base_model"]["layer"].update(pooled_layers=["gone"])
            or c["config"].update(flint_layers=["gone"])
        ),
        r"has no module \['gone'\]",
    )
    path.write_text(json.dumps(original))
    assert retrofit.load(folder, model=cnn).spec.pooled_layers == (EARLY,)


def test_an_interrupted_extraction_with_flint_layers_resumes(cnn, data, tmp_path) -> None:
    images, labels = data
    batches = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, len(images), 16)]

    def failing():
        yield from batches[:2]
        raise RuntimeError("the loader died")

    with pytest.raises(RuntimeError, match="the loader died"):
        retrofit.extract(cnn, failing(), cache_dir=tmp_path, pooled_layers=[EARLY], progress=False)
    calls = []
    handle = cnn.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    try:
        resumed = retrofit.extract(
            cnn, batches, cache_dir=tmp_path, pooled_layers=[EARLY], progress=False
        )
    finally:
        handle.remove()
    assert sum(calls) == 2 + 32, "the probe and the two batches not extracted before"
    fresh = retrofit.extract(cnn, batches, pooled_layers=[EARLY], progress=False)
    assert torch.equal(resumed.features, fresh.features) and resumed.dim == 36
