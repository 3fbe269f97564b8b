"""Out-of-core fitting: the cache is memory-mapped and every stage reads it in row chunks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import retrofit
from retrofit.errors import ConfigError, FeatureError
from retrofit.extraction.cache import Batch, FeatureCache
from retrofit.extraction.streaming import Standardised, column_stats
from retrofit.registry import HEADS
from retrofit.solvers.stats import standardise
from tests.test_convert import SmallCNN
from tests.tiny import colour_coded_images

C = 4


def _mapped_files(tensor: torch.Tensor) -> set[str]:
    """Files whose mapping holds the tensor's first byte (empty: it lives in anonymous memory)."""
    address = tensor.data_ptr()
    found = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        if lo <= address < hi and len(parts) >= 6:
            found.add(parts[5])
    return found


def _loader(batch_size: int = 16) -> DataLoader:
    return DataLoader(
        TensorDataset(*colour_coded_images(64, 16, C, bright=3)), batch_size=batch_size
    )


def _model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


def _convert(cache_dir, method: str, **kw) -> retrofit.InterpretableModel:
    model = _model()
    settings = {
        "n_features": 8,
        "per_class": 2,
        "epochs": 1,
        "rounds": 2,
        "progress": False,
        "threads": 1,
    }
    return retrofit.convert(
        model, _loader(), method=method, cache_dir=cache_dir, **{**settings, **kw}
    )


@pytest.mark.parametrize("method", HEADS.names())
def test_out_of_core_fit_gives_the_same_model_as_in_memory(tmp_path, method):
    in_memory = _convert(None, method)
    mapped = _convert(str(tmp_path), method)
    assert torch.equal(in_memory.head.weight, mapped.head.weight)
    assert torch.equal(in_memory.bottleneck.selected, mapped.bottleneck.selected)
    for name, value in in_memory.bottleneck.state_dict().items():
        torch.testing.assert_close(mapped.bottleneck.state_dict()[name], value, rtol=0, atol=0)
    assert in_memory.stats["train"] == mapped.stats["train"]


def test_the_store_is_memory_mapped_not_loaded(tmp_path):
    features = retrofit.extract(_model(), _loader(), cache_dir=tmp_path, progress=False)
    again = retrofit.extract(_model(), _loader(), cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(again.features, features.features, rtol=0, atol=0)
    mapped = _mapped_files(again.features)
    assert any(path.endswith("pooled.safetensors") for path in mapped), mapped


def test_streamed_pooled_file_is_a_valid_safetensors_file(tmp_path):
    cache = FeatureCache(tmp_path, "key")
    g = torch.Generator().manual_seed(0)
    batches = [
        Batch(
            torch.randn(n, 6, generator=g).half(), torch.arange(n), torch.randn(n, 3, generator=g)
        )
        for n in (5, 7, 1)
    ]
    hashes = [f"h{i}" for i in range(3)]
    for i, batch in enumerate(batches):
        cache.write_chunk(i, hashes[i], batch)
    store = cache.finalize([None, batches[1], None], hashes, extra={})
    loaded = load_file(str(store.path / "pooled.safetensors"))
    assert torch.equal(loaded["features"], torch.cat([b.features for b in batches]))
    assert torch.equal(loaded["labels"], torch.cat([b.labels for b in batches]))
    assert torch.equal(store.logits, torch.cat([b.logits for b in batches]))
    assert store.features.dtype == torch.float16 and store.meta["batch_sizes"] == [5, 7, 1]


def test_streamed_standardisation_matches_the_in_memory_one():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 7, generator=g) * torch.arange(1, 8) + 5
    x[:, 3] = 2.0  # a constant column
    z, mean, std = standardise(x)
    s_mean, s_std = column_stats(x)
    torch.testing.assert_close(s_mean, mean)
    torch.testing.assert_close(s_std, std)
    lazy = Standardised(x, s_mean, s_std)
    torch.testing.assert_close(lazy[10:20], z[10:20])
    torch.testing.assert_close(lazy[:, torch.tensor([6, 0])], z[:, [6, 0]])
    v = torch.randn(7, generator=g)
    xtu, u = lazy.normal_matvec(v, 0.5)
    torch.testing.assert_close(u, z @ v + 0.5, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xtu, z.T @ (z @ v + 0.5), rtol=1e-4, atol=1e-3)
    rows = torch.tensor([3, 17, 18, 250, 299])  # a split's rows, read as a view
    view = Standardised(x, s_mean, s_std, rows=rows)
    assert view.shape == (5, 7)
    torch.testing.assert_close(view[1:4], z[rows][1:4])
    torch.testing.assert_close(view[:, torch.tensor([6, 0])], z[rows][:, [6, 0]])
    x[5, 2] = float("nan")
    with pytest.raises(FeatureError, match="NaN"):
        column_stats(x)


