"""INV cluster maps: planted channel groups are recovered, pruning keeps the important ones,
channel order does not matter, weights are exact for a linear head, and real CNNs / ViTs work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from sklearn.metrics import adjusted_rand_score
from torch import nn

from retrofit.errors import LayerNotFoundError
from retrofit.inv import cluster_maps
from retrofit.inv.clustering import channel_shares, cluster_channels, cluster_layer
from retrofit.inv.layers import activations_and_gradients, spatial_layers
from tests.tiny import TINY_VIT, colour_coded_images

SIDE = 12


def _blob(cy: float, cx: float, radius: float = 2.0) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(float(SIDE)), torch.arange(float(SIDE)), indexing="ij")
    return torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))


CENTRES = [(2, 2), (2, 9), (9, 2), (9, 9), (5.5, 5.5)]


def planted(
    sizes: list[int], seed: int = 0, spread: float = 1.0
) -> tuple[torch.Tensor, np.ndarray]:
    """(K, SIDE, SIDE) activations: each group is one blob template (mean 1), scaled by
    1 +- spread / 2, with noise."""
    generator = torch.Generator().manual_seed(seed)
    maps, groups = [], []
    for group, size in enumerate(sizes):
        template = _blob(*CENTRES[group])
        template = template / template.mean()
        for _ in range(size):
            scale = 1 + spread * (torch.rand(1, generator=generator) - 0.5)
            noise = 0.05 * torch.rand(SIDE, SIDE, generator=generator)
            maps.append(scale * template + noise)
            groups.append(group)
    return torch.stack(maps), np.array(groups)


@pytest.mark.parametrize("n_groups", [3, 4, 5])
def test_clustering_recovers_the_planted_groups(n_groups: int) -> None:
    activations, groups = planted([8] * n_groups, seed=n_groups)
    labels, silhouette = cluster_channels(activations)
    assert labels.max() + 1 == n_groups
    assert adjusted_rand_score(groups, labels) >= 0.9
    assert silhouette > 0.5


def test_seeded_tsne_option_recovers_the_groups_deterministically() -> None:
    activations, groups = planted([8, 8, 8, 8], seed=7)
    labels, _ = cluster_channels(activations, seed=1, tsne=True)
    assert adjusted_rand_score(groups, labels) >= 0.9
    assert np.array_equal(labels, cluster_channels(activations, seed=1, tsne=True)[0])


def test_pruning_keeps_the_important_groups() -> None:
    # two big groups carry 80 % of the evidence, two small ones 10 % each: the small clusters
    # fall below max(max_w / 3, mean_w / 2) and are pruned
    activations, groups = planted([12, 12, 3, 3], spread=0.1)
    clusters, stats = cluster_layer(activations, torch.ones_like(activations))
    assert stats["k"] == 4 and stats["kept_channels"] == 30
    kept = sorted(sorted(groups[list(c.channels)].tolist()) for c in clusters)
    assert kept == [[0] * 12, [1] * 12]
    assert sum(c.weight for c in clusters) == pytest.approx(24 / 30, abs=0.01)
    peak = [divmod(int(c.grid_map.argmax()), SIDE) for c in clusters]
    assert sorted(peak) == sorted([(2, 2), (2, 9)])


def test_channels_below_the_uniform_share_are_filtered_out() -> None:
    activations, _ = planted([8, 8, 8, 8], spread=0.1)
    gradients = torch.ones_like(activations)
    gradients[:8] = 0.01  # group 0 adds almost nothing to the class logit
    clusters, stats = cluster_layer(activations, gradients)
    assert stats["kept_channels"] == 24
    assert all(min(c.channels) >= 8 for c in clusters)


def test_invariant_to_channel_order() -> None:
    activations, _ = planted([10, 6, 8, 5])
    gradients = torch.rand(activations.shape, generator=torch.Generator().manual_seed(2)) + 0.5
    permutation = torch.randperm(activations.shape[0], generator=torch.Generator().manual_seed(3))
    clusters, _ = cluster_layer(activations, gradients)
    shuffled, _ = cluster_layer(activations[permutation], gradients[permutation])
    assert len(clusters) == len(shuffled)
    for a, b in zip(clusters, shuffled):
        assert sorted(a.channels) == sorted(permutation[list(b.channels)].tolist())
        assert a.weight == pytest.approx(b.weight, abs=1e-6)
        assert torch.allclose(a.grid_map, b.grid_map, atol=1e-5)


class PooledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_weights_are_exact_for_a_linear_head_on_pooled_features() -> None:
    torch.manual_seed(0)
    model = PooledNet().eval()
    images = torch.rand(3, 3, 8, 8)
    logits, captured = activations_and_gradients(model, images, [("body", "nchw")])
    activations, gradients = captured["body"]
    for i, target in enumerate(logits.argmax(dim=1).tolist()):
        evidence = model.fc.weight[target].detach().clamp(min=0) * activations[i].mean(dim=(1, 2))
        expected = evidence / evidence.sum()
        assert torch.allclose(channel_shares(activations[i], gradients[i]), expected, atol=1e-5)


def _check_result(result, n_images: int) -> None:
    assert result.maps, "no cluster map at all"
    assert {m.image for m in result.maps} <= set(range(n_images))
    for m in result.maps:
        assert m.saliency.shape == result.images.shape[2:]
        assert float(m.saliency.min()) >= 0 and float(m.saliency.max()) == pytest.approx(1.0)
        assert 0 < m.weight <= 1
    assert result.gradcam.shape == (n_images, *result.images.shape[2:])


def test_cnn_default_layers_and_determinism(tiny_resnet: nn.Module) -> None:
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    stages = [name for name, _ in spatial_layers(tiny_resnet, images[:1])]
    assert stages == ["layer1", "layer2", "layer3", "layer4"]
    first = cluster_maps(tiny_resnet, images, progress=False)
    assert first.layers == ["layer2", "layer3", "layer4"]
    _check_result(first, 3)
    second = cluster_maps(tiny_resnet, images, progress=False)
    assert [m.channels for m in first.maps] == [m.channels for m in second.maps]
    assert all(torch.equal(a.saliency, b.saliency) for a, b in zip(first.maps, second.maps))


def test_vit_token_grids() -> None:
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(
        transformers.ViTConfig(**{**TINY_VIT, "num_hidden_layers": 2}, num_labels=3)
    ).eval()
    images, _ = colour_coded_images(3, 32, 3)
    stages = [name for name, _ in spatial_layers(model, images[:1])]
    modules = dict(model.named_modules())
    assert [type(modules[name]).__name__ for name in stages] == ["ViTLayer", "ViTLayer"]
    result = cluster_maps(model, images, k_range=(2, 4), progress=False)
    assert result.layers == stages
    _check_result(result, 3)


def test_bad_layers_are_clear_errors(tiny_resnet: nn.Module) -> None:
    images = torch.rand(1, 3, 64, 64)
    with pytest.raises(LayerNotFoundError, match="layer4"):
        cluster_maps(tiny_resnet, images, layers=["layer5"], progress=False)
    with pytest.raises(LayerNotFoundError, match="no spatial grid"):
        cluster_maps(tiny_resnet, images, layers=["fc"], progress=False)
    with pytest.raises(LayerNotFoundError, match="no layer with a spatial grid"):
        cluster_maps(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.rand(2, 3, 2, 2))


def test_loaders_and_explicit_targets() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    images, labels = colour_coded_images(6, 8, 3)
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    result = cluster_maps(
        PooledNet().eval(), loader, targets=labels[:5] % 4, max_images=5, progress=False
    )
    assert torch.equal(result.labels, labels[:5])
    assert torch.equal(result.predictions, labels[:5] % 4)
    assert result.images.shape == (5, 3, 8, 8)
    assert json.dumps(result.to_dict())  # JSON-ready summary