def test_a_half_precision_cache_halves_the_store_and_still_converts(tmp_path):
    full = retrofit.extract(_model(), _loader(), cache_dir=tmp_path / "f", progress=False)
    half = retrofit.extract(
        _model(),
        _loader(),
        cache_dir=tmp_path / "h",
        progress=False,
        feature_dtype="float16",
    )
    assert half.features.dtype == torch.float16
    torch.testing.assert_close(half.features.float(), full.features, rtol=1e-3, atol=1e-3)
    size = {
        name: next((tmp_path / name).rglob("pooled.safetensors")).stat().st_size
        for name in ("f", "h")
    }
    assert size["h"] < 0.75 * size["f"]  # features halve; labels and logits stay
    imodel = _convert(str(tmp_path / "h"), "qpm", cache_dtype="float16", finetune="none")
    assert imodel.stats["train"]["accuracy"] > 0.5
    with pytest.raises(ConfigError, match="cache_dtype"):
        retrofit.RetrofitConfig(cache_dtype="int8")


def test_the_elastic_net_without_logit_tables_matches_the_one_with(monkeypatch):
    from retrofit.solvers import elastic_net

    g = torch.Generator().manual_seed(2)
    labels = torch.arange(120) % 5
    x = torch.randn(120, 12, generator=g) + torch.nn.functional.one_hot(labels, 12).float()
    lazy = Standardised(x, *column_stats(x))

    def fit():
        order, _ = elastic_net.select_features(lazy, labels, 4, k=20)
        path = elastic_net.elastic_net_path(lazy, labels, k=6, include_zero=False)
        return order, path

    with_tables = fit()
    monkeypatch.setattr(elastic_net, "MAX_TABLE_ELEMENTS", 0)
    without = fit()
    assert torch.equal(with_tables[0], without[0])
    for a, b in zip(with_tables[1], without[1]):
        torch.testing.assert_close(b.weight, a.weight, rtol=1e-3, atol=1e-4)
        assert abs(a.objective - b.objective) < 1e-4 * max(1.0, abs(a.objective))


def test_the_streamed_dense_head_matches_a_fit_on_the_standardised_copy():
    from retrofit.methods.dense.head import DENSE_L2, fit_dense
    from retrofit.solvers.elastic_net import fit_elastic_net

    g = torch.Generator().manual_seed(3)
    labels = torch.arange(240) % 5
    x = torch.randn(240, 20, generator=g) * torch.linspace(0.5, 4, 20) + 2
    x[:, :5] += 1.5 * torch.nn.functional.one_hot(labels, 5).float()
    streamed = fit_dense(x, labels, retrofit.RetrofitConfig(progress=False))
    z, mean, std = standardise(x)  # the N x D copy the head no longer makes
    reference = fit_elastic_net(z, labels, DENSE_L2, alpha=0.0, num_classes=5, max_iter=2000)
    torch.testing.assert_close(streamed.mean, mean)
    torch.testing.assert_close(streamed.std, std)
    torch.testing.assert_close(streamed.weight, reference.weight, rtol=1e-2, atol=2e-3)
    accuracy = (torch.addmm(reference.bias, z, reference.weight.T).argmax(1) == labels).float()
    assert streamed.stats["train_accuracy"] == pytest.approx(float(accuracy.mean()), abs=1e-2)
    assert streamed.stats["train_accuracy"] > 0.5
    half = fit_dense(x.half(), labels, retrofit.RetrofitConfig(progress=False))  # read as is
    torch.testing.assert_close(half.weight, streamed.weight, rtol=0.05, atol=5e-3)
